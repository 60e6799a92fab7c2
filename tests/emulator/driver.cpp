// The emulated CUDA driver (test-only; see docs/emulator.md): the subset of the driver API that
// cudarc 0.19 and evenclass call, over host memory and the kernels of kernels/*.cu compiled as
// host C++ (runtime.cpp runs them).
//
// - One or more devices (EVENCLASS_EMU_DEVICES, default 1) that report a plausible sm_90 (H100)
//   device, each with a primary context.
// - Device memory is malloc'ed host memory; a CUdeviceptr is the host address. New allocations are
//   filled with 0xFF bytes (NaN floats), so reading memory nobody wrote shows. Built with
//   AddressSanitizer every buffer is a plain malloc block and ASan checks every access; built
//   without it, each buffer has guard bytes on both sides, checked after every launch and at free.
// - Streams and events execute synchronously and in order at the call; events record a timestamp.
// - Copies, memsets and frees check that the range lies inside one live allocation.
// - A launch checks what the real driver checks (block and grid limits, dynamic shared memory
//   against the function's opt-in, registers and __launch_bounds__ from the real compiler) and
//   returns the same error codes. A fault inside a kernel (bad warp collective, deadlock, guard
//   bytes overwritten) is reported on stderr at once, and, as on hardware, the launch itself
//   succeeds and the context is broken from then on: every later call on it returns the error.
// - Counters of launches, allocations, copies and host waits: evenclass_emu_counters().
// - Faults injected on request (EVENCLASS_EMU_FAULT=kind:N, test-only): the N-th allocation,
//   launch, synchronize or copy fails, or the device is lost from the N-th call on (see
//   "fault injection" below and docs/emulator.md).
// - An entry point the crate calls that is not here makes cudarc panic naming it ("Missing symbol
//   cuXyz"); the few exported stubs below print their name and return CUDA_ERROR_NOT_SUPPORTED.
#include <cuda.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <map>
#include <mutex>
#include <set>
#include <string>
#include <unordered_set>
#include <vector>

#include "emu.h"
#include "runtime.h"
#include "shared_guard.h"
#include "image_check.h"
#include "init_check.h"

#if defined(__SANITIZE_ADDRESS__)
#define EC_ASAN 1
#else
#define EC_ASAN 0
#endif

// ---- the handle types cuda.h leaves opaque ------------------------------------------------------------
struct CUctx_st {
    int device;
    int refs;
    CUresult sticky;  // first kernel fault; every later call on the context returns it
};
struct CUstream_st {
    CUcontext ctx;
};
struct CUevent_st {
    CUcontext ctx;
    unsigned flags;
    bool recorded;
    double ms;  // CLOCK_MONOTONIC at the record, in milliseconds
};
struct CUfunc_st {
    const ec_emu::EntryInfo* entry;
    CUmodule module;
    int max_dynamic_smem;  // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
};
struct CUmod_st {
    CUcontext ctx;
    std::string name;
    std::vector<CUfunc_st*> functions;
};

namespace {

// ---- sm_90 limits ----------------------------------------------------------------------------------
constexpr int kSms = 132;
constexpr int kMaxThreadsPerBlock = 1024;
constexpr int kRegsPerBlock = 65536;
constexpr int kRegAllocUnit = 256;  // registers are allocated per warp in units of 256
constexpr int kSmemDefault = 48 * 1024;
constexpr int kSmemOptin = 227 * 1024;  // cudaDevAttrMaxSharedMemoryPerBlockOptin on sm_90
constexpr size_t kTotalMem = 85031714816ull;  // what an H100 80GB HBM3 reports
constexpr size_t kGuard = 256;                // guard bytes on each side (builds without ASan)
constexpr unsigned char kGuardByte = 0xA5;

struct Alloc {
    size_t size;
    CUcontext ctx;
    void* block;  // what to free
};

struct Module {
    const char* name;
    const ec_emu::EntryInfo* entries;
    int count;
};

struct State {
    std::recursive_mutex mu;
    bool initialized = false;
    int devices = 1;
    std::vector<CUctx_st*> primary;
    std::set<CUstream> streams;
    std::set<CUevent> events;
    std::set<CUmodule> modules;
    std::map<uintptr_t, Alloc> allocs;  // by device address
    std::map<uintptr_t, size_t> pinned;  // page-locked host memory (cuMemHostAlloc), by address
    size_t allocated = 0;
};

State& st() {
    static State* s = new State;  // never destroyed: cudarc may call in during process exit
    return *s;
}

std::vector<Module>& registry() {
    static std::vector<Module>* r = new std::vector<Module>;
    return *r;
}

thread_local CUcontext t_current = nullptr;

}  // namespace

// ---- counters ----------------------------------------------------------------------------------------
extern "C" {
struct evenclass_emu_counters_t {
    uint64_t launches;
    uint64_t allocs;       // cuMemAlloc, cuMemAllocAsync
    uint64_t frees;        // cuMemFree, cuMemFreeAsync
    uint64_t htod_copies;  // host to device, sync or async
    uint64_t htod_bytes;
    uint64_t dtoh_copies;
    uint64_t dtoh_bytes;
    uint64_t dtod_copies;
    uint64_t memsets;
    // The host waited for the device: stream/context/event synchronize, and device-to-host copies
    // that return only once the copy is done (synchronous ones, and asynchronous ones into
    // pageable memory: cudarc's clone_dtoh into a Vec is one).
    uint64_t host_syncs;
    uint64_t stream_syncs;
    uint64_t ctx_syncs;
    uint64_t event_syncs;
    uint64_t dtoh_waits;
    uint64_t events_recorded;
    uint64_t stream_waits;  // cuStreamWaitEvent
    uint64_t module_loads;
};
}
static evenclass_emu_counters_t g_counters;

extern "C" size_t evenclass_emu_counters(evenclass_emu_counters_t* out, size_t size) {
    std::lock_guard<std::recursive_mutex> lock(st().mu);
    const size_t n = size < sizeof g_counters ? size : sizeof g_counters;
    if (out) memcpy(out, &g_counters, n);
    return sizeof g_counters;
}

static bool tracing();
extern "C" void evenclass_emu_reset_counters(void) {
    std::lock_guard<std::recursive_mutex> lock(st().mu);
    memset(&g_counters, 0, sizeof g_counters);
    if (tracing()) fputs("[evenclass-emu] trace: counters reset\n", stderr);
}

// Dry run: launches are checked and counted but kernels do not execute (device memory keeps what
// copies and memsets put there). For counting what the host does, e.g. one training step of a
// network too large to emulate in reasonable time; tests/emulator.rs checks on a small network
// that a dry run counts exactly what a real run does. Returns the previous setting. The
// environment variable EVENCLASS_EMU_DRY_RUN=1 starts the process in a dry run.
static bool g_dry_run = [] {
    const char* s = getenv("EVENCLASS_EMU_DRY_RUN");
    return s && *s && strcmp(s, "0") != 0;
}();
extern "C" int evenclass_emu_set_dry_run(int on) {
    std::lock_guard<std::recursive_mutex> lock(st().mu);
    const bool was = g_dry_run;
    g_dry_run = on != 0;
    return was;
}

// Bytes of live device allocations (for leak checks in tests).
extern "C" size_t evenclass_emu_allocated_bytes(void) {
    std::lock_guard<std::recursive_mutex> lock(st().mu);
    return st().allocated;
}

