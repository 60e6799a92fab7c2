// What an H200's driver checks when it loads a module image (test-only; see docs/emulator.md).
#pragma once

#include <stddef.h>

#include <string>

namespace ec_emu {

// The driver version the emulated driver reports (cuDriverGetVersion): EVENCLASS_EMU_DRIVER_VERSION,
// e.g. 12040 for CUDA 12.4, default 13000 (CUDA 13.0). Read at every call, so a test can change it.
int emulated_driver_version();

// Whether an sm_90 device with that driver can load the image (`n` bytes, a fatbin or PTX text):
// a cubin for sm_90, or PTX for compute_90 or older whose ISA version the driver knows. Returns 0
// (CUDA_SUCCESS) or the driver's CUresult, with `why` set.
int check_image_arch(const unsigned char* image, size_t n, std::string* why);

}  // namespace ec_emu
