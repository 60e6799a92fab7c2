// Kernel execution of the emulated CUDA driver (runtime.cpp), as the driver (driver.cpp) calls it.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <string>

#include "emu.h"

namespace ec_emu {

// Result codes, numerically equal to the driver's CUresult values.
enum : int {
    kSuccess = 0,
    kIllegalAddress = 700,      // CUDA_ERROR_ILLEGAL_ADDRESS
    kMisalignedAddress = 716,   // CUDA_ERROR_MISALIGNED_ADDRESS
    kIllegalInstruction = 715,  // CUDA_ERROR_ILLEGAL_INSTRUCTION
    kLaunchFailed = 719,        // CUDA_ERROR_LAUNCH_FAILED
    kOutOfMemory = 2,           // CUDA_ERROR_OUT_OF_MEMORY
};

// Runs every block of a launch, one after another, each CUDA thread of a block on a fiber. The
// caller holds the process-wide launch lock and has validated the configuration. Returns kSuccess,
// or an error code with `message` set (also printed to stderr).
int run_kernel(const EntryInfo& entry, Dim3 grid, Dim3 block, size_t dyn_smem_bytes, void** params,
               std::string* message);

// The schedule seed (EVENCLASS_EMU_SEED, default 1).
uint64_t schedule_seed();

// ---- for the emulated instructions of tensor_core.cpp (called on a CUDA thread's fiber) ---------

// A warp collective whose per-lane operands do not fit the 8 bytes of warp_collective: each lane
// passes a pointer to its own payload (on its stack, alive while it waits). When the last lane of
// `mask` has arrived, `complete` runs once with the payload pointers of the 32 lanes (null for
// lanes outside the mask) and writes each lane's results into its payload. Lanes waiting with a
// different `op` (another instruction or variant) or from another call site (`site_file`:
// `site_line`, the kernel's source) never complete each other: a lane that arrives while another
// lane of its mask waits at a different op or site fails the launch, naming both. The other mask
// checks and fault messages are warp_collective's.
using ExchangeFn = void (*)(void* const lanes[32]);
void warp_exchange(unsigned mask, int op, void* payload, ExchangeFn complete, const char* what,
                   const char* site_file, int site_line);

// The running CUDA thread's linear index in its block, and the block's thread count.
int current_thread_index();
int block_thread_count();
// "(x,y,z)" of the running CUDA thread.
std::string current_thread_name();

// Whether the caller runs on a CUDA thread's fiber (inside a kernel).
bool in_kernel();

// Whether [p, p + bytes) lies inside shared memory: the static __shared__ section or the
// launch's dynamic shared memory.
bool in_shared_memory(const void* p, size_t bytes);

// Fails the launch with `code` and a message naming the kernel, block and thread (prefixed to
// `what`), and stops the running CUDA thread for good.
[[noreturn]] void kernel_fault(int code, const std::string& what);

// Hooks of tensor_core.cpp: before the first thread of each block runs, and when a CUDA thread
// returns from the kernel (still on its fiber; it may fault).
void tc_block_begin(int nthreads);
void tc_thread_exit();

}  // namespace ec_emu
