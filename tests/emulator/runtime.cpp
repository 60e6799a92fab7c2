// Kernel execution for the emulated CUDA driver: every CUDA thread of a block is a fiber (its own
// stack, a hand-written x86-64 context switch, no system call per switch). The scheduler runs the
// block's runnable fibers in an order shuffled from a seed, each until it reaches a barrier or a
// warp collective or exits; when none is runnable it completes the collectives and barriers that
// every participant has reached and goes on. A missing barrier therefore reads another thread's
// data before it was written (or the 0xFF poison of shared memory), depending on the seed, instead
// of passing by luck. A collective whose mask names a lane that does not exist or has exited, or a
// block whose threads wait at barriers that can never complete, fails the launch with a message
// naming the kernel, the block and the thread.
#include "runtime.h"

#include "shared_guard.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EC_ASAN 1
#else
#define EC_ASAN 0
#endif

#if !defined(__x86_64__)
#error "the emulated CUDA driver's fibers are written for x86-64"
#endif

// Saves the callee-saved registers on the current stack, stores the stack pointer in *save, and
// resumes the context whose stack pointer is `to`. MXCSR and the x87 control word are not
// switched: kernels never change them, so every fiber runs with the launching thread's settings
// (a fresh fiber starts with them too: they are not on its stack at all).
extern "C" void ec_switch(void** save, void* to);
asm(R"(
    .pushsection .text
    .globl ec_switch
    .hidden ec_switch
    .type ec_switch, @function
ec_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size ec_switch, .-ec_switch
    .popsection
)");

// Static __shared__ variables of every kernel (see cuda_shim.h); the linker defines the bounds.
extern "C" char __start_ec_shared[] __attribute__((weak));
extern "C" char __stop_ec_shared[] __attribute__((weak));
// The first bytes of the section (runtime.o is linked first): a guard below the lowest variable
// (GCC places a translation unit's variables in reverse order, each above its guard; see
// shared_guard.h).
static char ec_shared_guard_start[16] __attribute__((section("ec_shared"), used, aligned(16)));

