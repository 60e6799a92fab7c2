// Internal interface of the emulated CUDA driver (test-only; see docs/emulator.md): what the shim
// header (compiled into every kernel translation unit), the generated kernel registry and the
// driver share. Nothing here is part of the evenclass library.
#pragma once

#include <stddef.h>
#include <stdint.h>

namespace ec_emu {

struct Dim3 {
    unsigned int x, y, z;
};

// One CUDA thread of the running block: a fiber with its own stack.
struct Fiber;

// The state kernels read through threadIdx/blockIdx/... (set by the scheduler before it switches
// to a fiber). Launches are serialized process-wide, so plain globals suffice.
struct Current {
    Dim3 thread_idx;
    Dim3 block_idx;
    Dim3 block_dim;
    Dim3 grid_dim;
    Fiber* fiber;
    void* dyn_smem;
};
extern Current cur;

// Warp collectives and barriers (runtime.cpp). `value` carries up to 8 bytes of the operand
// (Exchange: a pointer to a larger payload, see runtime.h's warp_exchange).
enum class Coll : int { Syncwarp, ShflIdx, ShflUp, ShflDown, ShflXor, Ballot, Any, All, Exchange };
uint64_t warp_collective(Coll kind, unsigned mask, uint64_t value, int arg, int width, const char* what);
// `site_file`:`site_line`: the kernel's call site; every thread of a barrier must wait at the same.
void syncthreads(const char* what, const char* site_file, int site_line);
[[noreturn]] void kernel_trap(const char* what);

// ---- registry of kernel entry points (filled by the generated reg_<module>.cpp files) ------------
using Invoke = void (*)(void* fn, void** params);

struct EntryInfo {
    const char* name;
    void* fn;        // the kernel function (C++ compiled)
    Invoke invoke;   // unpacks kernelParams with the kernel's signature and calls fn
    int num_params;
    const uint32_t* param_sizes;  // bytes of each parameter as nvcc laid it out (checked at compile time)
    // ptxas -v for sm_90, with the flags build.rs uses:
    int registers;
    int stack_frame;   // bytes of local memory (stack) per thread
    int spill_stores;  // bytes
    int spill_loads;   // bytes
    int static_smem;   // bytes of static __shared__ memory
    int max_threads;   // .maxntid from the PTX (__launch_bounds__), 0 when none
};

// Called from static constructors at load time.
void register_module(const char* module, const EntryInfo* entries, int count);

}  // namespace ec_emu
