// Alignment of every load and store a kernel makes (test-only; see docs/emulator.md).
//
// On the GPU every access must be aligned to its size: a float4 (or any 16-byte vector) load
// from an address that is not a multiple of 16 faults with CUDA_ERROR_MISALIGNED_ADDRESS, while
// x86 loads it without complaint. scripts/build-emulator.sh compiles the kernels with GCC's
// -fsanitize=alignment, which checks each typed access against the alignment of its type (16 for
// float4/int4/double2, 8 for float2, 4 for float, ...), and calls the handler below on a
// misaligned one. The library defines the handler itself instead of linking libubsan: inside a
// kernel it fails the launch like the hardware would, naming the kernel, block, thread, type and
// source line. (cp.async and ldmatrix check their own 16-byte rule in tensor_core.cpp.)
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <string>

#include "runtime.h"

namespace {

// GCC's (and LLVM's) UBSan data layouts for a type-mismatch check.
struct SourceLocation {
    const char* file;
    uint32_t line;
    uint32_t column;
};
struct TypeDescriptor {
    uint16_t kind;
    uint16_t info;
    char name[1];
};
struct TypeMismatchData {
    SourceLocation loc;
    const TypeDescriptor* type;
    unsigned char log_alignment;
    unsigned char type_check_kind;
};

const char* kCheckKinds[] = {"loads",   "stores to",  "binds a reference to", "accesses a member of",
                             "calls a member function of", "constructs", "downcasts a pointer to",
                             "downcasts a reference to", "upcasts", "casts to a virtual base", "accesses",
                             "dynamic-casts"};

[[noreturn]] void misaligned(const TypeMismatchData* d, uintptr_t ptr) {
    const uintptr_t align = uintptr_t{1} << d->log_alignment;
    const char* kind = d->type_check_kind < sizeof kCheckKinds / sizeof kCheckKinds[0]
                           ? kCheckKinds[d->type_check_kind]
                           : "accesses";
    char b[512];
    snprintf(b, sizeof b, "%s %s at 0x%llx, which is not %llu-byte aligned (%s:%u)", kind, d->type->name,
             (unsigned long long)ptr, (unsigned long long)align, d->loc.file ? d->loc.file : "?", d->loc.line);
    if (ec_emu::in_kernel()) ec_emu::kernel_fault(ec_emu::kMisalignedAddress, b);
    // Host code of the emulator itself is not compiled with the check; stop loudly all the same.
    fprintf(stderr, "[evenclass-emu] misaligned access outside a kernel: %s\n", b);
    abort();
}

}  // namespace

extern "C" {
// Only alignment is checked (-fsanitize=alignment): a null pointer never reaches here.
__attribute__((visibility("default"))) void __ubsan_handle_type_mismatch_v1(const TypeMismatchData* d, uintptr_t ptr) {
    if (ptr & ((uintptr_t{1} << d->log_alignment) - 1)) misaligned(d, ptr);
}
__attribute__((visibility("default"))) void __ubsan_handle_type_mismatch_v1_abort(const TypeMismatchData* d,
                                                                                uintptr_t ptr) {
    __ubsan_handle_type_mismatch_v1(d, ptr);
    abort();  // a check the handler does not know (not alignment)
}
}
