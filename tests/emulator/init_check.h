// Reads of device memory that nothing wrote (test-only; see docs/emulator.md, "Init check").
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <string>

namespace ec_emu {

// Whether the check runs: built in (the plain build; the AddressSanitizer build instruments the
// kernels for ASan instead) and not turned off with EVENCLASS_EMU_INIT_CHECK=0.
bool init_check_enabled();

// The driver's bookkeeping, called under its lock: a new allocation starts unwritten; a copy from
// the host or a memset writes its range; a device-to-device copy carries the source's state.
void init_check_alloc(uintptr_t base, size_t size);
void init_check_free(uintptr_t base);
void init_check_written(uintptr_t p, size_t n);
void init_check_copy(uintptr_t dst, uintptr_t src, size_t n);

// The first byte of [p, p + n) that nothing wrote, as an offset from p, or -1 when every byte was
// written (or p is no device allocation's). For a copy to the host.
long long init_check_first_unwritten(uintptr_t p, size_t n);

// Around a launch: the kernel and its parameters, to name the buffer a bad read comes from.
void init_check_launch_begin(const char* kernel, int num_params, const uint32_t* param_sizes, void** params);
void init_check_launch_end();

// A read of [p, p + n) by the running CUDA thread that the compiler's instrumentation does not
// see (cp.async's source, read by the emulator itself). Fails the launch on unwritten bytes.
void init_check_read(const void* p, size_t n, const char* what);

// The byte that fresh device memory holds (what the driver fills a new allocation with).
constexpr unsigned char kFreshByte = 0xFF;

}  // namespace ec_emu
