// Reads of device memory that nothing wrote (test-only; see docs/emulator.md, "Init check").
//
// A GPU hands out device memory holding whatever was there before, and a kernel that reads a byte
// nobody wrote computes with garbage: often harmlessly on one run, differently on the next. Poison
// alone (fresh allocations hold 0xFF bytes, a NaN for every float type) shows such a read only
// when the garbage reaches a result that a test compares. This check names it where it happens.
//
// Each device allocation has a shadow byte per byte: written or not. A copy from the host and a
// memset write their range; a device-to-device copy carries the source's shadow; a kernel's stores
// write theirs. scripts/build-emulator.sh compiles the kernels (not the rest of the emulator) with
// GCC's -fsanitize=kernel-address in outline mode: every load and store of a kernel calls one of
// the __asan_{load,store}N_noabort functions below, which this library defines itself (nothing of
// libasan is linked). A load of a byte whose shadow says "unwritten" fails the launch with a
// message naming the kernel, the thread, the buffer, the offset and the kernel parameter that
// points into the buffer; a copy to the host of such a byte fails the copy.
//
// GCC drops a store's check when a load of the same address dominates it (b[i] += a[i] checks
// only the load): the load found the byte written, or failed, so the shadow is already right. As
// a guard against a write path the instrumentation does not see, an unwritten byte that no longer
// holds the fresh-memory value counts as written.
//
// Everything runs under the driver's lock (launches included), so the shadow needs no locks.
#include "init_check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <map>
#include <vector>

#include "runtime.h"

namespace ec_emu {
namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kBuiltIn = false;  // the kernels are instrumented for AddressSanitizer instead
#else
constexpr bool kBuiltIn = true;
#endif

struct Shadow {
    size_t size;
    std::vector<unsigned char> written;  // 1 per written byte
};

std::map<uintptr_t, Shadow>& shadows() {
    static auto* m = new std::map<uintptr_t, Shadow>;  // never destroyed: calls may come during exit
    return *m;
}

// The allocations by address, for the lookups of every load and store (a sorted array: faster to
// search than the map, and rebuilt only when an allocation comes or goes).
struct Entry {
    uintptr_t base, end;
    Shadow* shadow;
};
std::vector<Entry> g_sorted;
uintptr_t g_lo = UINTPTR_MAX, g_hi = 0;  // the span of all of them: most other addresses miss it

// The last allocation found: kernels read the same buffer many times in a row.
Entry g_last{0, 0, nullptr};

// Pages known to hold no device allocation (shared memory, the threads' stacks, the emulator's own
// data): most of a kernel's accesses that are not to device memory land on a few such pages, and
// this direct-mapped cache answers them without a search. Cleared whenever an allocation comes or
// goes.
constexpr int kPageBits = 12, kCacheSlots = 256;
uintptr_t g_not_device[kCacheSlots];

void clear_page_cache() {
    for (uintptr_t& e : g_not_device) e = ~uintptr_t{0};
}

void rebuild() {
    clear_page_cache();
    g_sorted.clear();
    for (auto& [base, sh] : shadows()) g_sorted.push_back(Entry{base, base + sh.size, &sh});
    g_lo = g_sorted.empty() ? UINTPTR_MAX : g_sorted.front().base;
    g_hi = g_sorted.empty() ? 0 : g_sorted.back().end;
    g_last = Entry{0, 0, nullptr};
}

struct Launch {
    const char* kernel = nullptr;
    int num_params = 0;
    const uint32_t* param_sizes = nullptr;
    void** params = nullptr;
} g_launch;

bool compute_enabled() {
    if (!kBuiltIn) return false;
    const char* s = getenv("EVENCLASS_EMU_INIT_CHECK");
    return !(s && strcmp(s, "0") == 0);
}

bool g_enabled = compute_enabled();

// The shadow of the allocation holding all of [p, p + n), with its base; nullptr when none does
// (shared memory, a thread's stack, or an access straddling a buffer's end, which the guard bytes
// or AddressSanitizer report).
Shadow* find(uintptr_t p, size_t n, uintptr_t* base) {
    if (p >= g_last.base && p < g_last.end && g_last.end - p >= n) {
        *base = g_last.base;
        return g_last.shadow;
    }
    if (p < g_lo || p >= g_hi) return nullptr;
    const uintptr_t page = p >> kPageBits;
    uintptr_t& slot = g_not_device[page % kCacheSlots];
    if (slot == page) return nullptr;
    // The last allocation starting at or below p.
    size_t lo = 0, hi = g_sorted.size();
    while (hi - lo > 1) {
        const size_t mid = (lo + hi) / 2;
        (g_sorted[mid].base <= p ? lo : hi) = mid;
    }
    const Entry& e = g_sorted[lo];
    if (p < e.base || p >= e.end || e.end - p < n) {
        // Remember the page when no allocation overlaps it at all.
        const uintptr_t first = page << kPageBits, last = first + (uintptr_t{1} << kPageBits);
        const bool before = e.base <= p && e.end > first;  // the allocation below p reaches into it
        const bool after = lo + 1 < g_sorted.size() && g_sorted[lo + 1].base < last;
        const bool below = p < e.base && e.base < last;  // p lies below every allocation
        if (!before && !after && !below) slot = page;
        return nullptr;
    }
    g_last = e;
    *base = e.base;
    return e.shadow;
}

// Which parameter of the running kernel points into the buffer at `base` (`size` bytes).
std::string parameter_of(uintptr_t base, size_t size) {
    std::string found;
    for (int i = 0; i < g_launch.num_params && g_launch.params; ++i) {
        if (g_launch.param_sizes[i] != sizeof(uintptr_t)) continue;
        uintptr_t v;
        memcpy(&v, g_launch.params[i], sizeof v);
        if (v >= base && v - base < size) {
            found += found.empty() ? "" : ", ";
            found += std::to_string(i);
        }
    }
    return found.empty() ? "no parameter points into it" : "kernel parameter " + found + " points into it";
}

std::string hex(uintptr_t p) {
    char b[32];
    snprintf(b, sizeof b, "0x%llx", (unsigned long long)p);
    return b;
}

void check_load(uintptr_t p, size_t n, const char* what) {
    uintptr_t base;
    Shadow* s = find(p, n, &base);
    if (!s) return;
    const size_t off = p - base;
    unsigned char* w = s->written.data() + off;
    for (size_t i = 0; i < n; ++i) {
        if (w[i]) continue;
        if (reinterpret_cast<const unsigned char*>(p)[i] != kFreshByte) {
            w[i] = 1;  // written by a path the instrumentation does not see
            continue;
        }
        kernel_fault(kLaunchFailed, std::string(what) + " " + std::to_string(n) + " bytes at byte " +
                                        std::to_string(off) + " of device buffer " + hex(base) + " (" +
                                        std::to_string(s->size) + " bytes; " + parameter_of(base, s->size) +
                                        "), and byte " + std::to_string(off + i) +
                                        " was never written (no copy, memset or kernel store since its "
                                        "allocation): an uninitialized read [EVENCLASS_EMU_INIT_CHECK]");
    }
}

void mark_store(uintptr_t p, size_t n) {
    uintptr_t base;
    if (Shadow* s = find(p, n, &base)) memset(s->written.data() + (p - base), 1, n);
}

}  // namespace

