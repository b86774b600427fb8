// cudaemu/fiber.h -- user-space context switching for the fiber mode.
// Part of csrc/emu/cudaemu.h. Each emulated CUDA thread is a fiber with its own stack; the
// block scheduler (running on a worker OS thread) switches into a fiber, which runs until it
// blocks on a barrier / warp collective or exits, then switches back.
//   x86-64 (default): 20 instructions of assembly; saves callee-saved registers + MXCSR/x87 CW.
//   elsewhere, or -DCUDAEMU_UCONTEXT: POSIX ucontext (portable, slower: a syscall per switch).
// Under AddressSanitizer every switch is announced with __sanitizer_start/finish_switch_fiber
// so ASan knows which stack is live (otherwise it reports bogus stack-buffer errors).
#pragma once

#include <cstddef>
#include <cstdint>
#include <sys/mman.h>
#include <unistd.h>

#if !defined(__x86_64__) && !defined(CUDAEMU_UCONTEXT)
#define CUDAEMU_UCONTEXT 1
#endif
#ifdef CUDAEMU_UCONTEXT
#include <ucontext.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define CUDAEMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CUDAEMU_ASAN 1
#endif
#endif
#ifdef CUDAEMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#ifndef CUDAEMU_UCONTEXT
// cudaemu_switch_v1(save, to): push callee-saved state, store rsp in *save, load rsp = to, pop.
// Weak + hidden: every translation unit may emit it, the linker keeps one per module.
// cudaemu_switch_v1_end marks its last byte + 1 (the watchdog never preempts inside it).
extern "C" void cudaemu_switch_v1(void** save_sp, void* to_sp);
extern "C" char cudaemu_switch_v1_end[];
asm(R"(
  .text
  .weak cudaemu_switch_v1
  .hidden cudaemu_switch_v1
  .weak cudaemu_switch_v1_end
  .hidden cudaemu_switch_v1_end
  .type cudaemu_switch_v1,@function
cudaemu_switch_v1:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
cudaemu_switch_v1_end:
  .size cudaemu_switch_v1, .-cudaemu_switch_v1
  .section .note.GNU-stack,"",@progbits
  .text
)");
#endif

namespace cudaemu {

struct Context {
#ifdef CUDAEMU_UCONTEXT
  ucontext_t uc;
#else
  void* sp = nullptr;
#endif
  char* stack = nullptr;  // lowest usable address (nullptr for the scheduler's own stack)
  size_t stack_size = 0;
  void* asan_fake_stack = nullptr;
};

// Prepares ctx so that the first switch into it calls entry() on the given stack.
// entry must never return: it ends by switching away for good.
inline void make_context(Context& ctx, char* stack, size_t size, void (*entry)()) {
  ctx.stack = stack;
  ctx.stack_size = size;
#ifdef CUDAEMU_ASAN
  // A fiber that ended by switching away left its frames' redzones poisoned; the stack is reused.
  __asan_unpoison_memory_region(stack, size);
#endif
#ifdef CUDAEMU_UCONTEXT
  getcontext(&ctx.uc);
  ctx.uc.uc_stack.ss_sp = stack;
  ctx.uc.uc_stack.ss_size = size;
  ctx.uc.uc_link = nullptr;
  makecontext(&ctx.uc, entry, 0);
#else
  // Frame popped by the first cudaemu_switch_v1 into this context (addresses grow upward):
  //   [sp] mxcsr | x87 cw, r15, r14, r13, r12, rbx, rbp, ret -> entry, fake return address
  // 'top' is 16-byte aligned, so entry starts with rsp = top - 8, as the ABI wants after a call.
  auto top = reinterpret_cast<uintptr_t>(stack + size) & ~uintptr_t(15);
  auto* p = reinterpret_cast<uint64_t*>(top);
  p[-1] = 0;
  p[-2] = reinterpret_cast<uint64_t>(entry);
  for (int i = 3; i <= 8; ++i) p[-i] = 0;
  p[-9] = 0x1F80ull | (0x037Full << 32);  // default MXCSR | default x87 control word
  ctx.sp = &p[-9];
#endif
}

// Switch from 'from' (the running context) to 'to'. Returns when someone switches back.
// 'from_dies' = the running fiber will never be resumed (lets ASan free its fake stack).
inline void switch_context(Context& from, Context& to, bool from_dies = false) {
#ifdef CUDAEMU_ASAN
  __sanitizer_start_switch_fiber(from_dies ? nullptr : &from.asan_fake_stack, to.stack, to.stack_size);
#else
  (void)from_dies;
#endif
#ifdef CUDAEMU_UCONTEXT
  swapcontext(&from.uc, &to.uc);
#else
  cudaemu_switch_v1(&from.sp, to.sp);
#endif
#ifdef CUDAEMU_ASAN
  // Back in 'from': tell ASan the switch has completed.
  const void* bottom = nullptr;
  size_t size = 0;
  __sanitizer_finish_switch_fiber(from.asan_fake_stack, &bottom, &size);
#endif
}

// First thing a fresh fiber does (ASan must be told the switch into it has finished).
inline void fiber_started(Context& scheduler) {
#ifdef CUDAEMU_ASAN
  const void* bottom = nullptr;
  size_t size = 0;
  __sanitizer_finish_switch_fiber(nullptr, &bottom, &size);
  scheduler.stack = (char*)bottom;  // the worker's OS stack, needed when switching back to it
  scheduler.stack_size = size;
#else
  (void)scheduler;
#endif
}

// Stacks for up to n fibers in one mapping; the lowest page of each is a guard page, so a
// stack overflow faults at once instead of silently overwriting a neighbour's stack.
struct StackPool {
  char* base = nullptr;
  size_t each = 0, count = 0, total = 0, page = 4096;
  StackPool() = default;
  StackPool(const StackPool&) = delete;
  StackPool& operator=(const StackPool&) = delete;
  bool reserve(size_t n, size_t stack_bytes) {
    page = (size_t)sysconf(_SC_PAGESIZE);
    each = (stack_bytes + page - 1) / page * page + page;
    count = n;
    total = each * n;
    void* m = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) { base = nullptr; return false; }
    base = (char*)m;
    for (size_t i = 0; i < n; ++i) mprotect(base + i * each, page, PROT_NONE);
    return true;
  }
  char* stack(size_t i) const { return base + i * each + page; }
  size_t usable() const { return each - page; }
  ~StackPool() { if (base) munmap(base, total); }
};

}  // namespace cudaemu