namespace ec_emu {

Current cur;

namespace {

enum class St : uint8_t { Runnable, AtBarrier, AtWarp, Exited, Stopped };

struct FiberImpl {
    void* sp = nullptr;
    char* stack_lo = nullptr;  // lowest usable byte (a guard page lies below)
    size_t stack_size = 0;
    void* asan_fake = nullptr;
    St st = St::Exited;
    Dim3 tid{0, 0, 0};
    // Arrival at a collective or barrier.
    Coll kind = Coll::Syncwarp;
    unsigned mask = 0;
    int arg = 0;
    int width = 32;
    uint64_t value = 0;
    uint64_t result = 0;
    const char* what = "";
    ExchangeFn exchange = nullptr;  // Coll::Exchange: completes the collective (value: payload)
    const char* site_file = "";     // Coll::Exchange and barriers: the kernel's call site
    int site_line = 0;
};

struct Launch {
    const EntryInfo* entry;
    void** params;
    Dim3 grid, block;
    unsigned block_linear;
    int nthreads;
    int code;
    std::string message;
    size_t dyn_smem_bytes;
};

std::vector<FiberImpl> g_fibers;
void* g_sched_sp = nullptr;
Launch* g_launch = nullptr;
#if EC_ASAN
const void* g_sched_stack_bottom = nullptr;  // for the ASan fiber annotations
size_t g_sched_stack_size = 0;
#endif

size_t stack_bytes() {
    static size_t bytes = [] {
        size_t kb = EC_ASAN ? 256 : 64;
        if (const char* s = getenv("EVENCLASS_EMU_STACK_KB")) kb = strtoull(s, nullptr, 10);
        if (kb < 16) kb = 16;
        return kb * 1024;
    }();
    return bytes;
}

uint64_t splitmix(uint64_t& s) {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

uint64_t fnv(const char* s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; ++s) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

FiberImpl& self() { return *reinterpret_cast<FiberImpl*>(cur.fiber); }

int self_index() { return (int)(&self() - g_fibers.data()); }

std::string thread_name(const FiberImpl& f) {
    char b[64];
    snprintf(b, sizeof b, "(%u,%u,%u)", f.tid.x, f.tid.y, f.tid.z);
    return b;
}

std::string where() {
    char b[160];
    snprintf(b, sizeof b, "kernel %s, block (%u,%u,%u) of grid (%u,%u,%u), block size (%u,%u,%u)",
             g_launch->entry->name, cur.block_idx.x, cur.block_idx.y, cur.block_idx.z, g_launch->grid.x,
             g_launch->grid.y, g_launch->grid.z, g_launch->block.x, g_launch->block.y, g_launch->block.z);
    return b;
}

void set_error(int code, const std::string& what) {
    if (g_launch->code != kSuccess) return;
    g_launch->code = code;
    char seed[64];
    snprintf(seed, sizeof seed, " [EVENCLASS_EMU_SEED=%llu]", (unsigned long long)schedule_seed());
    g_launch->message = where() + ": " + what + seed;
}

// ---- switching --------------------------------------------------------------------------------------

void to_scheduler() {
    FiberImpl& f = self();
#if EC_ASAN
    __sanitizer_start_switch_fiber(f.st == St::Exited ? nullptr : &f.asan_fake, g_sched_stack_bottom,
                                   g_sched_stack_size);
#endif
    ec_switch(&f.sp, g_sched_sp);
#if EC_ASAN
    __sanitizer_finish_switch_fiber(f.asan_fake, &g_sched_stack_bottom, &g_sched_stack_size);
#endif
}

// A fiber that found an error stops here for good; the scheduler abandons the block.
[[noreturn]] void stop_self() {
    self().st = St::Stopped;
    to_scheduler();
    abort();  // never resumed
}

[[noreturn]] void fiber_main() {
#if EC_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &g_sched_stack_bottom, &g_sched_stack_size);
#endif
    g_launch->entry->invoke(g_launch->entry->fn, g_launch->params);
    tc_thread_exit();
    self().st = St::Exited;
    to_scheduler();
    abort();  // an exited fiber is never resumed
}

void prepare_fiber(FiberImpl& f) {
    const size_t size = stack_bytes();
    if (!f.stack_lo) {
        const size_t page = (size_t)sysconf(_SC_PAGESIZE);
        void* m = mmap(nullptr, size + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) {
            fprintf(stderr, "[evenclass-emu] cannot map a fiber stack of %zu bytes\n", size);
            abort();
        }
        mprotect(m, page, PROT_NONE);  // stack overflow faults instead of corrupting a neighbour
        f.stack_lo = static_cast<char*>(m) + page;
        f.stack_size = size;
    }
#if EC_ASAN
    // An abandoned fiber (failed launch) may have left poisoned frames behind.
    ASAN_UNPOISON_MEMORY_REGION(f.stack_lo, f.stack_size);
#endif
    // The frame ec_switch pops: r15, r14, r13, r12, rbx, rbp (zeros; rbp 0 ends backtraces), then
    // the address its `ret` jumps to, fiber_main, entered with the stack aligned as after a call.
    uint64_t* top = reinterpret_cast<uint64_t*>(f.stack_lo + f.stack_size);
    top[-1] = 0;  // fiber_main's return address: none, it never returns
    top[-2] = reinterpret_cast<uint64_t>(&fiber_main);
    for (int i = 3; i <= 8; ++i) top[-i] = 0;
    f.sp = &top[-8];
    f.asan_fake = nullptr;
}

void resume(FiberImpl& f) {
    cur.fiber = reinterpret_cast<Fiber*>(&f);
    cur.thread_idx = f.tid;
    void* fake = nullptr;
#if EC_ASAN
    __sanitizer_start_switch_fiber(&fake, f.stack_lo, f.stack_size);
#endif
    ec_switch(&g_sched_sp, f.sp);
#if EC_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
    (void)fake;
}

// ---- completing collectives and barriers --------------------------------------------------------

const char* kind_name(Coll k) {
    switch (k) {
    case Coll::Syncwarp: return "__syncwarp";
    case Coll::ShflIdx: return "__shfl_sync";
    case Coll::ShflUp: return "__shfl_up_sync";
    case Coll::ShflDown: return "__shfl_down_sync";
    case Coll::ShflXor: return "__shfl_xor_sync";
    case Coll::Ballot: return "__ballot_sync";
    case Coll::Any: return "__any_sync";
    case Coll::All: return "__all_sync";
    case Coll::Exchange: return "warp exchange";
    }
    return "?";
}

// The value a shuffle delivers from a lane that does not take part: garbage, as on the GPU.
constexpr uint64_t kPoison = 0xFFFFFFFFFFFFFFFFull;

// Completes the collective of the lanes in `group` (all waiting with the same kind and mask).
void complete(FiberImpl* warp, unsigned group) {
    const Coll kind = warp[__builtin_ctz(group)].kind;
    if (kind == Coll::Exchange) {
        void* lanes[32];
        for (int l = 0; l < 32; ++l) lanes[l] = (group >> l & 1) ? reinterpret_cast<void*>(warp[l].value) : nullptr;
        warp[__builtin_ctz(group)].exchange(lanes);
        for (int l = 0; l < 32; ++l)
            if (group >> l & 1) warp[l].st = St::Runnable;
        return;
    }
    unsigned ballot = 0;
    for (int l = 0; l < 32; ++l)
        if ((group >> l & 1) && warp[l].value != 0) ballot |= 1u << l;
    for (int l = 0; l < 32; ++l) {
        if (!(group >> l & 1)) continue;
        FiberImpl& f = warp[l];
        const int w = f.width, seg = l & ~(w - 1);
        int src = l;
        bool own = false;
        switch (kind) {
        case Coll::Syncwarp: f.result = 0; break;
        case Coll::Ballot: f.result = ballot; break;
        case Coll::Any: f.result = ballot != 0; break;
        case Coll::All: f.result = ballot == group; break;
        case Coll::ShflIdx: src = seg + (f.arg & (w - 1)); break;
        case Coll::ShflUp:
            src = l - f.arg;
            own = src < seg;
            break;
        case Coll::ShflDown:
            src = l + f.arg;
            own = src >= seg + w;
            break;
        case Coll::ShflXor:
            src = l ^ f.arg;
            own = src >= seg + w || src > 31 || src < 0;
            break;
        case Coll::Exchange: break;  // completed above
        }
        if (kind == Coll::ShflIdx || kind == Coll::ShflUp || kind == Coll::ShflDown || kind == Coll::ShflXor) {
            if (own) f.result = f.value;
            else if (src >= 0 && src < 32 && (group >> src & 1)) f.result = warp[src].value;
            else f.result = kPoison;
        }
    }
    for (int l = 0; l < 32; ++l)
        if (group >> l & 1) warp[l].st = St::Runnable;
}

// ---- the scheduler of one block ------------------------------------------------------------------
//
// Runnable fibers sit in per-warp queues. The scheduler picks a warp at random and runs random
// lanes of it, one at a time, each until its next barrier, collective or exit; a collective
// completes as soon as the last lane of its mask arrives, a barrier when the last live thread
// does. How long it stays with one warp is the block's strategy, drawn from the seed: always as
// long as the warp has a runnable lane (one warp runs as far ahead of the others as it can: a
// missing barrier between two phases of shared memory use shows), or switching to a random warp
// after each step with probability 1/8, 1/2 or 1 (threads interleave finely). Block 0 of every
// launch runs the first strategy, so a kernel with a single block is checked that way too.

struct Sched {
    int n = 0;
    int warps = 0;
    int at_barrier = 0;
    int barrier_first = -1;  // the first thread waiting at the pending barrier (its call site)
    int exited = 0;
    uint32_t switch_p = 0;  // probability (of 2^32) of moving to a random warp after a step
    uint64_t rng = 0;
    std::vector<std::vector<int>> runq;  // runnable thread indices per warp
    std::vector<int> nonempty;           // scratch

    void make_runnable(int i) {
        g_fibers[i].st = St::Runnable;
        runq[i >> 5].push_back(i);
    }
    uint32_t below(uint32_t k) { return (uint32_t)(((unsigned __int128)splitmix(rng) * k) >> 64); }
    int random_warp() {
        nonempty.clear();
        for (int w = 0; w < warps; ++w)
            if (!runq[w].empty()) nonempty.push_back(w);
        return nonempty.empty() ? -1 : nonempty[below((uint32_t)nonempty.size())];
    }
};

std::string hex_mask(unsigned m) {
    char b[16];
    snprintf(b, sizeof b, "0x%08x", m);
    return b;
}

// Lane `l` of the warp starting at `w0` arrived at a collective: completes it when every lane of
// its mask waits at the same collective with the same mask.
void arrive_collective(Sched& s, int w0, int l) {
    FiberImpl* warp = &g_fibers[w0];
    const FiberImpl& f = warp[l];
    const unsigned m = f.mask;
    for (int k = 0; k < 32; ++k) {
        if (!(m >> k & 1)) continue;
        const FiberImpl& o = warp[k];
        if (o.st != St::AtWarp || o.kind != f.kind || o.mask != m) return;  // not yet (or a deadlock)
        if (f.kind == Coll::Exchange && (o.arg != f.arg || o.exchange != f.exchange || o.site_line != f.site_line ||
                                         strcmp(o.site_file, f.site_file) != 0))
            return;
    }
    complete(warp, m);
    for (int k = 0; k < 32; ++k)
        if (m >> k & 1) s.runq[w0 >> 5].push_back(w0 + k);
}

// Thread i arrived at a __syncthreads: every thread of one barrier must wait at the same call
// site. The hardware's bar.sync matches threads by count alone, so a divergent barrier (threads at
// two different __syncthreads) "works" there by accident and is undefined behaviour; here it fails
// the launch naming both sites. Returns false when it did.
bool check_barrier_site(Sched& s, int i) {
    const FiberImpl& f = g_fibers[i];
    if (s.at_barrier == 0) {
        s.barrier_first = i;
        return true;
    }
    const FiberImpl& o = g_fibers[s.barrier_first];
    if (o.site_line == f.site_line && strcmp(o.site_file, f.site_file) == 0) return true;
    set_error(kLaunchFailed, "thread " + thread_name(f) + " waits at __syncthreads at " + f.site_file + ":" +
                                 std::to_string(f.site_line) + " while thread " + thread_name(o) +
                                 " waits at another, at " + o.site_file + ":" + std::to_string(o.site_line) +
                                 ": threads of a block must reach the same barrier (divergent __syncthreads)");
    return false;
}

// Shared memory's guard bytes, checked whenever every thread has reached a barrier or exited.
void check_shared_guards(const std::string& when) {
    std::string what;
    if (!smem_guards_intact(cur.dyn_smem, g_launch->dyn_smem_bytes, &what))
        set_error(kIllegalAddress, what + " (found " + when + ")");
}

void release_barrier(Sched& s) {
    if (s.at_barrier == 0 || s.at_barrier + s.exited != s.n) return;
    const FiberImpl& first = g_fibers[s.barrier_first];
    check_shared_guards("at the __syncthreads at " + std::string(first.site_file) + ":" +
                        std::to_string(first.site_line));
    if (g_launch->code != kSuccess) return;
    s.at_barrier = 0;
    for (int i = 0; i < s.n; ++i)
        if (g_fibers[i].st == St::AtBarrier) s.make_runnable(i);
}

// Thread i has exited: a lane of its warp waiting at a collective whose mask names it never wakes.
void check_exit(int i) {
    const int w0 = i & ~31, lane = i & 31;
    const int lanes = g_launch->nthreads - w0 < 32 ? g_launch->nthreads - w0 : 32;
    for (int k = 0; k < lanes; ++k) {
        const FiberImpl& o = g_fibers[w0 + k];
        if (o.st == St::AtWarp && (o.mask >> lane & 1)) {
            set_error(kIllegalInstruction, "thread " + thread_name(o) + " waits in " + o.what + " with mask " +
                                               hex_mask(o.mask) + ", which names lane " + std::to_string(lane) +
                                               " (thread " + thread_name(g_fibers[i]) + "), which has exited");
            return;
        }
    }
}

void report_deadlock(int n) {
    std::string at_barrier, at_warp;
    int nb = 0, nw = 0;
    for (int i = 0; i < n; ++i) {
        const FiberImpl& f = g_fibers[i];
        if (f.st == St::AtBarrier && nb++ < 3) at_barrier += " " + thread_name(f);
        if (f.st == St::AtWarp && nw++ < 3) at_warp += " " + thread_name(f) + " in " + f.what + " (mask " + hex_mask(f.mask) + ")";
    }
    set_error(kLaunchFailed, "deadlock: " + std::to_string(nb) + " thread(s) wait at __syncthreads [" + at_barrier +
                                 " ] while " + std::to_string(nw) + " wait at warp collectives [" + at_warp +
                                 " ] that cannot complete");
}

void run_block(uint64_t rng, bool first_block) {
    const int n = g_launch->nthreads;
    const Dim3 b = g_launch->block;
    static Sched s;  // reused: its queues keep their capacity
    s.n = n;
    s.warps = (n + 31) / 32;
    s.at_barrier = 0;
    s.exited = 0;
    s.rng = rng;
    static const uint32_t kSwitch[4] = {0u, 1u << 29, 1u << 31, 0xFFFFFFFFu};
    s.switch_p = first_block ? 0u : kSwitch[splitmix(s.rng) & 3];
    s.runq.resize(s.warps > (int)s.runq.size() ? s.warps : s.runq.size());
    for (int w = 0; w < s.warps; ++w) s.runq[w].clear();
    for (int i = 0; i < n; ++i) {
        FiberImpl& f = g_fibers[i];
        prepare_fiber(f);
        f.tid = Dim3{(unsigned)i % b.x, ((unsigned)i / b.x) % b.y, (unsigned)i / (b.x * b.y)};
        s.make_runnable(i);
    }
    tc_block_begin(n);
    // Shared memory starts as garbage: 0xFF bytes read as NaN floats and -1 integers (the guards too).
    smem_block_begin(cur.dyn_smem, g_launch->dyn_smem_bytes);
    int w = s.random_warp();
    while (w >= 0) {
        std::vector<int>& q = s.runq[w];
        const uint32_t j = s.below((uint32_t)q.size());
        const int i = q[j];
        q[j] = q.back();
        q.pop_back();
        FiberImpl& f = g_fibers[i];
        resume(f);
        if (g_launch->code != kSuccess) return;
        switch (f.st) {
        case St::AtWarp: arrive_collective(s, i & ~31, i & 31); break;
        case St::AtBarrier:
            if (!check_barrier_site(s, i)) return;
            ++s.at_barrier;
            release_barrier(s);
            break;
        case St::Exited:
            ++s.exited;
            check_exit(i);
            if (g_launch->code != kSuccess) return;
            release_barrier(s);
            break;
        case St::Runnable:
        case St::Stopped: break;
        }
        if (g_launch->code != kSuccess) return;
        if (s.runq[w].empty() || (s.switch_p && (uint32_t)splitmix(s.rng) <= s.switch_p)) w = s.random_warp();
    }
    if (s.exited != n) report_deadlock(n);
    else check_shared_guards("at the end of the block");
}

}  // namespace

uint64_t schedule_seed() {
    static uint64_t seed = [] {
        const char* s = getenv("EVENCLASS_EMU_SEED");
        return s && *s ? strtoull(s, nullptr, 0) : 1ull;
    }();
    return seed;
}

uint64_t warp_collective(Coll kind, unsigned mask, uint64_t value, int arg, int width, const char* what) {
    FiberImpl& f = self();
    const int idx = self_index();
    const int lane = idx & 31, w0 = idx & ~31;
    const int n = g_launch->nthreads;
    const int lanes = n - w0 < 32 ? n - w0 : 32;
    char b[256];
    if (!(mask >> lane & 1)) {
        snprintf(b, sizeof b, "thread %s (lane %d) calls %s with mask 0x%08x, which does not name its own lane",
                 thread_name(f).c_str(), lane, what, mask);
        set_error(kIllegalInstruction, b);
        stop_self();
    }
    if (lanes < 32 && (mask >> lanes) != 0) {
        snprintf(b, sizeof b,
                 "thread %s calls %s with mask 0x%08x, but its warp has only %d lane(s) (%d threads per block): "
                 "the mask names lanes that do not exist",
                 thread_name(f).c_str(), what, mask, lanes, n);
        set_error(kIllegalInstruction, b);
        stop_self();
    }
    if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
        snprintf(b, sizeof b, "thread %s calls %s with width %d (not a power of 2 up to 32)", thread_name(f).c_str(),
                 what, width);
        set_error(kIllegalInstruction, b);
        stop_self();
    }
    for (int k = 0; k < lanes; ++k) {
        const FiberImpl& o = g_fibers[w0 + k];
        if ((mask >> k & 1) && o.st == St::Exited) {
            snprintf(b, sizeof b, "thread %s calls %s with mask 0x%08x, which names lane %d (thread %s), which has exited",
                     thread_name(f).c_str(), what, mask, k, thread_name(o).c_str());
            set_error(kIllegalInstruction, b);
            stop_self();
        }
    }
    f.kind = kind;
    f.mask = mask;
    f.value = value;
    f.arg = arg;
    f.width = width;
    f.what = what;
    f.st = St::AtWarp;
    to_scheduler();
    return f.result;
}

void warp_exchange(unsigned mask, int op, void* payload, ExchangeFn complete, const char* what,
                   const char* site_file, int site_line) {
    FiberImpl& f = self();
    const int idx = self_index();
    const int w0 = idx & ~31, n = g_launch->nthreads;
    const int lanes = n - w0 < 32 ? n - w0 : 32;
    for (int k = 0; k < lanes; ++k) {
        const FiberImpl& o = g_fibers[w0 + k];
        if (!(mask >> k & 1) || o.st != St::AtWarp || o.kind != Coll::Exchange) continue;
        if (o.arg == op && o.exchange == complete && o.site_line == site_line && strcmp(o.site_file, site_file) == 0)
            continue;
        set_error(kIllegalInstruction, "thread " + thread_name(f) + " executes " + what + " at " + site_file + ":" +
                                           std::to_string(site_line) + " while thread " + thread_name(o) +
                                           " of its warp waits in " + o.what + " at " + o.site_file + ":" +
                                           std::to_string(o.site_line) +
                                           ": every lane must execute the same warp-wide instruction");
        stop_self();
    }
    f.exchange = complete;
    f.site_file = site_file;
    f.site_line = site_line;
    warp_collective(Coll::Exchange, mask, reinterpret_cast<uint64_t>(payload), op, 32, what);
}

bool in_kernel() { return g_launch && cur.fiber; }

int current_thread_index() { return self_index(); }
int block_thread_count() { return g_launch->nthreads; }
std::string current_thread_name() { return thread_name(self()); }

bool in_shared_memory(const void* p, size_t bytes) {
    const char* c = static_cast<const char*>(p);
    const char* lo = __start_ec_shared;
    const char* hi = __stop_ec_shared;
    if (lo && c >= lo && c <= hi && bytes <= (size_t)(hi - c)) return true;
    const char* dyn = static_cast<const char*>(cur.dyn_smem);
    const size_t dn = g_launch->dyn_smem_bytes;
    return dyn && c >= dyn && c <= dyn + dn && bytes <= (size_t)(dyn + dn - c);
}

void kernel_fault(int code, const std::string& what) {
    set_error(code, "thread " + thread_name(self()) + " " + what);
    stop_self();
}

void syncthreads(const char* what, const char* site_file, int site_line) {
    FiberImpl& f = self();
    f.what = what;
    f.site_file = site_file;
    f.site_line = site_line;
    f.st = St::AtBarrier;
    to_scheduler();
}

void kernel_trap(const char* what) {
    set_error(kIllegalInstruction, std::string("thread ") + thread_name(self()) + " executed " + what);
    stop_self();
}

int run_kernel(const EntryInfo& entry, Dim3 grid, Dim3 block, size_t dyn_smem_bytes, void** params,
               std::string* message) {
    Launch launch{&entry, params, grid, block, 0, (int)(block.x * block.y * block.z), kSuccess, {}, dyn_smem_bytes};
    g_launch = &launch;
    if ((int)g_fibers.size() < launch.nthreads) g_fibers.resize(launch.nthreads);
    // Guard zones in the plain build, the exact size under ASan (shared_guard.h).
    void* dyn = smem_alloc_dynamic(dyn_smem_bytes);
    if (dyn_smem_bytes && !dyn) {
        *message = "cannot allocate the dynamic shared memory";
        g_launch = nullptr;
        return kOutOfMemory;
    }
    cur.block_dim = block;
    cur.grid_dim = grid;
    cur.dyn_smem = dyn;
    const uint64_t base = schedule_seed() * 0x9E3779B97F4A7C15ull ^ fnv(entry.name);
    for (unsigned z = 0; z < grid.z && launch.code == kSuccess; ++z)
        for (unsigned y = 0; y < grid.y && launch.code == kSuccess; ++y)
            for (unsigned x = 0; x < grid.x && launch.code == kSuccess; ++x) {
                cur.block_idx = Dim3{x, y, z};
                uint64_t rng = base ^ (((uint64_t)z * grid.y + y) * grid.x + x) * 0xD1B54A32D192ED03ull;
                splitmix(rng);
                run_block(rng, x == 0 && y == 0 && z == 0);
            }
    smem_free_dynamic(dyn, dyn_smem_bytes);
    cur.dyn_smem = nullptr;
    cur.fiber = nullptr;
    g_launch = nullptr;
    if (launch.code != kSuccess) {
        fprintf(stderr, "[evenclass-emu] launch failed: %s\n", launch.message.c_str());
        *message = launch.message;
    }
    return launch.code;
}

}  // namespace ec_emu