// Registration from the generated reg_<module>.cpp files.
void ec_emu::register_module(const char* module, const EntryInfo* entries, int count) {
    registry().push_back(Module{module, entries, count});
}

namespace {

void note(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void note(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("[evenclass-emu] ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

}  // namespace

// EVENCLASS_EMU_TRACE=1: one stderr line per counted call (what the counters count, by name).
static bool tracing() {
    static const bool on = [] {
        const char* s = getenv("EVENCLASS_EMU_TRACE");
        return s && *s && strcmp(s, "0") != 0;
    }();
    return on;
}
#define TRACE(...)                      \
    do {                                \
        if (tracing()) note(__VA_ARGS__); \
    } while (0)

namespace {

// Fault injection (defined below, "fault injection"): the kinds of counted calls.
enum FaultKind : unsigned { kFaultAlloc = 0, kFaultLaunch, kFaultSync, kFaultCopy, kFaultKinds };
constexpr unsigned bit(FaultKind k) { return 1u << k; }
CUresult fault_point(CUcontext ctx, unsigned kinds, const char* op);

double now_ms() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

#define LOCK std::lock_guard<std::recursive_mutex> lock_(st().mu)
#define CHECK_INIT                                   \
    do {                                             \
        if (!st().initialized) return CUDA_ERROR_NOT_INITIALIZED; \
    } while (0)

CUresult need_ctx(CUcontext* out) {
    if (!st().initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (!t_current) return CUDA_ERROR_INVALID_CONTEXT;
    *out = t_current;
    return t_current->sticky;
}

// The context a stream belongs to (the null stream: the current context).
CUresult stream_ctx(CUstream s, CUcontext* out) {
    if (!st().initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (s == nullptr || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD) return need_ctx(out);
    if (!st().streams.count(s)) return CUDA_ERROR_INVALID_HANDLE;
    *out = s->ctx;
    return s->ctx->sticky;
}

// The live allocation holding [p, p + n), or nullptr.
const Alloc* find_alloc(CUdeviceptr p, size_t n) {
    auto& a = st().allocs;
    auto it = a.upper_bound((uintptr_t)p);
    if (it == a.begin()) return nullptr;
    --it;
    const uintptr_t base = it->first;
    if ((uintptr_t)p < base || (uintptr_t)p - base > it->second.size || it->second.size - ((uintptr_t)p - base) < n)
        return nullptr;
    return &it->second;
}

CUresult check_range(const char* op, CUdeviceptr p, size_t n) {
    if (n == 0) return CUDA_SUCCESS;
    if (!find_alloc(p, n)) {
        note("%s: [0x%llx, +%zu) is not inside one live device allocation", op, (unsigned long long)p, n);
        return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

// Guard bytes around an allocation (builds without ASan). Returns false when overwritten.
bool guards_ok(uintptr_t base, const Alloc& a, const char** side) {
    if (EC_ASAN) return true;
    const unsigned char* lo = reinterpret_cast<const unsigned char*>(base) - kGuard;
    const unsigned char* hi = reinterpret_cast<const unsigned char*>(base) + a.size;
    for (size_t i = 0; i < kGuard; ++i) {
        if (lo[i] != kGuardByte) {
            *side = "before its start";
            return false;
        }
        if (hi[i] != kGuardByte) {
            *side = "past its end";
            return false;
        }
    }
    return true;
}

CUresult alloc(CUdeviceptr* dptr, size_t bytes, const char* op) {
    CUcontext ctx;
    if (CUresult r = need_ctx(&ctx)) return r;
    if (!dptr) return CUDA_ERROR_INVALID_VALUE;
    if (bytes == 0) return CUDA_ERROR_INVALID_VALUE;  // as the real driver
    if (CUresult r = fault_point(ctx, bit(kFaultAlloc), op)) return r;
    if (bytes > kTotalMem - st().allocated) return CUDA_ERROR_OUT_OF_MEMORY;
    void* block = nullptr;
    const size_t extra = EC_ASAN ? 0 : 2 * kGuard;
    if (posix_memalign(&block, 256, bytes + extra) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
    unsigned char* user = static_cast<unsigned char*>(block) + (EC_ASAN ? 0 : kGuard);
    if (!EC_ASAN) {
        memset(user - kGuard, kGuardByte, kGuard);
        memset(user + bytes, kGuardByte, kGuard);
    }
    memset(user, ec_emu::kFreshByte, bytes);  // fresh device memory is garbage, not zeros
    ec_emu::init_check_alloc((uintptr_t)user, bytes);
    st().allocs[(uintptr_t)user] = Alloc{bytes, ctx, block};
    st().allocated += bytes;
    ++g_counters.allocs;
    *dptr = (CUdeviceptr)(uintptr_t)user;
    TRACE("trace: %s %zu bytes -> 0x%llx", op, bytes, (unsigned long long)*dptr);
    return CUDA_SUCCESS;
}

CUresult release(CUdeviceptr p, const char* op) {
    if (!st().initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (p == 0) return CUDA_SUCCESS;
    auto it = st().allocs.find((uintptr_t)p);
    if (it == st().allocs.end()) {
        note("%s: 0x%llx is not the start of a live device allocation", op, (unsigned long long)p);
        return CUDA_ERROR_INVALID_VALUE;
    }
    const char* side = nullptr;
    CUresult r = CUDA_SUCCESS;
    if (!guards_ok(it->first, it->second, &side)) {
        note("%s: device buffer 0x%llx (%zu bytes) was written %s (out-of-bounds write)", op, (unsigned long long)p,
             it->second.size, side);
        it->second.ctx->sticky = CUDA_ERROR_ILLEGAL_ADDRESS;
        r = CUDA_ERROR_ILLEGAL_ADDRESS;
    }
    st().allocated -= it->second.size;
    ec_emu::init_check_free(it->first);
    free(it->second.block);
    TRACE("trace: %s 0x%llx (%zu bytes)", op, (unsigned long long)p, it->second.size);
    st().allocs.erase(it);
    ++g_counters.frees;
    return r;
}

// After a launch: every guard intact, else the context faults as on an illegal address.
void check_all_guards(CUcontext ctx, const char* kernel) {
    if (EC_ASAN) return;
    for (auto& [base, a] : st().allocs) {
        const char* side = nullptr;
        if (!guards_ok(base, a, &side)) {
            note("kernel %s wrote device buffer 0x%llx (%zu bytes) %s (out-of-bounds write); the context is now "
                 "faulted (CUDA_ERROR_ILLEGAL_ADDRESS)",
                 kernel, (unsigned long long)base, a.size, side);
            ctx->sticky = CUDA_ERROR_ILLEGAL_ADDRESS;
            // Restore the guards so the report is not repeated for every later launch.
            memset(reinterpret_cast<unsigned char*>(base) - kGuard, kGuardByte, kGuard);
            memset(reinterpret_cast<unsigned char*>(base) + a.size, kGuardByte, kGuard);
            return;
        }
    }
}

// Tokens made of [A-Za-z0-9_] in an image: a fatbin's ELF string tables and PTX name every entry.
std::unordered_set<std::string> tokens(const unsigned char* p, size_t n) {
    std::unordered_set<std::string> out;
    size_t i = 0;
    auto ident = [](unsigned char c) { return c == '_' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); };
    while (i < n) {
        while (i < n && !ident(p[i])) ++i;
        const size_t s = i;
        while (i < n && ident(p[i])) ++i;
        if (i - s >= 3 && i - s < 256) out.emplace(reinterpret_cast<const char*>(p + s), i - s);
    }
    return out;
}

// Length of a module image: a fatbin (its header says), else NUL-terminated text (PTX).
size_t image_size(const void* image) {
    const unsigned char* p = static_cast<const unsigned char*>(image);
    uint32_t magic;
    memcpy(&magic, p, 4);
    if (magic == 0xBA55ED50u) {  // fatbin: u32 magic, u16 version, u16 header size, u64 payload size
        uint16_t header;
        uint64_t payload;
        memcpy(&header, p + 6, 2);
        memcpy(&payload, p + 8, 8);
        return header + payload;
    }
    if (magic == 0x464C457Fu) return 0;  // a bare cubin (ELF): not produced by this crate
    return strlen(reinterpret_cast<const char*>(p));
}

const char* error_name(CUresult r) {
    switch (r) {
#define E(x) \
    case x: return #x;
        E(CUDA_SUCCESS) E(CUDA_ERROR_INVALID_VALUE) E(CUDA_ERROR_OUT_OF_MEMORY) E(CUDA_ERROR_NOT_INITIALIZED)
        E(CUDA_ERROR_DEINITIALIZED) E(CUDA_ERROR_NO_DEVICE) E(CUDA_ERROR_INVALID_DEVICE) E(CUDA_ERROR_INVALID_IMAGE)
        E(CUDA_ERROR_INVALID_CONTEXT) E(CUDA_ERROR_NO_BINARY_FOR_GPU) E(CUDA_ERROR_INVALID_HANDLE)
        E(CUDA_ERROR_NOT_FOUND) E(CUDA_ERROR_NOT_READY) E(CUDA_ERROR_ILLEGAL_ADDRESS) E(CUDA_ERROR_MISALIGNED_ADDRESS)
        E(CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES) E(CUDA_ERROR_LAUNCH_TIMEOUT) E(CUDA_ERROR_ILLEGAL_INSTRUCTION)
        E(CUDA_ERROR_LAUNCH_FAILED) E(CUDA_ERROR_NOT_SUPPORTED) E(CUDA_ERROR_UNKNOWN)
        E(CUDA_ERROR_UNSUPPORTED_PTX_VERSION) E(CUDA_ERROR_INVALID_PTX) E(CUDA_ERROR_DEVICE_UNAVAILABLE)
#undef E
    default: return nullptr;
    }
}

const char* error_string(CUresult r) {
    switch (r) {
    case CUDA_SUCCESS: return "no error";
    case CUDA_ERROR_INVALID_VALUE: return "invalid argument";
    case CUDA_ERROR_OUT_OF_MEMORY: return "out of memory";
    case CUDA_ERROR_NOT_INITIALIZED: return "initialization error";
    case CUDA_ERROR_DEINITIALIZED: return "driver shutting down";
    case CUDA_ERROR_NO_DEVICE: return "no CUDA-capable device is detected";
    case CUDA_ERROR_INVALID_DEVICE: return "invalid device ordinal";
    case CUDA_ERROR_INVALID_IMAGE: return "device kernel image is invalid";
    case CUDA_ERROR_INVALID_CONTEXT: return "invalid device context";
    case CUDA_ERROR_NO_BINARY_FOR_GPU: return "no kernel image is available for execution on the device";
    case CUDA_ERROR_INVALID_HANDLE: return "invalid resource handle";
    case CUDA_ERROR_NOT_FOUND: return "named symbol not found";
    case CUDA_ERROR_NOT_READY: return "device not ready";
    case CUDA_ERROR_ILLEGAL_ADDRESS: return "an illegal memory access was encountered";
    case CUDA_ERROR_MISALIGNED_ADDRESS: return "misaligned address";
    case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: return "too many resources requested for launch";
    case CUDA_ERROR_LAUNCH_TIMEOUT: return "the launch timed out and was terminated";
    case CUDA_ERROR_ILLEGAL_INSTRUCTION: return "an illegal instruction was encountered";
    case CUDA_ERROR_LAUNCH_FAILED: return "unspecified launch failure";
    case CUDA_ERROR_NOT_SUPPORTED: return "operation not supported";
    case CUDA_ERROR_UNKNOWN: return "unknown error";
    case CUDA_ERROR_UNSUPPORTED_PTX_VERSION: return "the provided PTX was compiled with an unsupported toolchain.";
    case CUDA_ERROR_INVALID_PTX: return "a PTX JIT compilation failed";
    case CUDA_ERROR_DEVICE_UNAVAILABLE: return "CUDA-capable device(s) is/are busy or unavailable";
    default: return nullptr;
    }
}

// Registers per block a launch of `threads` threads needs (per-warp allocation granularity).
long regs_needed(int regs, int threads) {
    const long per_warp = ((long)regs * 32 + kRegAllocUnit - 1) / kRegAllocUnit * kRegAllocUnit;
    return per_warp * ((threads + 31) / 32);
}

int func_max_threads(const ec_emu::EntryInfo& e) {
    int t = kMaxThreadsPerBlock;
    if (e.max_threads > 0 && e.max_threads < t) t = e.max_threads;
    while (t > 32 && regs_needed(e.registers, t) > kRegsPerBlock) t -= 32;
    return t;
}

}  // namespace


// ---- fault injection (EVENCLASS_EMU_FAULT=kind:N) ---------------------------------------------------------
// Test-only: makes the N-th call of one kind fail the way a real driver fails it, so that tests can
// check what the host code does with each failure (tests/gpu_faults.rs).
//
//   alloc:N   the N-th allocation returns CUDA_ERROR_OUT_OF_MEMORY (not sticky: the context works on)
//   launch:N  the N-th launch returns CUDA_ERROR_LAUNCH_FAILED and the kernel does not run; sticky,
//             as after a kernel exception on hardware: every later call on the context fails
//   sync:N    the N-th host synchronization (stream, context or event synchronize, or a
//             device-to-host copy the host waits for) reports CUDA_ERROR_ILLEGAL_ADDRESS, sticky
//   copy:N    the N-th copy (host to device, device to host, device to device) returns
//             CUDA_ERROR_UNKNOWN and copies nothing (not sticky)
//   lost:N    from the N-th call on, every call on every context returns
//             CUDA_ERROR_DEVICE_UNAVAILABLE (the device fell off the bus)
//
// "Calls" (what lost:N counts) are allocations, launches, copies, memsets and host
// synchronizations. Counts run from the process start (or evenclass_emu_set_fault) and are
// independent of evenclass_emu_reset_counters; evenclass_emu_fault_counts() reads them, and
// EVENCLASS_EMU_FAULT_COUNTS=1 prints them on stderr at process exit (how a test finds the call
// counts of a clean run of another process). Frees are not counted and keep working after any
// fault, so memory is still released.
namespace {

const char* const kFaultNames[] = {"alloc", "launch", "sync", "copy", "lost"};  // lost = kFaultKinds

struct Fault {
    int kind = -1;  // a FaultKind, kFaultKinds for lost, -1 for none
    uint64_t n = 0;
    std::string spec;
};

// Parses "kind:N" (N >= 1). Returns false, with the reason in *why, when it is not one.
bool parse_fault(const char* spec, Fault* out, std::string* why) {
    const char* colon = strchr(spec, ':');
    if (!colon) {
        *why = "no ':'";
        return false;
    }
    const std::string kind(spec, colon - spec);
    int k = -1;
    for (int i = 0; i <= (int)kFaultKinds; ++i)
        if (kind == kFaultNames[i]) k = i;
    if (k < 0) {
        *why = "unknown kind '" + kind + "'";
        return false;
    }
    const char* digits = colon + 1;
    if (!*digits || strspn(digits, "0123456789") != strlen(digits) || strlen(digits) > 18) {
        *why = "N is not a whole number";
        return false;
    }
    const uint64_t n = strtoull(digits, nullptr, 10);
    if (n == 0) {
        *why = "N counts from 1";
        return false;
    }
    *out = Fault{k, n, spec};
    return true;
}

Fault& fault() {
    static Fault* f = new Fault;
    return *f;
}
uint64_t g_fault_counts[kFaultKinds + 1];  // per kind; the last: every call (what lost counts)
bool g_device_lost = false;

const char* const kFaultUsage =
    "expected KIND:N, KIND one of alloc, launch, sync, copy, lost and N >= 1 (e.g. sync:3)";

// At load: a bad EVENCLASS_EMU_FAULT must not silently run without a fault.
__attribute__((constructor)) void fault_from_env() {
    const char* s = getenv("EVENCLASS_EMU_FAULT");
    if (!s || !*s) return;
    std::string why;
    if (!parse_fault(s, &fault(), &why)) {
        fprintf(stderr, "[evenclass-emu] EVENCLASS_EMU_FAULT=%s is invalid (%s): %s\n", s, why.c_str(), kFaultUsage);
        _exit(2);
    }
}

__attribute__((destructor)) void fault_counts_at_exit() {
    const char* s = getenv("EVENCLASS_EMU_FAULT_COUNTS");
    if (!s || !*s || strcmp(s, "0") == 0) return;
    fprintf(stderr, "[evenclass-emu] fault counts: alloc %llu launch %llu sync %llu copy %llu calls %llu\n",
            (unsigned long long)g_fault_counts[0], (unsigned long long)g_fault_counts[1],
            (unsigned long long)g_fault_counts[2], (unsigned long long)g_fault_counts[3],
            (unsigned long long)g_fault_counts[4]);
}

const char* ordinal_suffix(uint64_t n) {
    if (n % 100 >= 11 && n % 100 <= 13) return "th";
    return n % 10 == 1 ? "st" : n % 10 == 2 ? "nd" : n % 10 == 3 ? "rd" : "th";
}

// One counted call of the given kinds (a bit set: a device-to-host copy the host waits for is a
// copy and a synchronization) on `ctx`. Returns the injected error, or CUDA_SUCCESS.
CUresult fault_point(CUcontext ctx, unsigned kinds, const char* op) {
    const Fault& f = fault();
    const uint64_t call = ++g_fault_counts[kFaultKinds];
    uint64_t nth[kFaultKinds] = {};
    for (unsigned k = 0; k < kFaultKinds; ++k)
        if (kinds & (1u << k)) nth[k] = ++g_fault_counts[k];
    if (f.kind < 0) return CUDA_SUCCESS;
    if (f.kind == (int)kFaultKinds) {
        if (call < f.n) return CUDA_SUCCESS;
        if (!g_device_lost) {
            g_device_lost = true;
            fprintf(stderr,
                    "[evenclass-emu] injected fault (EVENCLASS_EMU_FAULT=%s): the device is lost at call %llu (%s); "
                    "every later call returns CUDA_ERROR_DEVICE_UNAVAILABLE\n",
                    f.spec.c_str(), (unsigned long long)call, op);
            for (CUcontext c : st().primary) c->sticky = CUDA_ERROR_DEVICE_UNAVAILABLE;
        }
        return CUDA_ERROR_DEVICE_UNAVAILABLE;
    }
    if (!(kinds & (1u << f.kind)) || nth[f.kind] != f.n) return CUDA_SUCCESS;
    CUresult r = CUDA_SUCCESS;
    bool sticky = false;
    switch (f.kind) {
    case kFaultAlloc: r = CUDA_ERROR_OUT_OF_MEMORY; break;
    case kFaultLaunch: r = CUDA_ERROR_LAUNCH_FAILED, sticky = true; break;
    case kFaultSync: r = CUDA_ERROR_ILLEGAL_ADDRESS, sticky = true; break;
    case kFaultCopy: r = CUDA_ERROR_UNKNOWN; break;
    }
    if (sticky) ctx->sticky = r;
    fprintf(stderr, "[evenclass-emu] injected fault (EVENCLASS_EMU_FAULT=%s): the %llu%s %s (%s) returns %s%s\n",
            f.spec.c_str(), (unsigned long long)f.n, ordinal_suffix(f.n), kFaultNames[f.kind], op, error_name(r),
            sticky ? "; the context is now faulted" : "");
    return r;
}

}  // namespace

extern "C" {
// Test-only: replaces the fault (as EVENCLASS_EMU_FAULT would; nullptr or "" for none) and restarts
// the per-kind counts. Returns 0, or -1 with a message on stderr for a bad spec (nothing changes).
int evenclass_emu_set_fault(const char* spec) {
    LOCK;
    Fault f;
    if (spec && *spec) {
        std::string why;
        if (!parse_fault(spec, &f, &why)) {
            fprintf(stderr, "[evenclass-emu] fault '%s' is invalid (%s): %s\n", spec, why.c_str(), kFaultUsage);
            return -1;
        }
    }
    fault() = f;
    memset(g_fault_counts, 0, sizeof g_fault_counts);
    return 0;
}

// The per-kind counts: alloc, launch, sync, copy, calls. Writes at most `n` of them; returns 5.
size_t evenclass_emu_fault_counts(uint64_t* out, size_t n) {
    LOCK;
    const size_t all = sizeof g_fault_counts / sizeof g_fault_counts[0];
    for (size_t i = 0; i < n && i < all; ++i) out[i] = g_fault_counts[i];
    return all;
}
}  // extern "C"

extern "C" {

// ---- initialization, version, errors -----------------------------------------------------------------
CUresult cuInit(unsigned int flags) {
    LOCK;
    if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
    if (!st().initialized) {
        st().initialized = true;
        if (const char* s = getenv("EVENCLASS_EMU_DEVICES")) {
            const int n = atoi(s);
            st().devices = n < 1 ? 1 : n > 8 ? 8 : n;
        }
        for (int d = 0; d < st().devices; ++d) st().primary.push_back(new CUctx_st{d, 0, CUDA_SUCCESS});
        size_t kernels = 0;
        for (auto& m : registry()) kernels += m.count;
        note("emulated CUDA driver: %d device(s), %zu modules, %zu kernels, schedule seed %llu%s, %s%s%s",
             st().devices, registry().size(), kernels, (unsigned long long)ec_emu::schedule_seed(),
             EC_ASAN ? ", AddressSanitizer" : ", guard bytes", ec_emu::smem_guard_summary().c_str(),
             ec_emu::init_check_enabled() ? ", init check" : "",
             g_dry_run ? ", DRY RUN (launches are checked and counted, kernels do not execute)" : "");
    }
    return CUDA_SUCCESS;
}

CUresult cuDriverGetVersion(int* v) {
    if (!v) return CUDA_ERROR_INVALID_VALUE;
    *v = ec_emu::emulated_driver_version();
    return CUDA_SUCCESS;
}

CUresult cuGetErrorString(CUresult r, const char** s) {
    if (!s) return CUDA_ERROR_INVALID_VALUE;
    *s = error_string(r);
    return *s ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuGetErrorName(CUresult r, const char** s) {
    if (!s) return CUDA_ERROR_INVALID_VALUE;
    *s = error_name(r);
    return *s ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

// ---- devices -----------------------------------------------------------------------------------------
CUresult cuDeviceGetCount(int* n) {
    LOCK;
    CHECK_INIT;
    if (!n) return CUDA_ERROR_INVALID_VALUE;
    *n = st().devices;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    LOCK;
    CHECK_INIT;
    if (!d) return CUDA_ERROR_INVALID_VALUE;
    if (ordinal < 0 || ordinal >= st().devices) return CUDA_ERROR_INVALID_DEVICE;
    *d = ordinal;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetName(char* name, int len, CUdevice d) {
    LOCK;
    CHECK_INIT;
    if (!name || len <= 0) return CUDA_ERROR_INVALID_VALUE;
    if (d < 0 || d >= st().devices) return CUDA_ERROR_INVALID_DEVICE;
    snprintf(name, (size_t)len, "evenclass emulated CUDA device (CPU, sm_90 limits)");
    return CUDA_SUCCESS;
}

CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice d) {
    LOCK;
    CHECK_INIT;
    if (!bytes) return CUDA_ERROR_INVALID_VALUE;
    if (d < 0 || d >= st().devices) return CUDA_ERROR_INVALID_DEVICE;
    *bytes = kTotalMem;
    return CUDA_SUCCESS;
}

static CUresult device_uuid(CUuuid* u, CUdevice d) {
    LOCK;
    CHECK_INIT;
    if (!u) return CUDA_ERROR_INVALID_VALUE;
    if (d < 0 || d >= st().devices) return CUDA_ERROR_INVALID_DEVICE;
    memset(u, 0, sizeof *u);
    memcpy(u->bytes, "evenclass-emu", 13);
    u->bytes[15] = (char)d;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetUuid_v2(CUuuid* u, CUdevice d) { return device_uuid(u, d); }
#undef cuDeviceGetUuid
CUresult cuDeviceGetUuid(CUuuid* u, CUdevice d) { return device_uuid(u, d); }

CUresult cuDeviceGetAttribute(int* v, CUdevice_attribute a, CUdevice d) {
    LOCK;
    CHECK_INIT;
    if (!v) return CUDA_ERROR_INVALID_VALUE;
    if (d < 0 || d >= st().devices) return CUDA_ERROR_INVALID_DEVICE;
    switch (a) {
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *v = kMaxThreadsPerBlock; break;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X: *v = 1024; break;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y: *v = 1024; break;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z: *v = 64; break;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X: *v = 2147483647; break;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y: *v = 65535; break;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z: *v = 65535; break;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: *v = kSmemDefault; break;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: *v = kSmemOptin; break;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR: *v = 228 * 1024; break;
    case CU_DEVICE_ATTRIBUTE_RESERVED_SHARED_MEMORY_PER_BLOCK: *v = 1024; break;
    case CU_DEVICE_ATTRIBUTE_TOTAL_CONSTANT_MEMORY: *v = 65536; break;
    case CU_DEVICE_ATTRIBUTE_WARP_SIZE: *v = 32; break;
    case CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK: *v = kRegsPerBlock; break;
    case CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR: *v = 65536; break;
    case CU_DEVICE_ATTRIBUTE_CLOCK_RATE: *v = 1980000; break;
    case CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE: *v = 2619000; break;
    case CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH: *v = 5120; break;
    case CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE: *v = 50 * 1024 * 1024; break;
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *v = kSms; break;
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR: *v = 2048; break;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR: *v = 32; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *v = 9; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *v = 0; break;
    case CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED: *v = 1; break;
    case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: *v = 1; break;
    case CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS: *v = 1; break;
    case CU_DEVICE_ATTRIBUTE_ASYNC_ENGINE_COUNT: *v = 3; break;
    case CU_DEVICE_ATTRIBUTE_GPU_OVERLAP: *v = 1; break;
    case CU_DEVICE_ATTRIBUTE_INTEGRATED: *v = 0; break;
    case CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY: *v = 1; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_MODE: *v = CU_COMPUTEMODE_DEFAULT; break;
    case CU_DEVICE_ATTRIBUTE_ECC_ENABLED: *v = 1; break;
    case CU_DEVICE_ATTRIBUTE_KERNEL_EXEC_TIMEOUT: *v = 0; break;
    case CU_DEVICE_ATTRIBUTE_TCC_DRIVER: *v = 0; break;
    case CU_DEVICE_ATTRIBUTE_PCI_BUS_ID: *v = d + 1; break;
    case CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID: *v = 0; break;
    case CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID: *v = 0; break;
    case CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY: *v = 1; break;
    case CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS: *v = 1; break;
    case CU_DEVICE_ATTRIBUTE_STREAM_PRIORITIES_SUPPORTED: *v = 1; break;
    case CU_DEVICE_ATTRIBUTE_GLOBAL_L1_CACHE_SUPPORTED: *v = 1; break;
    case CU_DEVICE_ATTRIBUTE_LOCAL_L1_CACHE_SUPPORTED: *v = 1; break;
    case CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH: *v = 1; break;
    case CU_DEVICE_ATTRIBUTE_CLUSTER_LAUNCH: *v = 1; break;
    case CU_DEVICE_ATTRIBUTE_MULTI_GPU_BOARD: *v = 0; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_PREEMPTION_SUPPORTED: *v = 1; break;
    case CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT: *v = 512; break;
    case CU_DEVICE_ATTRIBUTE_MAX_PITCH: *v = 2147483647; break;
    default:
        note("cuDeviceGetAttribute: attribute %d is not emulated (add it to tests/emulator/driver.cpp)", (int)a);
        return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

// ---- contexts ---------------------------------------------------------------------------------------
CUresult cuDevicePrimaryCtxRetain(CUcontext* c, CUdevice d) {
    LOCK;
    CHECK_INIT;
    if (!c) return CUDA_ERROR_INVALID_VALUE;
    if (d < 0 || d >= st().devices) return CUDA_ERROR_INVALID_DEVICE;
    ++st().primary[d]->refs;
    *c = st().primary[d];
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) {
    LOCK;
    CHECK_INIT;
    if (d < 0 || d >= st().devices) return CUDA_ERROR_INVALID_DEVICE;
    if (st().primary[d]->refs > 0) --st().primary[d]->refs;
    return CUDA_SUCCESS;
}

CUresult cuCtxSetCurrent(CUcontext c) {
    LOCK;
    CHECK_INIT;
    if (c) {
        bool known = false;
        for (auto* p : st().primary) known |= p == c;
        if (!known) return CUDA_ERROR_INVALID_CONTEXT;
    }
    t_current = c;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetCurrent(CUcontext* c) {
    LOCK;
    CHECK_INIT;
    if (!c) return CUDA_ERROR_INVALID_VALUE;
    *c = t_current;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetDevice(CUdevice* d) {
    LOCK;
    CHECK_INIT;
    if (!t_current) return CUDA_ERROR_INVALID_CONTEXT;
    if (!d) return CUDA_ERROR_INVALID_VALUE;
    *d = t_current->device;
    return CUDA_SUCCESS;
}

CUresult cuCtxSynchronize(void) {
    LOCK;
    CUcontext ctx;
    if (!st().initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (!t_current) return CUDA_ERROR_INVALID_CONTEXT;
    ctx = t_current;
    ++g_counters.ctx_syncs;
    ++g_counters.host_syncs;
    TRACE("trace: cuCtxSynchronize");
    if (ctx->sticky) return ctx->sticky;
    return fault_point(ctx, bit(kFaultSync), "cuCtxSynchronize");
}

CUresult cuCtxGetStreamPriorityRange(int* least, int* greatest) {
    if (least) *least = 0;
    if (greatest) *greatest = -5;
    return CUDA_SUCCESS;
}

// ---- streams ----------------------------------------------------------------------------------------
CUresult cuStreamCreate(CUstream* s, unsigned int flags) {
    LOCK;
    CUcontext ctx;
    if (CUresult r = need_ctx(&ctx)) return r;
    if (!s || flags > CU_STREAM_NON_BLOCKING) return CUDA_ERROR_INVALID_VALUE;
    *s = new CUstream_st{ctx};
    st().streams.insert(*s);
    return CUDA_SUCCESS;
}

CUresult cuStreamCreateWithPriority(CUstream* s, unsigned int flags, int priority) {
    (void)priority;
    return cuStreamCreate(s, flags);
}

CUresult cuStreamDestroy_v2(CUstream s) {
    LOCK;
    CHECK_INIT;
    if (!st().streams.erase(s)) return CUDA_ERROR_INVALID_HANDLE;
    delete s;
    return CUDA_SUCCESS;
}

CUresult cuStreamSynchronize(CUstream s) {
    LOCK;
    CUcontext ctx;
    CUresult r = stream_ctx(s, &ctx);
    if (r == CUDA_ERROR_INVALID_HANDLE || r == CUDA_ERROR_NOT_INITIALIZED || r == CUDA_ERROR_INVALID_CONTEXT) return r;
    ++g_counters.stream_syncs;
    ++g_counters.host_syncs;
    TRACE("trace: cuStreamSynchronize");
    if (r) return r;
    return fault_point(ctx, bit(kFaultSync), "cuStreamSynchronize");
}

CUresult cuStreamQuery(CUstream s) {
    LOCK;
    CUcontext ctx;
    return stream_ctx(s, &ctx);
}

CUresult cuStreamWaitEvent(CUstream s, CUevent e, unsigned int flags) {
    LOCK;
    CUcontext ctx;
    if (CUresult r = stream_ctx(s, &ctx)) return r;
    if (!st().events.count(e)) return CUDA_ERROR_INVALID_HANDLE;
    (void)flags;
    ++g_counters.stream_waits;
    return CUDA_SUCCESS;  // everything already ran, in order
}

CUresult cuLaunchHostFunc(CUstream s, CUhostFn fn, void* data) {
    LOCK;
    CUcontext ctx;
    if (CUresult r = stream_ctx(s, &ctx)) return r;
    if (!fn) return CUDA_ERROR_INVALID_VALUE;
    fn(data);
    return CUDA_SUCCESS;
}

// ---- events -----------------------------------------------------------------------------------------
CUresult cuEventCreate(CUevent* e, unsigned int flags) {
    LOCK;
    CUcontext ctx;
    if (CUresult r = need_ctx(&ctx)) return r;
    if (!e) return CUDA_ERROR_INVALID_VALUE;
    *e = new CUevent_st{ctx, flags, false, 0.0};
    st().events.insert(*e);
    return CUDA_SUCCESS;
}

CUresult cuEventDestroy_v2(CUevent e) {
    LOCK;
    CHECK_INIT;
    if (!st().events.erase(e)) return CUDA_ERROR_INVALID_HANDLE;
    delete e;
    return CUDA_SUCCESS;
}

CUresult cuEventRecord(CUevent e, CUstream s) {
    LOCK;
    CUcontext ctx;
    if (CUresult r = stream_ctx(s, &ctx)) return r;
    if (!st().events.count(e)) return CUDA_ERROR_INVALID_HANDLE;
    if (e->ctx != ctx) return CUDA_ERROR_INVALID_HANDLE;
    e->recorded = true;
    e->ms = now_ms();
    ++g_counters.events_recorded;
    return CUDA_SUCCESS;
}

CUresult cuEventQuery(CUevent e) {
    LOCK;
    CHECK_INIT;
    if (!st().events.count(e)) return CUDA_ERROR_INVALID_HANDLE;
    return e->ctx->sticky;
}

CUresult cuEventSynchronize(CUevent e) {
    LOCK;
    CHECK_INIT;
    if (!st().events.count(e)) return CUDA_ERROR_INVALID_HANDLE;
    ++g_counters.event_syncs;
    ++g_counters.host_syncs;
    TRACE("trace: cuEventSynchronize");
    if (e->ctx->sticky) return e->ctx->sticky;
    return fault_point(e->ctx, bit(kFaultSync), "cuEventSynchronize");
}

static CUresult elapsed(float* ms, CUevent a, CUevent b) {
    LOCK;
    CHECK_INIT;
    if (!ms) return CUDA_ERROR_INVALID_VALUE;
    if (!st().events.count(a) || !st().events.count(b)) return CUDA_ERROR_INVALID_HANDLE;
    if ((a->flags | b->flags) & CU_EVENT_DISABLE_TIMING) return CUDA_ERROR_INVALID_HANDLE;
    if (!a->recorded || !b->recorded) return CUDA_ERROR_INVALID_HANDLE;
    *ms = (float)(b->ms - a->ms);
    return a->ctx->sticky;
}
CUresult cuEventElapsedTime_v2(float* ms, CUevent a, CUevent b) { return elapsed(ms, a, b); }
#undef cuEventElapsedTime
CUresult cuEventElapsedTime(float* ms, CUevent a, CUevent b) { return elapsed(ms, a, b); }

// ---- memory -----------------------------------------------------------------------------------------
CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    LOCK;
    return alloc(p, bytes, "cuMemAlloc");
}

CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, CUstream s) {
    LOCK;
    CUcontext ctx;
    if (CUresult r = stream_ctx(s, &ctx)) return r;
    return alloc(p, bytes, "cuMemAllocAsync");
}

CUresult cuMemFree_v2(CUdeviceptr p) {
    LOCK;
    return release(p, "cuMemFree");
}

CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s) {
    LOCK;
    CUcontext ctx;
    if (CUresult r = stream_ctx(s, &ctx); r == CUDA_ERROR_INVALID_HANDLE) return r;
    return release(p, "cuMemFreeAsync");
}

CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    LOCK;
    CUcontext ctx;
    if (CUresult r = need_ctx(&ctx)) return r;
    if (free_bytes) *free_bytes = kTotalMem - st().allocated;
    if (total) *total = kTotalMem;
    return CUDA_SUCCESS;
}

static CUresult htod(CUdeviceptr dst, const void* src, size_t n, CUstream s, const char* op) {
    LOCK;
    CUcontext ctx;
    if (CUresult r = stream_ctx(s, &ctx)) return r;
    if (n && !src) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = check_range(op, dst, n)) return r;
    if (CUresult r = fault_point(ctx, bit(kFaultCopy), op)) return r;
    if (n) memcpy(reinterpret_cast<void*>(dst), src, n);
    ec_emu::init_check_written(dst, n);
    ++g_counters.htod_copies;
    g_counters.htod_bytes += n;
    TRACE("trace: %s %zu bytes", op, n);
    return CUDA_SUCCESS;
}

static CUresult dtoh(void* dst, CUdeviceptr src, size_t n, CUstream s, const char* op, bool sync) {
    LOCK;
    CUcontext ctx;
    if (CUresult r = stream_ctx(s, &ctx)) return r;
    if (n && !dst) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = check_range(op, src, n)) return r;
    // Into pageable memory even the asynchronous copy returns only once it is done, so the host
    // waits for everything queued before it.
    bool pinned = false;
    auto it = st().pinned.upper_bound((uintptr_t)dst);
    if (it != st().pinned.begin()) {
        --it;
        pinned = (uintptr_t)dst - it->first < it->second;
    }
    if (CUresult r = fault_point(ctx, bit(kFaultCopy) | (sync || !pinned ? bit(kFaultSync) : 0u), op)) return r;
    // A dry run executes no kernel: nothing it "computed" was written.
    const long long unwritten = g_dry_run ? -1 : ec_emu::init_check_first_unwritten(src, n);
    if (unwritten >= 0) {
        note("%s: byte %lld of the %zu bytes copied from device memory 0x%llx was never written (no copy, memset "
             "or kernel store since its allocation): the host would read garbage [EVENCLASS_EMU_INIT_CHECK]",
             op, unwritten, n, (unsigned long long)src);
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (n) memcpy(dst, reinterpret_cast<const void*>(src), n);
    ++g_counters.dtoh_copies;
    g_counters.dtoh_bytes += n;
    if (sync || !pinned) {
        ++g_counters.dtoh_waits;
        ++g_counters.host_syncs;
    }
    TRACE("trace: %s %zu bytes%s", op, n, sync || !pinned ? " (the host waits)" : "");
    return CUDA_SUCCESS;
}

static CUresult dtod(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s, const char* op) {
    LOCK;
    CUcontext ctx;
    if (CUresult r = stream_ctx(s, &ctx)) return r;
    if (CUresult r = check_range(op, src, n)) return r;
    if (CUresult r = check_range(op, dst, n)) return r;
    if (CUresult r = fault_point(ctx, bit(kFaultCopy), op)) return r;
    if (n) memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), n);
    ec_emu::init_check_copy(dst, src, n);
    ++g_counters.dtod_copies;
    TRACE("trace: %s %zu bytes", op, n);
    return CUDA_SUCCESS;
}

CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) { return htod(dst, src, n, nullptr, "cuMemcpyHtoD"); }
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, CUstream s) {
    return htod(dst, src, n, s, "cuMemcpyHtoDAsync");
}
CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) { return dtoh(dst, src, n, nullptr, "cuMemcpyDtoH", true); }
CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, CUstream s) {
    return dtoh(dst, src, n, s, "cuMemcpyDtoHAsync", false);
}
CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) { return dtod(dst, src, n, nullptr, "cuMemcpyDtoD"); }
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) {
    return dtod(dst, src, n, s, "cuMemcpyDtoDAsync");
}

static CUresult memset_n(CUdeviceptr dst, unsigned v, size_t count, size_t elem, CUstream s, const char* op) {
    LOCK;
    CUcontext ctx;
    if (CUresult r = stream_ctx(s, &ctx)) return r;
    if (count > SIZE_MAX / elem) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = check_range(op, dst, count * elem)) return r;
    if (elem > 1 && dst % elem) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = fault_point(ctx, 0, op)) return r;
    unsigned char* p = reinterpret_cast<unsigned char*>(dst);
    if (elem == 1) memset(p, (int)(v & 0xFF), count);
    else
        for (size_t i = 0; i < count; ++i) memcpy(p + i * elem, &v, elem);
    ec_emu::init_check_written(dst, count * elem);
    ++g_counters.memsets;
    TRACE("trace: %s %zu bytes", op, count * elem);
    return CUDA_SUCCESS;
}

CUresult cuMemsetD8_v2(CUdeviceptr d, unsigned char v, size_t n) { return memset_n(d, v, n, 1, nullptr, "cuMemsetD8"); }
CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, CUstream s) {
    return memset_n(d, v, n, 1, s, "cuMemsetD8Async");
}
CUresult cuMemsetD16_v2(CUdeviceptr d, unsigned short v, size_t n) { return memset_n(d, v, n, 2, nullptr, "cuMemsetD16"); }
CUresult cuMemsetD16Async(CUdeviceptr d, unsigned short v, size_t n, CUstream s) {
    return memset_n(d, v, n, 2, s, "cuMemsetD16Async");
}
CUresult cuMemsetD32_v2(CUdeviceptr d, unsigned int v, size_t n) { return memset_n(d, v, n, 4, nullptr, "cuMemsetD32"); }
CUresult cuMemsetD32Async(CUdeviceptr d, unsigned int v, size_t n, CUstream s) {
    return memset_n(d, v, n, 4, s, "cuMemsetD32Async");
}

// Pinned host memory is ordinary host memory here.
CUresult cuMemHostAlloc(void** p, size_t bytes, unsigned int flags) {
    LOCK;
    CUcontext ctx;
    if (CUresult r = need_ctx(&ctx)) return r;
    (void)flags;
    if (!p || bytes == 0) return CUDA_ERROR_INVALID_VALUE;
    *p = malloc(bytes);
    if (!*p) return CUDA_ERROR_OUT_OF_MEMORY;
    st().pinned[(uintptr_t)*p] = bytes;
    return CUDA_SUCCESS;
}
CUresult cuMemAllocHost_v2(void** p, size_t bytes) { return cuMemHostAlloc(p, bytes, 0); }
CUresult cuMemFreeHost(void* p) {
    LOCK;
    if (!st().pinned.erase((uintptr_t)p)) return CUDA_ERROR_INVALID_VALUE;
    free(p);
    return CUDA_SUCCESS;
}

// ---- modules and functions --------------------------------------------------------------------------
CUresult cuModuleLoadData(CUmodule* out, const void* image) {
    LOCK;
    CUcontext ctx;
    if (CUresult r = need_ctx(&ctx)) return r;
    if (!out || !image) return CUDA_ERROR_INVALID_VALUE;
    const size_t n = image_size(image);
    if (n == 0) {
        note("cuModuleLoadData: the image is neither a fatbin nor PTX text");
        return CUDA_ERROR_INVALID_IMAGE;
    }
    std::string why;
    if (const int r = ec_emu::check_image_arch(static_cast<const unsigned char*>(image), n, &why)) {
        note("cuModuleLoadData: %s: %s", error_name((CUresult)r), why.c_str());
        return (CUresult)r;
    }
    const auto toks = tokens(static_cast<const unsigned char*>(image), n);
    // The registered module with the most entry points named in the image; only those are found.
    const Module* best = nullptr;
    std::vector<const ec_emu::EntryInfo*> found, best_found;
    bool tie = false;
    for (const Module& m : registry()) {
        found.clear();
        for (int i = 0; i < m.count; ++i)
            if (toks.count(m.entries[i].name)) found.push_back(&m.entries[i]);
        if (found.empty()) continue;
        if (!best || found.size() > best_found.size()) {
            best = &m;
            best_found = found;
            tie = false;
        } else if (found.size() == best_found.size()) {
            tie = true;
        }
    }
    if (!best || tie) {
        note("cuModuleLoadData: %s (%zu-byte image); rebuild the emulator (scripts/build-emulator.sh) after changing "
             "kernels/",
             best ? "the image matches two compiled modules equally" : "no compiled kernel is named in the image", n);
        return CUDA_ERROR_INVALID_IMAGE;
    }
    if ((int)best_found.size() < best->count)
        note("cuModuleLoadData: module %s: %zu of its %d kernels are named in the image; only those are loaded",
             best->name, best_found.size(), best->count);
    CUmodule m = new CUmod_st{ctx, best->name, {}};
    for (const ec_emu::EntryInfo* e : best_found) {
        const int max_dyn = kSmemDefault - e->static_smem;
        m->functions.push_back(new CUfunc_st{e, m, max_dyn > 0 ? max_dyn : 0});
    }
    st().modules.insert(m);
    *out = m;
    ++g_counters.module_loads;
    return CUDA_SUCCESS;
}

CUresult cuModuleUnload(CUmodule m) {
    LOCK;
    CHECK_INIT;
    if (!st().modules.erase(m)) return CUDA_ERROR_INVALID_HANDLE;
    for (CUfunc_st* f : m->functions) delete f;
    delete m;
    return CUDA_SUCCESS;
}

CUresult cuModuleGetFunction(CUfunction* f, CUmodule m, const char* name) {
    LOCK;
    CHECK_INIT;
    if (!f || !name) return CUDA_ERROR_INVALID_VALUE;
    if (!st().modules.count(m)) return CUDA_ERROR_INVALID_HANDLE;
    for (CUfunc_st* fn : m->functions) {
        if (strcmp(fn->entry->name, name) == 0) {
            *f = fn;
            return CUDA_SUCCESS;
        }
    }
    note("cuModuleGetFunction: module %s has no kernel %s", m->name.c_str(), name);
    return CUDA_ERROR_NOT_FOUND;
}

CUresult cuFuncGetAttribute(int* v, CUfunction_attribute a, CUfunction f) {
    LOCK;
    CHECK_INIT;
    if (!v || !f) return CUDA_ERROR_INVALID_VALUE;
    const ec_emu::EntryInfo& e = *f->entry;
    switch (a) {
    case CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *v = func_max_threads(e); break;
    case CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES: *v = e.static_smem; break;
    case CU_FUNC_ATTRIBUTE_CONST_SIZE_BYTES: *v = 0; break;
    case CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES: *v = e.stack_frame; break;
    case CU_FUNC_ATTRIBUTE_NUM_REGS: *v = e.registers; break;
    case CU_FUNC_ATTRIBUTE_PTX_VERSION: *v = 90; break;
    case CU_FUNC_ATTRIBUTE_BINARY_VERSION: *v = 90; break;
    case CU_FUNC_ATTRIBUTE_CACHE_MODE_CA: *v = 0; break;
    case CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: *v = f->max_dynamic_smem; break;
    case CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT: *v = -1; break;
    default:
        note("cuFuncGetAttribute: attribute %d is not emulated", (int)a);
        return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

CUresult cuFuncSetAttribute(CUfunction f, CUfunction_attribute a, int v) {
    LOCK;
    CHECK_INIT;
    if (!f) return CUDA_ERROR_INVALID_HANDLE;
    switch (a) {
    case CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES:
        if (v < 0 || v + f->entry->static_smem > kSmemOptin) return CUDA_ERROR_INVALID_VALUE;
        f->max_dynamic_smem = v;
        return CUDA_SUCCESS;
    case CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT:
        return (v >= -1 && v <= 100) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
    default:
        note("cuFuncSetAttribute: attribute %d is not emulated", (int)a);
        return CUDA_ERROR_INVALID_VALUE;
    }
}

CUresult cuFuncSetCacheConfig(CUfunction f, CUfunc_cache c) {
    (void)c;
    return f ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned smem, CUstream s, void** params, void** extra) {
    LOCK;
    CUcontext ctx;
    if (CUresult r = stream_ctx(s, &ctx)) return r;
    if (!f) return CUDA_ERROR_INVALID_HANDLE;
    const ec_emu::EntryInfo& e = *f->entry;
    if (f->module->ctx != ctx) return CUDA_ERROR_INVALID_HANDLE;
    if (extra) {
        note("cuLaunchKernel(%s): `extra` parameter passing is not emulated", e.name);
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    if (e.num_params > 0 && !params) return CUDA_ERROR_INVALID_VALUE;
    const unsigned long long threads = (unsigned long long)bx * by * bz;
    if (gx == 0 || gy == 0 || gz == 0 || bx == 0 || by == 0 || bz == 0 || bx > 1024 || by > 1024 || bz > 64 ||
        threads > (unsigned long long)kMaxThreadsPerBlock || gx > 2147483647u || gy > 65535 || gz > 65535) {
        note("cuLaunchKernel(%s): grid (%u,%u,%u) block (%u,%u,%u) exceeds the device limits", e.name, gx, gy, gz, bx,
             by, bz);
        return CUDA_ERROR_INVALID_VALUE;
    }
    if ((int)smem > f->max_dynamic_smem) {
        note("cuLaunchKernel(%s): %u bytes of dynamic shared memory, the function allows %d (48 KiB minus its static "
             "shared memory unless raised with cuFuncSetAttribute)",
             e.name, smem, f->max_dynamic_smem);
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (e.max_threads > 0 && threads > (unsigned long long)e.max_threads) {
        note("cuLaunchKernel(%s): %llu threads per block, its __launch_bounds__ allow %d", e.name, threads,
             e.max_threads);
        return CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES;
    }
    if (regs_needed(e.registers, (int)threads) > kRegsPerBlock) {
        note("cuLaunchKernel(%s): %llu threads x %d registers (ptxas, sm_90) need %ld registers, the block has %d",
             e.name, threads, e.registers, regs_needed(e.registers, (int)threads), kRegsPerBlock);
        return CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES;
    }
    if (CUresult r = fault_point(ctx, bit(kFaultLaunch), e.name)) return r;  // the kernel does not run
    ++g_counters.launches;
    TRACE("trace: cuLaunchKernel %s grid (%u,%u,%u) block (%u,%u,%u) smem %u", e.name, gx, gy, gz, bx, by, bz, smem);
    if (g_dry_run) return CUDA_SUCCESS;
    std::string message;
    ec_emu::init_check_launch_begin(e.name, e.num_params, e.param_sizes, params);
    const int code = ec_emu::run_kernel(e, ec_emu::Dim3{gx, gy, gz}, ec_emu::Dim3{bx, by, bz}, smem, params, &message);
    ec_emu::init_check_launch_end();
    if (code != 0) {
        // As on hardware: the launch was accepted; the fault breaks the context for every later call.
        ctx->sticky = (CUresult)code;
        return CUDA_SUCCESS;
    }
    check_all_guards(ctx, e.name);
    return CUDA_SUCCESS;
}

}  // extern "C"
