// What an H200's driver checks when it loads a module image (see image_check.h). The emulator
// runs host-compiled kernels, so it would load an image of any architecture; the real driver does
// not: a fatbin needs a cubin the device can run (same major architecture, minor not above the
// device's: only sm_90 on an sm_90 device) or PTX it can JIT (target not above compute_90, ISA
// version not above what the driver knows). Fatbin layout: a 16-byte header (magic 0xBA55ED50,
// u16 version, u16 header size, u64 payload size), then entries, each a header (u16 kind: 1 PTX,
// 2 cubin; u32 header size; u64 payload size; at offset 28 u16 minor, u16 major: the PTX ISA
// version of a PTX entry; at 32 u32 architecture, e.g. 90) followed by its payload.
#include "image_check.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

namespace ec_emu {
namespace {

constexpr int kDeviceArch = 90;        // sm_90 (H100, H200)
constexpr int kNoBinaryForGpu = 209;   // CUDA_ERROR_NO_BINARY_FOR_GPU
constexpr int kInvalidPtx = 218;       // CUDA_ERROR_INVALID_PTX
constexpr int kUnsupportedPtx = 222;   // CUDA_ERROR_UNSUPPORTED_PTX_VERSION
constexpr int kInvalidImage = 200;     // CUDA_ERROR_INVALID_IMAGE

// The newest PTX ISA version (major * 10 + minor) a driver of CUDA version `v` (1000 * major +
// 10 * minor) JIT-compiles, from NVIDIA's PTX ISA release notes.
int max_ptx_isa(int v) {
    static const int table[][2] = {{13000, 90}, {12090, 88}, {12080, 87}, {12060, 85}, {12050, 85}, {12040, 84},
                                   {12030, 83}, {12020, 82}, {12010, 81}, {12000, 80}, {11080, 78}};
    for (const auto& e : table)
        if (v >= e[0]) return e[1];
    return 70;
}

bool cubin_runs(int arch) { return arch / 10 == kDeviceArch / 10 && arch % 10 <= kDeviceArch % 10; }

std::string isa(int v) { return std::to_string(v / 10) + "." + std::to_string(v % 10); }

}  // namespace

int emulated_driver_version() {
    const char* s = getenv("EVENCLASS_EMU_DRIVER_VERSION");
    const int v = s && *s ? atoi(s) : 13000;
    return v >= 11000 ? v : 13000;
}

int check_image_arch(const unsigned char* p, size_t n, std::string* why) {
    const int driver = emulated_driver_version(), max_isa = max_ptx_isa(driver);
    const std::string drv = "the driver (CUDA " + std::to_string(driver / 1000) + "." +
                            std::to_string(driver % 1000 / 10) + ") knows PTX ISA up to " + isa(max_isa);
    uint32_t magic;
    memcpy(&magic, p, 4);
    if (magic != 0xBA55ED50u) {  // PTX text: `.version X.Y` and `.target sm_NN`
        const char* t = reinterpret_cast<const char*>(p);
        const char* v = strstr(t, ".version");
        const char* g = strstr(t, ".target");
        int vmaj = 0, vmin = 0, arch = 0;
        if (!v || sscanf(v, ".version %d.%d", &vmaj, &vmin) != 2 || !g || sscanf(g, ".target sm_%d", &arch) != 1) {
            *why = "PTX text without `.version X.Y` and `.target sm_NN`";
            return kInvalidPtx;
        }
        if (vmaj * 10 + vmin > max_isa) {
            *why = "PTX ISA " + isa(vmaj * 10 + vmin) + ", but " + drv;
            return kUnsupportedPtx;
        }
        if (arch > kDeviceArch) {
            *why = "PTX for sm_" + std::to_string(arch) + " cannot be compiled for the sm_90 device";
            return kInvalidPtx;
        }
        return 0;
    }
    uint16_t header;
    uint64_t payload;
    memcpy(&header, p + 6, 2);
    memcpy(&payload, p + 8, 8);
    std::string seen;
    int newest_ptx = -1;  // ISA of a PTX entry the device could run but the driver does not know
    for (uint64_t off = header; off + 36 <= n && off < header + payload;) {
        uint16_t kind, minor, major;
        uint32_t ehs, arch;
        uint64_t size;
        memcpy(&kind, p + off, 2);
        memcpy(&ehs, p + off + 4, 4);
        memcpy(&size, p + off + 8, 8);
        memcpy(&minor, p + off + 28, 2);
        memcpy(&major, p + off + 30, 2);
        memcpy(&arch, p + off + 32, 4);
        if (ehs < 36) break;
        if (kind == 2) {
            seen += " sm_" + std::to_string(arch) + " cubin";
            if (cubin_runs((int)arch)) return 0;
        } else if (kind == 1) {
            const int v = major * 10 + minor;
            seen += " compute_" + std::to_string(arch) + " PTX (ISA " + isa(v) + ")";
            if ((int)arch <= kDeviceArch) {
                if (v <= max_isa) return 0;
                newest_ptx = v;
            }
        }
        off += ehs + size;
    }
    if (seen.empty()) {
        *why = "a fatbin without a cubin or PTX entry";
        return kInvalidImage;
    }
    if (newest_ptx >= 0) {
        *why = "the fatbin holds" + seen + ": no sm_90 cubin, and " + drv;
        return kUnsupportedPtx;
    }
    *why = "the fatbin holds" + seen + ": nothing an sm_90 device runs";
    return kNoBinaryForGpu;
}

}  // namespace ec_emu
