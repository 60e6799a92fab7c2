// The emulated CUDA driver's own tests: correct kernels must pass, deliberately broken ones
// (tests/emulator/selftest_kernels.cu) must be caught, and launches beyond the device's limits
// must fail with the real driver's error codes. Uses only the driver API, like cudarc does.
//
//   selftest [CASE...]        runs every case (or the named ones), each in a child process
//
// Prints one line per case and `selftest total: N passed, M failed`; exits non-zero on failure.
#include <cuda.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

extern "C" size_t evenclass_emu_counters(void* out, size_t size);
extern "C" void evenclass_emu_reset_counters(void);
extern "C" int evenclass_emu_set_fault(const char* spec);
extern "C" size_t evenclass_emu_fault_counts(uint64_t* out, size_t n);

namespace {

// The module image: the emulator maps an image to a compiled module by the entry names in it (as
// a fatbin's string tables or PTX name them).
const char kImage[] =
    "// selftest image\n.version 9.0\n.target sm_90\n"
    ".entry selftest_block_sum(\n.entry selftest_neighbour_synced(\n.entry selftest_collectives(\n"
    ".entry selftest_dynamic_smem(\n.entry selftest_bounded(\n.entry selftest_many_registers(\n"
    ".entry selftest_missing_barrier(\n.entry selftest_oob_write(\n.entry selftest_partial_warp_shuffle(\n"
    ".entry selftest_exited_lane_shuffle(\n.entry selftest_deadlock(\n.entry selftest_missing_trailing_barrier(\n"
    ".entry selftest_barrier_two_sites(\n.entry selftest_shared_oob(\n.entry selftest_dynamic_smem_oob(\n"
    ".entry selftest_misaligned_float4(\n";

#define CK(call)                                                                                   \
    do {                                                                                           \
        CUresult r_ = (call);                                                                      \
        if (r_ != CUDA_SUCCESS) {                                                                  \
            fprintf(stderr, "%s:%d: %s returned %s\n", __FILE__, __LINE__, #call, name_of(r_));   \
            return false;                                                                          \
        }                                                                                          \
    } while (0)
#define EXPECT(cond)                                                                   \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #cond);        \
            return false;                                                              \
        }                                                                              \
    } while (0)
#define EXPECT_CODE(call, code)                                                                             \
    do {                                                                                                    \
        CUresult r_ = (call);                                                                               \
        if (r_ != (code)) {                                                                                 \
            fprintf(stderr, "%s:%d: %s returned %s, expected %s\n", __FILE__, __LINE__, #call, name_of(r_), \
                    name_of(code));                                                                         \
            return false;                                                                                   \
        }                                                                                                   \
    } while (0)

const char* name_of(CUresult r) {
    const char* s = nullptr;
    return cuGetErrorName(r, &s) == CUDA_SUCCESS ? s : "(unknown CUresult)";
}

CUmodule g_module;
CUstream g_stream;

CUfunction fn(const char* name) {
    CUfunction f = nullptr;
    if (cuModuleGetFunction(&f, g_module, name) != CUDA_SUCCESS) {
        fprintf(stderr, "no function %s\n", name);
        exit(3);
    }
    return f;
}

CUdeviceptr upload(const std::vector<float>& v) {
    CUdeviceptr p = 0;
    if (cuMemAlloc(&p, v.size() * sizeof(float)) != CUDA_SUCCESS ||
        cuMemcpyHtoD(p, v.data(), v.size() * sizeof(float)) != CUDA_SUCCESS) {
        fprintf(stderr, "upload failed\n");
        exit(3);
    }
    return p;
}

std::vector<float> ramp(int n) {
    std::vector<float> v(n);
    for (int i = 0; i < n; ++i) v[i] = (float)(i % 97) - 40.0f;
    return v;
}

CUresult launch(CUfunction f, unsigned grid, unsigned block, unsigned smem, std::vector<void*> args) {
    return cuLaunchKernel(f, grid, 1, 1, block, 1, 1, smem, g_stream, args.data(), nullptr);
}

// ---- correct kernels --------------------------------------------------------------------------------

bool block_sum() {
    for (int threads : {32, 64, 256, 1024}) {
        const int n = 3001;
        auto x = ramp(n);
        CUdeviceptr dx = upload(x), dout = upload({0.0f});
        int nn = n;
        CK(launch(fn("selftest_block_sum"), 1, threads, 0, {&dx, &dout, &nn}));
        float got = 0;
        CK(cuMemcpyDtoH(&got, dout, sizeof got));
        double want = 0;
        for (float v : x) want += v;
        EXPECT(std::fabs(got - want) < 1e-3 * std::fabs(want) + 1e-3);
        CK(cuMemFree(dx));
        CK(cuMemFree(dout));
    }
    return true;
}

