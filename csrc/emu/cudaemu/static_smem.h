// cudaemu/static_smem.h -- finds the static __shared__ variables of a kernel's module, so they
// can be poisoned before every block and counted toward the shared-memory limit.
// Part of csrc/emu/cudaemu.h, included with -DCUDAEMU_STATIC_SHARED.
//
// A prefix macro never learns the address of the variable it declares, so __shared__ leaves a
// trace instead: it declares a marker next to each variable,
//     __shared__ float tile[32][33];
//  -> thread_local char cudaemu_shared_mark_7 [[gnu::used]]; static thread_local float tile[32][33];
// Both are local statics of the enclosing function F and get the mangled names
// "_ZZ<F>E21cudaemu_shared_mark_7" and "_ZZ<F>E4tile". The module's ELF symbol table therefore
// says which functions hold __shared__ variables (those with a marker) and where each of their
// local statics lives (st_value: offset in the module's TLS block in fiber mode, address
// relative to the load base in thread mode) and how big it is (st_size). Nothing else in the
// module is touched: a function without a marker (harness, torch, libstdc++) keeps its statics.
// Limits: a stripped module has no symbol table (then nothing is poisoned and a note says so);
// namespace-scope __shared__ variables have no enclosing function and are not found.
#pragma once

#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#if defined(__x86_64__) && defined(__GLIBC__) && !defined(CUDAEMU_THREADS)
#define CUDAEMU_STATIC_SMEM_TLS 1
// The ELF TLS ABI entry point: address of (module, offset) for the calling thread; allocates
// the module's block on first use. glibc exports it from ld.so on x86-64.
struct cudaemu_tls_index { unsigned long module, offset; };
extern "C" void* __tls_get_addr(cudaemu_tls_index*);
#endif

#define CUDAEMU_SHARED_MARK_NAME "cudaemu_shared_mark_"

namespace cudaemu {

struct SmemVar {
  uintptr_t offset;  // fiber mode: offset in the module's TLS block; thread mode: from the load base
  size_t size;
  std::string prefix;  // "_ZZ<function>E": the enclosing function's local-static prefix
};

// What one module (executable or shared object) holds.
struct ModuleSmem {
  bool known = false;     // the symbol table was read
  std::string name;       // path, for messages
  uintptr_t load_base = 0;
  size_t tls_module = 0;  // TLS module id (0: the module has no TLS)
  std::vector<SmemVar> vars;
  std::map<uintptr_t, size_t> func_bytes;  // function st_value -> bytes of its own __shared__ variables
};

// "_ZZ<F>E21cudaemu_shared_mark_7" -> "_ZZ<F>E"; "" when the name is not a marker of a function.
inline std::string_view marker_prefix(std::string_view sym) {
  if (sym.substr(0, 3) != "_ZZ") return {};
  size_t m = sym.rfind(CUDAEMU_SHARED_MARK_NAME);
  if (m == std::string_view::npos) return {};
  size_t p = m;
  while (p > 0 && sym[p - 1] >= '0' && sym[p - 1] <= '9') --p;  // the <length> of the local name
  if (p == m || p == 0 || sym[p - 1] != 'E') return {};
  return sym.substr(0, p);
}

// Reads the ELF symbol table of the file at 'path' (.symtab, else .dynsym) and collects the
// local statics of every function that carries a __shared__ marker. False when the file has no
// full symbol table (stripped), i.e. when some __shared__ variables may have been missed.
inline bool read_smem_symbols(const std::string& path, ModuleSmem& out) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  struct stat st{};
  void* map = MAP_FAILED;
  if (::fstat(fd, &st) == 0 && (size_t)st.st_size >= sizeof(Elf64_Ehdr))
    map = ::mmap(nullptr, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) return false;
  const auto* base = static_cast<const unsigned char*>(map);
  const size_t len = (size_t)st.st_size;
  const auto* eh = reinterpret_cast<const Elf64_Ehdr*>(base);
  bool ok = std::memcmp(eh->e_ident, ELFMAG, SELFMAG) == 0 && eh->e_ident[EI_CLASS] == ELFCLASS64 &&
            eh->e_shoff && eh->e_shoff + (size_t)eh->e_shnum * sizeof(Elf64_Shdr) <= len;
  const Elf64_Shdr* symtab = nullptr;
  const Elf64_Shdr* sh = ok ? reinterpret_cast<const Elf64_Shdr*>(base + eh->e_shoff) : nullptr;
  for (unsigned i = 0; ok && i < eh->e_shnum; ++i)
    if (sh[i].sh_type == SHT_SYMTAB || (sh[i].sh_type == SHT_DYNSYM && !symtab)) symtab = &sh[i];
  ok = ok && symtab && symtab->sh_link < eh->e_shnum && symtab->sh_offset + symtab->sh_size <= len;
  const bool full = ok && symtab->sh_type == SHT_SYMTAB;  // .dynsym alone lacks hidden/local symbols
  if (ok) {
    const Elf64_Shdr& strs = sh[symtab->sh_link];
    const auto* syms = reinterpret_cast<const Elf64_Sym*>(base + symtab->sh_offset);
    const size_t nsyms = symtab->sh_size / sizeof(Elf64_Sym);
    const char* names = reinterpret_cast<const char*>(base + strs.sh_offset);
    auto name_of = [&](const Elf64_Sym& s) {
      return s.st_name < strs.sh_size ? std::string_view(names + s.st_name) : std::string_view();
    };
    std::set<std::string_view> marked;  // "_ZZ<F>E" of functions with __shared__ variables
    for (size_t i = 0; i < nsyms; ++i) {
      std::string_view p = marker_prefix(name_of(syms[i]));
      if (!p.empty()) marked.insert(p);
    }
#ifdef CUDAEMU_THREADS
    const unsigned char want = STT_OBJECT;  // __shared__ is a plain 'static' in thread mode
#else
    const unsigned char want = STT_TLS;
#endif
    for (size_t i = 0; i < nsyms && !marked.empty(); ++i) {
      const Elf64_Sym& s = syms[i];
      std::string_view n = name_of(s);
      if (ELF64_ST_TYPE(s.st_info) != want || s.st_size == 0 || s.st_shndx == SHN_UNDEF) continue;
      if (n.substr(0, 3) != "_ZZ" || n.find(CUDAEMU_SHARED_MARK_NAME) != std::string_view::npos) continue;
      // The longest marked prefix of n is its enclosing function (lambdas nest as _ZZZ...).
      for (size_t e = n.size(); e-- > 3;) {
        if (n[e] != 'E') continue;
        auto it = marked.find(n.substr(0, e + 1));
        if (it != marked.end()) {
          out.vars.push_back({(uintptr_t)s.st_value, (size_t)s.st_size, std::string(*it)});
          break;
        }
      }
    }
    // Per function, the bytes of its own variables: "_ZZ<F>E" belongs to the function "_Z<F>"
    // (or, for an extern "C" function, to the bare name inside <F> = <length><name>).
    std::map<std::string, size_t> by_name;
    for (const SmemVar& v : out.vars) {
      std::string f = v.prefix.substr(3, v.prefix.size() - 4);
      by_name["_Z" + f] += v.size;
      size_t d = 0;
      while (d < f.size() && f[d] >= '0' && f[d] <= '9') ++d;
      if (d > 0 && d < f.size() && std::to_string(f.size() - d) == f.substr(0, d)) by_name[f.substr(d)] += v.size;
    }
    for (size_t i = 0; i < nsyms && !by_name.empty(); ++i) {
      if (ELF64_ST_TYPE(syms[i].st_info) != STT_FUNC || syms[i].st_shndx == SHN_UNDEF) continue;
      auto it = by_name.find(std::string(name_of(syms[i])));
      if (it != by_name.end()) out.func_bytes[(uintptr_t)syms[i].st_value] = it->second;
    }
  }
  ::munmap(map, len);
  return full;
}

