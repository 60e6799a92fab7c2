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

}  // namespace ec_emu