bool neighbour_synced() {
    const int threads = 1024, blocks = 3;
    auto x = ramp(threads * blocks);
    CUdeviceptr dx = upload(x), dout = upload(std::vector<float>(x.size()));
    CK(launch(fn("selftest_neighbour_synced"), blocks, threads, 0, {&dx, &dout}));
    std::vector<float> got(x.size());
    CK(cuMemcpyDtoH(got.data(), dout, got.size() * sizeof(float)));
    for (int b = 0; b < blocks; ++b)
        for (int t = 0; t < threads; ++t) EXPECT(got[b * threads + t] == x[b * threads + (t + 1) % threads]);
    return true;
}

bool collectives() {
    const int threads = 64;
    CUdeviceptr dout;
    CK(cuMemAlloc(&dout, threads * 10 * sizeof(int)));
    CK(launch(fn("selftest_collectives"), 1, threads, 0, {&dout}));
    std::vector<int> o(threads * 10);
    CK(cuMemcpyDtoH(o.data(), dout, o.size() * sizeof(int)));
    unsigned ballot = 0;
    for (int l = 0; l < 32; ++l)
        if (l % 3 == 0) ballot |= 1u << l;
    for (int t = 0; t < threads; ++t) {
        const int lane = t & 31, base = t - lane;
        const int* r = &o[10 * t];
        EXPECT(r[0] == (base + ((lane * 7) & 31)) * 10);
        EXPECT(r[1] == (lane >= 3 ? t - 3 : t));                    // up: lanes below delta keep theirs
        EXPECT(r[2] == ((lane & 15) + 5 < 16 ? t + 5 : t));          // down within 16-lane segments
        EXPECT(r[3] == base + (lane ^ 9));
        EXPECT((unsigned)r[4] == ballot);
        EXPECT(r[5] == 1);
        EXPECT(r[6] == 0);
        EXPECT(r[7] == (lane < 16 ? base + (lane ^ 1) + 1000 : -1));
        EXPECT(r[8] == 1);
        EXPECT(r[9] == (t ^ 1));
    }
    return true;
}

bool dynamic_smem() {
    const int threads = 256;
    auto x = ramp(threads);
    CUdeviceptr dx = upload(x), dout = upload(std::vector<float>(threads));
    CUfunction f = fn("selftest_dynamic_smem");
    CK(launch(f, 1, threads, threads * sizeof(float), {&dx, &dout}));
    std::vector<float> got(threads);
    CK(cuMemcpyDtoH(got.data(), dout, got.size() * sizeof(float)));
    for (int t = 0; t < threads; ++t) EXPECT(got[t] == x[threads - 1 - t]);
    // Above 48 KiB only after opting in, and never above the sm_90 maximum of 227 KiB.
    int max_dyn = 0;
    CK(cuFuncGetAttribute(&max_dyn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, f));
    EXPECT(max_dyn == 48 * 1024);
    EXPECT_CODE(launch(f, 1, threads, 64 * 1024, {&dx, &dout}), CUDA_ERROR_INVALID_VALUE);
    CK(cuFuncSetAttribute(f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, 64 * 1024));
    CK(launch(f, 1, threads, 64 * 1024, {&dx, &dout}));
    EXPECT_CODE(cuFuncSetAttribute(f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, 228 * 1024),
                CUDA_ERROR_INVALID_VALUE);
    CK(cuCtxSynchronize());
    return true;
}