bool init_check_enabled() { return g_enabled; }

void init_check_alloc(uintptr_t base, size_t size) {
    if (!g_enabled) return;
    shadows()[base] = Shadow{size, std::vector<unsigned char>(size, 0)};
    rebuild();
}

void init_check_free(uintptr_t base) {
    if (!g_enabled) return;
    shadows().erase(base);
    rebuild();
}

void init_check_written(uintptr_t p, size_t n) {
    if (g_enabled && n) mark_store(p, n);
}

void init_check_copy(uintptr_t dst, uintptr_t src, size_t n) {
    if (!g_enabled || n == 0) return;
    uintptr_t sb, db;
    Shadow* s = find(src, n, &sb);
    if (!s) return;
    const std::vector<unsigned char> state(s->written.begin() + (src - sb), s->written.begin() + (src - sb) + n);
    if (Shadow* d = find(dst, n, &db)) memcpy(d->written.data() + (dst - db), state.data(), n);
}

long long init_check_first_unwritten(uintptr_t p, size_t n) {
    if (!g_enabled || n == 0) return -1;
    uintptr_t base;
    Shadow* s = find(p, n, &base);
    if (!s) return -1;
    const unsigned char* w = s->written.data() + (p - base);
    for (size_t i = 0; i < n; ++i)
        if (!w[i] && reinterpret_cast<const unsigned char*>(p)[i] == kFreshByte) return (long long)i;
    return -1;
}

void init_check_launch_begin(const char* kernel, int num_params, const uint32_t* param_sizes, void** params) {
    g_launch = Launch{kernel, num_params, param_sizes, params};
}

void init_check_launch_end() { g_launch = Launch{}; }

void init_check_read(const void* p, size_t n, const char* what) {
    if (g_enabled && n) check_load(reinterpret_cast<uintptr_t>(p), n, what);
}

}  // namespace ec_emu

// The instrumentation's entry points (GCC's -fsanitize=kernel-address, outline mode). Only the
// kernels are compiled with it; in the AddressSanitizer build libasan owns these names.
#if !defined(__SANITIZE_ADDRESS__)
// Hidden: the kernels are linked into this library, so their calls need no PLT.
#define EC_EXPORT extern "C" __attribute__((visibility("hidden")))
#define EC_ACCESS(N)                                                                           \
    EC_EXPORT void __asan_load##N##_noabort(uintptr_t p) {                                     \
        if (ec_emu::g_enabled) ec_emu::check_load(p, N, "reads");                              \
    }                                                                                          \
    EC_EXPORT void __asan_store##N##_noabort(uintptr_t p) {                                    \
        if (ec_emu::g_enabled) ec_emu::mark_store(p, N);                                       \
    }
EC_ACCESS(1)
EC_ACCESS(2)
EC_ACCESS(4)
EC_ACCESS(8)
EC_ACCESS(16)
#undef EC_ACCESS
EC_EXPORT void __asan_loadN_noabort(uintptr_t p, size_t n) {
    if (ec_emu::g_enabled) ec_emu::check_load(p, n, "reads");
}
EC_EXPORT void __asan_storeN_noabort(uintptr_t p, size_t n) {
    if (ec_emu::g_enabled) ec_emu::mark_store(p, n);
}
// Emitted around a translation unit's dynamic initialisers and before a noreturn call: nothing
// to do here (there is no shadow memory of GCC's to maintain).
EC_EXPORT void __asan_handle_no_return() {}
EC_EXPORT void __asan_before_dynamic_init(const char*) {}
EC_EXPORT void __asan_after_dynamic_init() {}
#undef EC_EXPORT
#endif