// The module that contains 'code' (a kernel's address), with its __shared__ variables. Read
// once per module and cached for the life of the process.
inline const ModuleSmem& module_smem(const void* code) {
  struct Found { uintptr_t addr; const char* name; uintptr_t base; size_t tls; bool hit; };
  Found f{(uintptr_t)code, nullptr, 0, 0, false};
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* data) {
        auto& q = *static_cast<Found*>(data);
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          const auto& ph = info->dlpi_phdr[i];
          uintptr_t lo = info->dlpi_addr + ph.p_vaddr;
          if (ph.p_type == PT_LOAD && q.addr >= lo && q.addr < lo + ph.p_memsz) {
            q = {q.addr, info->dlpi_name, info->dlpi_addr, info->dlpi_tls_modid, true};
            return 1;
          }
        }
        return 0;
      },
      &f);
  static std::mutex mu;
  static std::map<uintptr_t, ModuleSmem> cache;  // load base -> module
  std::lock_guard<std::mutex> g(mu);
  auto [it, fresh] = cache.try_emplace(f.base);
  ModuleSmem& m = it->second;
  if (fresh && f.hit) {
    m.name = (f.name && *f.name) ? f.name : "/proc/self/exe";
    m.load_base = f.base;
    m.tls_module = f.tls;
    m.known = read_smem_symbols(m.name, m);
    if (!m.known)
      std::fprintf(stderr, "cudaemu: %s has no symbol table (stripped?): its static __shared__ variables "
                   "may not be poisoned\n", m.name.c_str());
  }
  return m;
}

// Bytes of static __shared__ declared directly in the kernel 'fn' of module m (not in the
// __device__ functions it calls; 0 when unknown). Counted toward the shared-memory limit.
inline size_t static_smem_bytes(const ModuleSmem& m, const void* fn) {
  auto it = m.func_bytes.find((uintptr_t)fn - m.load_base);
  return it == m.func_bytes.end() ? 0 : it->second;
}

// Fills every static __shared__ variable of the kernel's module with 0xFF bytes, in the calling
// OS thread's copy (fiber mode: the worker about to run a block; thread mode: the one copy).
inline void poison_static_smem(const ModuleSmem& m) {
  if (!config().poison || m.vars.empty()) return;
#ifdef CUDAEMU_THREADS
  for (const SmemVar& v : m.vars) std::memset(reinterpret_cast<void*>(m.load_base + v.offset), 0xFF, v.size);
#elif defined(CUDAEMU_STATIC_SMEM_TLS)
  cudaemu_tls_index ti{m.tls_module, 0};
  auto* tls = static_cast<unsigned char*>(__tls_get_addr(&ti));
  for (const SmemVar& v : m.vars) std::memset(tls + v.offset, 0xFF, v.size);
#endif
}

}  // namespace cudaemu
