// babygpt_ext._C_emu: the CUDA kernels of csrc/cuda, unchanged, run on the CPU by the emulator
// csrc/emu/cudaemu.h (through portable.cuh) and registered as torch.ops.babygpt_emu.* on CPU
// tensors (backend "cuda_emu"). The twin of ops_cuda.cu: the same glue (torch_glue.h), the same
// launchers and every attention instance in this one translation unit.
//
// The kernels see CPU tensors' memory as "device" memory; launches run synchronously, so a
// launch error (divergent barrier, bad shuffle, bad configuration...) is known when the launcher
// returns and becomes a Python RuntimeError with the emulator's message. The pybind functions
// below switch the emulator's thread order, seed and shared-memory poisoning, so tests can re-run
// kernels in reverse / random order with poisoned shared memory.
#include <torch/extension.h>

#include "portable.cuh"  // the emulator, after torch (cudaemu.h's rule)

#include <string>

#include "../schemas.h"
#include "instances.cuh"
#include "launchers.cuh"

namespace babygpt::cuda {
BABYGPT_ATTN_INSTANCES(BABYGPT_ATTN_INSTANCE)
}  // namespace babygpt::cuda

#define BABYGPT_GLUE_STREAM() (cudaStream_t) nullptr
#define BABYGPT_GLUE_GUARD(t) (void)0
#define BABYGPT_GLUE_DEVICE_CHECK(t) \
  TORCH_CHECK((t).device().is_cpu(), "babygpt_emu: the emulated CUDA kernels take CPU tensors, got ", (t).device())
#define BABYGPT_GLUE_CHECK(call, op)                                                              \
  do {                                                                                            \
    const cudaError_t err_ = (call);                                                              \
    TORCH_CHECK(err_ == cudaSuccess, op, " (cudaemu): ", cudaGetErrorName(err_), ": ",           \
                cudaemu::last_error_message());                                                   \
  } while (0)
#include "torch_glue.h"

TORCH_LIBRARY(babygpt_emu, m) { BABYGPT_DEFINE_CONTRACT(m); }

TORCH_LIBRARY_IMPL(babygpt_emu, CPU, m) { BABYGPT_GLUE_IMPL(m); }

namespace {

// Emulator settings for the next launches. order: "forward" | "reverse" | "random"; seed seeds
// the random order; poison fills static and dynamic shared memory with 0xFF (NaN) bytes per
// block; workers is the number of OS threads running blocks (0 keeps the current value).
void set_config(const std::string& order, uint64_t seed, bool poison, int workers) {
  auto& c = cudaemu::config();
  if (order == "forward") c.order = cudaemu::Order::forward;
  else if (order == "reverse") c.order = cudaemu::Order::reverse;
  else if (order == "random") c.order = cudaemu::Order::random;
  else throw std::invalid_argument("order must be forward, reverse or random, got '" + order + "'");
  c.seed = seed;
  c.poison = poison;
  if (workers > 0) c.workers = workers;
}

py::dict get_config() {
  const auto& c = cudaemu::config();
  py::dict d;
  d["order"] = std::string(cudaemu::order_name(c.order));
  d["seed"] = c.seed;
  d["poison"] = c.poison;
  d["workers"] = c.workers;
  return d;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "babygpt_ext's CUDA kernels run on the CPU by the cudaemu harness (torch.ops.babygpt_emu.*)";
  m.def("set_config", &set_config, py::arg("order") = "forward", py::arg("seed") = 0, py::arg("poison") = true,
        py::arg("workers") = 0, "Configure the emulator for the following launches");
  m.def("get_config", &get_config, "The emulator's current configuration");
  m.def("reload_config", &cudaemu::reload_config, "Re-read CUDAEMU_* environment variables");
}