bool launch_limits() {
    CUdeviceptr d;
    CK(cuMemAlloc(&d, 4096 * sizeof(float)));
    CUfunction f = fn("selftest_oob_write");  // any kernel: these fail before it runs
    int n = 4096;
    void* args[] = {&d, &n};
    EXPECT_CODE(cuLaunchKernel(f, 1, 1, 1, 1025, 1, 1, 0, g_stream, args, nullptr), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CODE(cuLaunchKernel(f, 1, 1, 1, 32, 32, 2, 0, g_stream, args, nullptr), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CODE(cuLaunchKernel(f, 1, 65536, 1, 32, 1, 1, 0, g_stream, args, nullptr), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CODE(cuLaunchKernel(f, 1, 1, 65536, 32, 1, 1, 0, g_stream, args, nullptr), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CODE(cuLaunchKernel(f, 0, 1, 1, 32, 1, 1, 0, g_stream, args, nullptr), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CODE(cuLaunchKernel(f, 1u << 31, 1, 1, 32, 1, 1, 0, g_stream, args, nullptr), CUDA_ERROR_INVALID_VALUE);
    // __launch_bounds__(64).
    CUfunction b = fn("selftest_bounded");
    int max_threads = 0;
    CK(cuFuncGetAttribute(&max_threads, CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, b));
    EXPECT(max_threads == 64);
    void* bargs[] = {&d};
    CK(cuLaunchKernel(b, 1, 1, 1, 64, 1, 1, 0, g_stream, bargs, nullptr));
    EXPECT_CODE(cuLaunchKernel(b, 1, 1, 1, 96, 1, 1, 0, g_stream, bargs, nullptr), CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES);
    // Registers from ptxas: more than 64 per thread cannot run 1024 threads per block.
    CUfunction r = fn("selftest_many_registers");
    int regs = 0;
    CK(cuFuncGetAttribute(&regs, CU_FUNC_ATTRIBUTE_NUM_REGS, r));
    CK(cuFuncGetAttribute(&max_threads, CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, r));
    fprintf(stderr, "selftest_many_registers: %d registers, at most %d threads per block\n", regs, max_threads);
    EXPECT(regs > 64);
    EXPECT(max_threads < 1024 && max_threads % 32 == 0);
    CUdeviceptr x, o;
    CK(cuMemAlloc(&x, 80 * 1024 * sizeof(float)));
    CK(cuMemsetD32(x, 0, 80 * 1024));
    CK(cuMemAlloc(&o, 1024 * sizeof(float)));
    int stride = 1024;
    void* rargs[] = {&x, &o, &stride};
    CK(cuLaunchKernel(r, 1, 1, 1, max_threads, 1, 1, 0, g_stream, rargs, nullptr));
    EXPECT_CODE(cuLaunchKernel(r, 1, 1, 1, 1024, 1, 1, 0, g_stream, rargs, nullptr),
                CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES);
    CK(cuCtxSynchronize());
    return true;
}

// Whether the emulator runs its init check (the plain build, unless EVENCLASS_EMU_INIT_CHECK=0).
bool init_check_on() {
#if defined(__SANITIZE_ADDRESS__)
    return false;
#else
    const char* s = getenv("EVENCLASS_EMU_INIT_CHECK");
    return !(s && strcmp(s, "0") == 0);
#endif
}

bool memory_checks() {
    CUdeviceptr d;
    EXPECT_CODE(cuMemAlloc(&d, 0), CUDA_ERROR_INVALID_VALUE);
    CK(cuMemAlloc(&d, 100));
    std::vector<char> host(200);
    EXPECT_CODE(cuMemcpyHtoD(d, host.data(), 101), CUDA_ERROR_INVALID_VALUE);   // one byte past the end
    EXPECT_CODE(cuMemcpyDtoH(host.data(), d + 50, 51), CUDA_ERROR_INVALID_VALUE);
    EXPECT_CODE(cuMemsetD8(d - 1, 0, 2), CUDA_ERROR_INVALID_VALUE);
    CK(cuMemcpyHtoD(d + 50, host.data(), 50));
    // Fresh device memory is garbage (0xFF), not zeros.
    CUdeviceptr e;
    CK(cuMemAlloc(&e, 16));
    unsigned char b[16];
    if (init_check_on()) {
        // Reading it back is reading garbage: the init check refuses the copy.
        EXPECT_CODE(cuMemcpyDtoH(b, e, 16), CUDA_ERROR_INVALID_VALUE);
    } else {
        CK(cuMemcpyDtoH(b, e, 16));
        for (unsigned char c : b) EXPECT(c == 0xFF);
    }
    CK(cuMemFree(d));
    EXPECT_CODE(cuMemFree(d), CUDA_ERROR_INVALID_VALUE);  // double free
    CK(cuMemFree(e));
    // A kernel from another module is not found in this one.
    CUfunction f;
    EXPECT_CODE(cuModuleGetFunction(&f, g_module, "relu_fwd_f32"), CUDA_ERROR_NOT_FOUND);
    return true;
}

// ---- broken kernels -----------------------------------------------------------------------------------

// The result is wrong (the exchange without a barrier reads unwritten slots).
bool missing_barrier() {
    const int threads = 1024;
    auto x = ramp(threads);
    CUdeviceptr dx = upload(x), dout = upload(std::vector<float>(threads));
    CK(launch(fn("selftest_missing_barrier"), 1, threads, 0, {&dx, &dout}));
    std::vector<float> got(threads);
    CK(cuMemcpyDtoH(got.data(), dout, got.size() * sizeof(float)));
    int wrong = 0;
    for (int t = 0; t < threads; ++t) wrong += !(got[t] == x[(t + 1) % threads]);
    fprintf(stderr, "missing barrier: %d of %d threads read their neighbour's slot before it was written\n", wrong,
            threads);
    EXPECT(wrong > 0);
    return true;
}

// Two block sums over one scratch array without the barrier between them: wrong sums.
bool missing_trailing_barrier() {
    const int threads = 256;
    auto x = ramp(threads);
    CUdeviceptr dx = upload(x), dout = upload(std::vector<float>(threads));
    CK(launch(fn("selftest_missing_trailing_barrier"), 1, threads, 0, {&dx, &dout}));
    std::vector<float> got(threads);
    CK(cuMemcpyDtoH(got.data(), dout, got.size() * sizeof(float)));
    int wrong = 0;
    for (float v : got) wrong += v != 0.0f;
    fprintf(stderr, "missing trailing barrier: %d of %d threads got a wrong first sum (read before it was written)\n",
            wrong, threads);
    EXPECT(wrong > 0);
    return true;
}

// Guard bytes (plain build): the launch succeeds, the context faults, the next wait reports it.
// With AddressSanitizer the write itself aborts the process (checked by the parent).
bool oob_write() {
    CUdeviceptr d;
    CK(cuMemAlloc(&d, 100 * sizeof(float)));
    int n = 100;
    CK(launch(fn("selftest_oob_write"), 1, 128, 0, {&d, &n}));
    EXPECT_CODE(cuCtxSynchronize(), CUDA_ERROR_ILLEGAL_ADDRESS);
    EXPECT_CODE(cuMemAlloc(&d, 4), CUDA_ERROR_ILLEGAL_ADDRESS);  // the context stays broken
    return true;
}

bool fault(const char* kernel, unsigned threads, CUresult want) {
    auto x = ramp(1024);
    CUdeviceptr dx = upload(x), dout = upload(std::vector<float>(1024));
    CK(launch(fn(kernel), 1, threads, 0, {&dx, &dout}));
    EXPECT_CODE(cuStreamSynchronize(g_stream), want);
    return true;
}

bool partial_warp_shuffle() { return fault("selftest_partial_warp_shuffle", 48, CUDA_ERROR_ILLEGAL_INSTRUCTION); }
bool exited_lane_shuffle() { return fault("selftest_exited_lane_shuffle", 64, CUDA_ERROR_ILLEGAL_INSTRUCTION); }
bool deadlock() {
    CUdeviceptr dout = upload(std::vector<float>(64));
    CK(launch(fn("selftest_deadlock"), 1, 64, 0, {&dout}));
    EXPECT_CODE(cuCtxSynchronize(), CUDA_ERROR_LAUNCH_FAILED);
    return true;
}
bool barrier_two_sites() { return fault("selftest_barrier_two_sites", 64, CUDA_ERROR_LAUNCH_FAILED); }
bool shared_oob() {
    auto x = ramp(64);
    CUdeviceptr dx = upload(x), dout = upload(std::vector<float>(64));
    int n = 32;
    CK(launch(fn("selftest_shared_oob"), 1, 64, 0, {&dx, &dout, &n}));
    EXPECT_CODE(cuStreamSynchronize(g_stream), CUDA_ERROR_ILLEGAL_ADDRESS);
    return true;
}
bool dynamic_smem_oob() {
    auto x = ramp(64);
    CUdeviceptr dx = upload(x), dout = upload(std::vector<float>(64));
    CK(launch(fn("selftest_dynamic_smem_oob"), 1, 64, 64 * sizeof(float), {&dx, &dout}));
    EXPECT_CODE(cuStreamSynchronize(g_stream), CUDA_ERROR_ILLEGAL_ADDRESS);
    return true;
}
bool misaligned_float4() { return fault("selftest_misaligned_float4", 32, CUDA_ERROR_MISALIGNED_ADDRESS); }
// A fatbin as nvcc lays it out (see image_check.cpp), its entries' payloads naming the kernel.
struct FatEntry {
    uint16_t kind;  // 1 PTX, 2 cubin
    uint32_t arch;
    uint16_t major, minor;  // PTX ISA version
};
std::vector<unsigned char> fatbin(const std::vector<FatEntry>& entries) {
    const char payload[] = "selftest_block_sum";
    std::vector<unsigned char> body;
    for (const FatEntry& e : entries) {
        unsigned char h[64] = {};
        const uint32_t ehs = sizeof h;
        const uint64_t size = sizeof payload;
        memcpy(h, &e.kind, 2);
        memcpy(h + 4, &ehs, 4);
        memcpy(h + 8, &size, 8);
        memcpy(h + 28, &e.minor, 2);
        memcpy(h + 30, &e.major, 2);
        memcpy(h + 32, &e.arch, 4);
        body.insert(body.end(), h, h + sizeof h);
        body.insert(body.end(), payload, payload + sizeof payload);
    }
    unsigned char h[16] = {};
    const uint32_t magic = 0xBA55ED50u;
    const uint16_t version = 1, hs = 16;
    const uint64_t n = body.size();
    memcpy(h, &magic, 4);
    memcpy(h + 4, &version, 2);
    memcpy(h + 6, &hs, 2);
    memcpy(h + 8, &n, 8);
    std::vector<unsigned char> out(h, h + sizeof h);
    out.insert(out.end(), body.begin(), body.end());
    return out;
}

// The loader accepts what an sm_90 device with the configured driver runs, and refuses the rest.
bool module_arch() {
    CUmodule m;
    setenv("EVENCLASS_EMU_DRIVER_VERSION", "12040", 1);  // CUDA 12.4: PTX ISA up to 8.4
    int v = 0;
    CK(cuDriverGetVersion(&v));
    EXPECT(v == 12040);
    CK(cuModuleLoadData(&m, fatbin({{2, 90, 1, 8}}).data()));
    CK(cuModuleLoadData(&m, fatbin({{2, 80, 1, 8}, {1, 90, 8, 4}}).data()));
    EXPECT_CODE(cuModuleLoadData(&m, fatbin({{2, 80, 1, 8}}).data()), CUDA_ERROR_NO_BINARY_FOR_GPU);
    EXPECT_CODE(cuModuleLoadData(&m, fatbin({{2, 100, 1, 8}, {1, 100, 8, 8}}).data()), CUDA_ERROR_NO_BINARY_FOR_GPU);
    EXPECT_CODE(cuModuleLoadData(&m, fatbin({{2, 80, 1, 8}, {1, 90, 9, 0}}).data()),
                CUDA_ERROR_UNSUPPORTED_PTX_VERSION);
    const char* ptx90 = ".version 9.0\n.target sm_90\n.entry selftest_block_sum(\n";
    const char* ptx84 = ".version 8.4\n.target sm_90\n.entry selftest_block_sum(\n";
    const char* ptx100 = ".version 8.4\n.target sm_100\n.entry selftest_block_sum(\n";
    const char* bare = ".entry selftest_block_sum(\n";
    EXPECT_CODE(cuModuleLoadData(&m, ptx90), CUDA_ERROR_UNSUPPORTED_PTX_VERSION);
    CK(cuModuleLoadData(&m, ptx84));
    EXPECT_CODE(cuModuleLoadData(&m, ptx100), CUDA_ERROR_INVALID_PTX);
    EXPECT_CODE(cuModuleLoadData(&m, bare), CUDA_ERROR_INVALID_PTX);
    setenv("EVENCLASS_EMU_DRIVER_VERSION", "13000", 1);  // CUDA 13.0: PTX ISA 9.0
    CK(cuModuleLoadData(&m, fatbin({{2, 80, 1, 8}, {1, 90, 9, 0}}).data()));
    CK(cuModuleLoadData(&m, ptx90));
    return true;
}

// Init check, no bug: what a copy, a memset or a kernel's stores wrote reads without a report,
// in the same launch and in later ones; a device-to-device copy carries the written state.
bool init_tracking() {
    const int n = 256;
    int nn = n;
    CUdeviceptr written, set, copied, out;
    CK(cuMemAlloc(&written, n * sizeof(float)));
    CK(cuMemAlloc(&set, n * sizeof(float)));
    CK(cuMemAlloc(&copied, n * sizeof(float)));
    out = upload({0.0f});
    CK(launch(fn("selftest_oob_write"), 1, n, 0, {&written, &nn}));  // n threads: in bounds
    CK(launch(fn("selftest_block_sum"), 1, 64, 0, {&written, &out, &nn}));
    CK(cuMemsetD32(set, 0, n));
    CK(launch(fn("selftest_block_sum"), 1, 64, 0, {&set, &out, &nn}));
    CK(cuMemcpyDtoD(copied, written, n * sizeof(float)));
    CK(launch(fn("selftest_block_sum"), 1, 64, 0, {&copied, &out, &nn}));
    float got = 0;
    CK(cuMemcpyDtoH(&got, out, sizeof got));
    EXPECT(got == (float)n);
    // All but its last float written: so is the copy of it, and reading all of it fails.
    CUdeviceptr half, half_copy;
    CK(cuMemAlloc(&half, n * sizeof(float)));
    CK(cuMemAlloc(&half_copy, n * sizeof(float)));
    CK(cuMemsetD32(half, 0, n - 1));
    CK(cuMemcpyDtoD(half_copy, half, n * sizeof(float)));
    CK(launch(fn("selftest_block_sum"), 1, 64, 0, {&half_copy, &out, &nn}));
    EXPECT_CODE(cuStreamSynchronize(g_stream), CUDA_ERROR_LAUNCH_FAILED);
    return true;
}

// Planted bug for the init check: a kernel sums a buffer that was allocated and never written.
bool uninit_read() {
    const int n = 100;
    int nn = n;
    CUdeviceptr x, out = upload({0.0f});
    CK(cuMemAlloc(&x, n * sizeof(float)));
    CK(launch(fn("selftest_block_sum"), 1, 32, 0, {&x, &out, &nn}));
    EXPECT_CODE(cuStreamSynchronize(g_stream), CUDA_ERROR_LAUNCH_FAILED);
    return true;
}

// The same partial-warp kernel with a full last warp is correct.
bool full_warp_shuffle() { return fault("selftest_partial_warp_shuffle", 64, CUDA_SUCCESS); }

// The counters follow the calls.
bool counters() {
    evenclass_emu_reset_counters();
    uint64_t c[17] = {};
    EXPECT(evenclass_emu_counters(c, sizeof c) == sizeof c);
    for (uint64_t v : c) EXPECT(v == 0);
    CUdeviceptr d;
    CK(cuMemAlloc(&d, 64));
    float h[16] = {};
    CK(cuMemcpyHtoD(d, h, sizeof h));
    CK(cuMemsetD8(d, 0, 64));
    int n = 16;
    CK(launch(fn("selftest_oob_write"), 1, 16, 0, {&d, &n}));
    CK(cuMemcpyDtoHAsync(h, d, sizeof h, g_stream));
    CK(cuStreamSynchronize(g_stream));
    CK(cuMemFree(d));
    evenclass_emu_counters(c, sizeof c);
    // launches, allocs, frees, htod, htod bytes, dtoh, dtoh bytes, dtod, memsets, host syncs (the
    // stream sync and the async copy into pageable memory), stream syncs, context syncs, event
    // syncs, DtoH waits
    const uint64_t want[] = {1, 1, 1, 1, 64, 1, 64, 0, 1, 2, 1, 0, 0, 1};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; ++i) {
        if (c[i] != want[i]) fprintf(stderr, "counter %zu is %llu, expected %llu\n", i, (unsigned long long)c[i], (unsigned long long)want[i]);
        EXPECT(c[i] == want[i]);
    }
    return true;
}


// ---- injected faults (EVENCLASS_EMU_FAULT=kind:N, here through evenclass_emu_set_fault) ----------------

// The per-kind counts (alloc, launch, sync, copy, calls) equal `want`.
bool fault_counts_are(std::vector<uint64_t> want) {
    uint64_t got[5] = {};
    EXPECT(evenclass_emu_fault_counts(got, 5) == 5);
    for (size_t i = 0; i < 5; ++i) {
        if (got[i] != want[i])
            fprintf(stderr, "fault count %zu is %llu, expected %llu\n", i, (unsigned long long)got[i],
                    (unsigned long long)want[i]);
        EXPECT(got[i] == want[i]);
    }
    return true;
}

// The 2nd allocation is out of memory; the 3rd works again (not sticky).
bool fault_alloc() {
    EXPECT(evenclass_emu_set_fault("alloc:2") == 0);
    CUdeviceptr a = 0, b = 0, c = 0;
    CK(cuMemAlloc(&a, 64));
    EXPECT_CODE(cuMemAlloc(&b, 64), CUDA_ERROR_OUT_OF_MEMORY);
    EXPECT(b == 0);
    CK(cuMemAlloc(&c, 64));
    CK(cuCtxSynchronize());
    return fault_counts_are({3, 0, 1, 0, 4});
}

// The 2nd launch fails and does not run; the context is broken for every later call.
bool fault_launch() {
    EXPECT(evenclass_emu_set_fault("launch:2") == 0);
    auto x = ramp(100);
    CUdeviceptr dx = upload(x), dout = upload({-7.0f});
    int n = 100;
    CK(launch(fn("selftest_block_sum"), 1, 32, 0, {&dx, &dout, &n}));
    float first = 0;
    CK(cuMemcpyDtoH(&first, dout, sizeof first));
    EXPECT(first != -7.0f);
    const float poison = -7.0f;
    CK(cuMemcpyHtoD(dout, &poison, sizeof poison));
    EXPECT_CODE(launch(fn("selftest_block_sum"), 1, 32, 0, {&dx, &dout, &n}), CUDA_ERROR_LAUNCH_FAILED);
    EXPECT_CODE(cuCtxSynchronize(), CUDA_ERROR_LAUNCH_FAILED);
    float got = 0;
    EXPECT_CODE(cuMemcpyDtoH(&got, dout, sizeof got), CUDA_ERROR_LAUNCH_FAILED);
    CUdeviceptr more = 0;
    EXPECT_CODE(cuMemAlloc(&more, 64), CUDA_ERROR_LAUNCH_FAILED);
    EXPECT_CODE(launch(fn("selftest_block_sum"), 1, 32, 0, {&dx, &dout, &n}), CUDA_ERROR_LAUNCH_FAILED);
    // Calls on the broken context are not counted: 2 allocations, 2 launches, 4 copies (one of
    // them a synchronizing device-to-host copy); 8 calls.
    return fault_counts_are({2, 2, 1, 4, 8});
}

// The 2nd host synchronization (here a device-to-host copy) reports an illegal address, copies
// nothing, and every later call fails with it.
bool fault_sync() {
    EXPECT(evenclass_emu_set_fault("sync:2") == 0);
    CUdeviceptr d = upload({3.0f});
    CK(cuStreamSynchronize(g_stream));
    float got = -1.0f;
    EXPECT_CODE(cuMemcpyDtoH(&got, d, sizeof got), CUDA_ERROR_ILLEGAL_ADDRESS);
    EXPECT(got == -1.0f);
    EXPECT_CODE(cuStreamSynchronize(g_stream), CUDA_ERROR_ILLEGAL_ADDRESS);
    EXPECT_CODE(cuCtxSynchronize(), CUDA_ERROR_ILLEGAL_ADDRESS);
    CUdeviceptr more = 0;
    EXPECT_CODE(cuMemAlloc(&more, 64), CUDA_ERROR_ILLEGAL_ADDRESS);
    int n = 1;
    EXPECT_CODE(launch(fn("selftest_block_sum"), 1, 32, 0, {&d, &d, &n}), CUDA_ERROR_ILLEGAL_ADDRESS);
    return fault_counts_are({1, 0, 2, 2, 4});
}

// The 2nd copy fails and copies nothing; the context works on (not sticky).
bool fault_copy() {
    EXPECT(evenclass_emu_set_fault("copy:2") == 0);
    CUdeviceptr d = upload({5.0f});
    const float other = 9.0f;
    EXPECT_CODE(cuMemcpyHtoD(d, &other, sizeof other), CUDA_ERROR_UNKNOWN);
    float got = 0;
    CK(cuMemcpyDtoH(&got, d, sizeof got));
    EXPECT(got == 5.0f);
    CK(cuCtxSynchronize());
    return fault_counts_are({1, 0, 2, 3, 5});
}

// From the 3rd call on (the launch) the device is gone: every call fails, also frees work.
bool fault_lost() {
    EXPECT(evenclass_emu_set_fault("lost:3") == 0);
    CUdeviceptr d = upload({1.0f});
    int n = 1;
    EXPECT_CODE(launch(fn("selftest_block_sum"), 1, 32, 0, {&d, &d, &n}), CUDA_ERROR_DEVICE_UNAVAILABLE);
    CUdeviceptr more = 0;
    EXPECT_CODE(cuMemAlloc(&more, 64), CUDA_ERROR_DEVICE_UNAVAILABLE);
    float got = 0;
    EXPECT_CODE(cuMemcpyDtoH(&got, d, sizeof got), CUDA_ERROR_DEVICE_UNAVAILABLE);
    EXPECT_CODE(cuCtxSynchronize(), CUDA_ERROR_DEVICE_UNAVAILABLE);
    EXPECT_CODE(cuStreamSynchronize(g_stream), CUDA_ERROR_DEVICE_UNAVAILABLE);
    CK(cuMemFree(d));
    return true;
}

// A bad spec changes nothing and says why; a bad EVENCLASS_EMU_FAULT stops the process at load
// (exit status 2) instead of running without the fault.
bool fault_bad_spec() {
    EXPECT(evenclass_emu_set_fault("alloc:1") == 0);
    for (const char* bad : {"bogus:1", "alloc", "alloc:", "alloc:0", "alloc:x", "alloc:-1", "lost:1x", ":3"})
        EXPECT(evenclass_emu_set_fault(bad) == -1);
    CUdeviceptr d = 0;
    EXPECT_CODE(cuMemAlloc(&d, 64), CUDA_ERROR_OUT_OF_MEMORY);  // alloc:1 still set
    fflush(nullptr);
    const pid_t pid = fork();
    if (pid == 0) {
        setenv("EVENCLASS_EMU_FAULT", "sync:twice", 1);
        execl("/proc/self/exe", "selftest", "no_such_case", (char*)nullptr);
        _exit(99);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    EXPECT(WIFEXITED(status) && WEXITSTATUS(status) == 2);
    return true;
}

struct Case {
    const char* name;
    std::function<bool()> run;
    const char* stderr_must_contain;       // plain build
    const char* asan_stderr_must_contain;  // AddressSanitizer build (nullptr: same as plain)
    bool asan_dies;                        // under ASan the child is expected to abort
};

#include "selftest_tensor_core.inc"

bool setup() {
    CUdevice dev;
    CUcontext ctx;
    CK(cuInit(0));
    CK(cuDeviceGet(&dev, 0));
    CK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CK(cuCtxSetCurrent(ctx));
    CK(cuStreamCreate(&g_stream, CU_STREAM_NON_BLOCKING));
    CK(cuModuleLoadData(&g_module, kImage));
    return true;
}

}  // namespace

int main(int argc, char** argv) {
#if defined(__SANITIZE_ADDRESS__)
    const bool asan = true;
#else
    const bool asan = false;
#endif
    std::vector<Case> cases = {
        {"block_sum", block_sum, nullptr, nullptr, false},
        {"neighbour_synced", neighbour_synced, nullptr, nullptr, false},
        {"collectives", collectives, nullptr, nullptr, false},
        {"dynamic_smem", dynamic_smem, nullptr, nullptr, false},
        {"launch_limits", launch_limits, "selftest_many_registers", nullptr, false},
        {"memory_checks", memory_checks, "is not inside one live device allocation", nullptr, false},
        {"full_warp_shuffle", full_warp_shuffle, nullptr, nullptr, false},
        {"counters", counters, nullptr, nullptr, false},
        {"missing_barrier", missing_barrier, "before it was written", nullptr, false},
        {"missing_trailing_barrier", missing_trailing_barrier, "before it was written", nullptr, false},
        {"oob_write", oob_write, "out-of-bounds write", "heap-buffer-overflow", true},
        {"partial_warp_shuffle", partial_warp_shuffle, "lanes that do not exist", nullptr, false},
        {"exited_lane_shuffle", exited_lane_shuffle, "which has exited", nullptr, false},
        {"deadlock", deadlock, "deadlock", nullptr, false},
        {"shared_oob", shared_oob, "byte 0 past the end of __shared__ selftest_shared_oob::tile (128 bytes)", nullptr,
         false},
        {"dynamic_smem_oob", dynamic_smem_oob, "byte 0 past the end of the dynamic shared memory (256 bytes)",
         "heap-buffer-overflow", true},
        {"misaligned_float4", misaligned_float4, "float4' at 0x", nullptr, false},
        {"module_arch", module_arch, "no sm_90 cubin, and the driver (CUDA 12.4) knows PTX ISA up to 8.4", nullptr,
         false},
        {"barrier_two_sites", barrier_two_sites, "threads of a block must reach the same barrier", nullptr, false},
        {"fault_alloc", fault_alloc, "the 2nd alloc (cuMemAlloc) returns CUDA_ERROR_OUT_OF_MEMORY", nullptr, false},
        {"fault_launch", fault_launch, "the 2nd launch (selftest_block_sum) returns CUDA_ERROR_LAUNCH_FAILED", nullptr,
         false},
        {"fault_sync", fault_sync, "the 2nd sync (cuMemcpyDtoH) returns CUDA_ERROR_ILLEGAL_ADDRESS", nullptr, false},
        {"fault_copy", fault_copy, "the 2nd copy (cuMemcpyHtoD) returns CUDA_ERROR_UNKNOWN", nullptr, false},
        {"fault_lost", fault_lost, "the device is lost at call 3 (selftest_block_sum)", nullptr, false},
        {"fault_bad_spec", fault_bad_spec, "EVENCLASS_EMU_FAULT=sync:twice is invalid", nullptr, false},
    };
    if (init_check_on()) {
        cases.push_back({"init_tracking", init_tracking,
                         "reads 4 bytes at byte 1020 of device buffer", nullptr, false});
        cases.push_back({"uninit_read", uninit_read,
                         "(400 bytes; kernel parameter 0 points into it), and byte", nullptr,
                         false});
    }
    for (const auto& tc : kTensorCoreCases) cases.push_back({tc.name, tc.run, tc.stderr_must_contain, nullptr, false});
    int passed = 0, failed = 0;
    for (const Case& c : cases) {
        if (argc > 1) {
            bool wanted = false;
            for (int i = 1; i < argc; ++i) wanted |= strcmp(argv[i], c.name) == 0;
            if (!wanted) continue;
        }
        char path[] = "/tmp/evenclass-emu-selftest-XXXXXX";
        const int fd = mkstemp(path);
        if (fd < 0) return 2;
        fflush(nullptr);
        const pid_t pid = fork();
        if (pid == 0) {
            dup2(fd, 2);
            const bool ok = setup() && c.run();
            fflush(nullptr);
            _exit(ok ? 0 : 1);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        std::string err;
        if (FILE* f = fopen(path, "r")) {
            char buf[4096];
            size_t n;
            while ((n = fread(buf, 1, sizeof buf, f)) > 0) err.append(buf, n);
            fclose(f);
        }
        close(fd);
        unlink(path);
        const bool exited_ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        const char* must = asan && c.asan_stderr_must_contain ? c.asan_stderr_must_contain : c.stderr_must_contain;
        bool ok = (asan && c.asan_dies) ? !exited_ok : exited_ok;
        if (must && err.find(must) == std::string::npos) ok = false;
        printf("%-26s %s\n", c.name, ok ? "ok" : "FAILED");
        // The emulator's report for the broken kernels (its first lines), or everything on failure.
        size_t shown = 0;
        for (size_t pos = 0; pos < err.size() && (!ok || shown < 3);) {
            size_t end = err.find('\n', pos);
            if (end == std::string::npos) end = err.size();
            const std::string line = err.substr(pos, end - pos);
            if (!ok || line.find("[evenclass-emu] launch failed") != std::string::npos ||
                line.find("out-of-bounds") != std::string::npos || line.find("ERROR: AddressSanitizer") != std::string::npos ||
                line.find("before it was written") != std::string::npos ||
                line.find("was never written") != std::string::npos ||
                line.find("elements of D wrong") != std::string::npos ||
                line.find("read before they landed") != std::string::npos ||
                line.find("registers, at most") != std::string::npos) {
                printf("    %s\n", line.c_str());
                ++shown;
            }
            pos = end + 1;
        }
        (ok ? passed : failed)++;
    }
    printf("selftest total: %d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
