// Bounds of shared memory for the emulated CUDA driver (test-only; see docs/emulator.md).
//
// Static __shared__ variables live in the `ec_shared` section (cuda_shim.h), where GCC lays them
// out back to back and AddressSanitizer does not instrument them: a write one past an array
// silently changed its neighbour. cuda_shim.h therefore declares a 16-byte guard variable before
// every __shared__ variable; this file finds the variables' extents in the library's own symbol
// table, treats every other byte of the section (the guards and the alignment padding) as guard
// bytes, and checks after each barrier and at the end of each block that they still hold the
// 0xFF poison every block starts with. Dynamic shared memory gets guard zones of its own on both
// sides in the plain build (under ASan it is malloc'ed with its exact size, so ASan sees overruns).
#pragma once

#include <stddef.h>

#include <string>

namespace ec_emu {

// Allocates the launch's dynamic shared memory (`bytes`, may be 0: returns null), with guard
// zones in the plain build; free it with smem_free_dynamic.
void* smem_alloc_dynamic(size_t bytes);
void smem_free_dynamic(void* p, size_t bytes);

// Before each block: fills the static section, the dynamic memory and every guard with 0xFF.
void smem_block_begin(void* dyn, size_t dyn_bytes);

// Whether every guard byte still holds 0xFF; if not, `what` names the variable written past (or
// before) and the offset.
bool smem_guards_intact(void* dyn, size_t dyn_bytes, std::string* what);

// For the cuInit banner: the number of static __shared__ variables found and whether each has a
// guard on both sides ("static shared guards: N variables").
std::string smem_guard_summary();

}  // namespace ec_emu
