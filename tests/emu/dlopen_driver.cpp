// tests/emu/dlopen_driver.cpp -- usage: dlopen_driver <library.so> <case>. Loads a shared-object
// build of broken.cu (-DBROKEN_AS_LIBRARY) with dlopen, as Python loads babygpt_ext._C_emu, and
// runs one of its cases: the emulator must work from a dynamically loaded module too.
#include <dlfcn.h>

#include <cstdio>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s <library.so> <case>\n", argv[0]);
    return 2;
  }
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    std::fprintf(stderr, "dlopen: %s\n", dlerror());
    return 2;
  }
  auto run = reinterpret_cast<int (*)(int, char**)>(dlsym(lib, "broken_main"));
  if (!run) {
    std::fprintf(stderr, "dlsym(broken_main): %s\n", dlerror());
    return 2;
  }
  return run(argc - 1, argv + 1);
}
