// The emulated twins of kernels/tensor_core.cuh: mma.sync, ldmatrix and cp.async as the PTX ISA
// defines them, for kernels compiled as host C++ by the emulated CUDA driver (test-only).
//
// - mma and ldmatrix are collectives of the full warp (runtime.h's warp_exchange): every lane
//   passes its operands, the last one to arrive completes the instruction for all 32, and a lane
//   that skips it (returns, or waits elsewhere) fails the launch as any warp collective does.
// - mma gathers the fragments by the ISA's layouts (kernels/tensor_core.cuh spells them out),
//   computes D = A * B + C for the 16x8 tile, and scatters D back by the same layout.
// - ldmatrix checks each row address it uses (inside shared memory, 16-byte aligned) in the lane
//   that supplies it, before the lane arrives, so the fault names that lane and its address.
// - cp.async copies are queued per thread and land only at the wait that covers them; until then
//   the destination holds 0xFF poison (NaN floats), so a missing or too-early wait reads garbage.
#include <stdio.h>
#include <string.h>

#include <string>
#include <vector>

#include "runtime.h"
#include "tensor_core.h"
#include "init_check.h"

namespace ec_emu {

namespace {

std::string hex_addr(const void* p) {
    char b[32];
    snprintf(b, sizeof b, "%p", p);
    return b;
}

// ---- element decoding ---------------------------------------------------------------------------

float bits_to_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

// The tensor core reads a TF32 operand from the sign, the exponent and the top 10 mantissa bits of
// the register: the low 13 bits are ignored, i.e. an unrounded f32 is truncated toward zero.
float tf32_operand(uint32_t u) { return bits_to_f32(u & 0xFFFFE000u); }

float bf16_to_f32(uint16_t h) { return bits_to_f32((uint32_t)h << 16); }

float f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const int exp = (h >> 10) & 0x1F;
    uint32_t man = h & 0x3FFu;
    if (exp == 0x1F) return bits_to_f32(sign | 0x7F800000u | (man << 13));  // inf, NaN
    if (exp != 0) return bits_to_f32(sign | (uint32_t)(exp - 15 + 127) << 23 | man << 13);
    if (man == 0) return bits_to_f32(sign);  // signed zero
    // Subnormal: man * 2^-24, exact in f32.
    const float mag = (float)man * 5.9604644775390625e-8f;
    return sign ? -mag : mag;
}

uint16_t half_of(uint32_t reg, int hi) { return (uint16_t)(hi ? reg >> 16 : reg & 0xFFFFu); }

// ---- mma ------------------------------------------------------------------------------------------

struct MmaLane {
    MmaKind kind;
    float* d;
    const uint32_t* a;
    const uint32_t* b;
    const float* c;
};

const char* mma_name(MmaKind k) {
    switch (k) {
    case MmaKind::Tf32: return "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32";
    case MmaKind::Bf16: return "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32";
    case MmaKind::F16: return "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32";
    }
    return "mma";
}

// Completes one mma for the warp. Every operand is gathered before any D is written: a kernel
// may pass the same array as C and D.
//
// Arithmetic: every product of two TF32, BF16 or F16 operands is exact in f32 (at most 11 + 11
// significand bits), as on the hardware. The sum of C and the k products is formed in double and
// rounded once to f32 (round to nearest): the most accurate result an f32 accumulator can hold.
// The tensor cores of sm_80/sm_90 instead align the products to the largest exponent with a
// limited number of extra bits, truncating, and round the sum toward zero, in an order the ISA
// does not specify; their D may differ from this one by a few units in the last place of the
// largest |term| per mma (k = 8 or 16 terms plus C). Tests of kernels against a CPU reference
// therefore need a tolerance of about (k-steps) * 2^-22 * sum |a*b| on top of the operands'
// rounding (TF32: 2^-11 relative per operand rounded with cvt.rna, 2^-10 truncated; BF16 2^-8;
// F16 2^-11); on integer-valued inputs whose partial sums stay below 2^24 both are exact.
void mma_complete(void* const lanes[32]) {
    const MmaKind kind = static_cast<MmaLane*>(lanes[0])->kind;
    const int K = kind == MmaKind::Tf32 ? 8 : 16;
    float A[16][16], B[16][8], C[16][8];
    for (int l = 0; l < 32; ++l) {
        const MmaLane& p = *static_cast<MmaLane*>(lanes[l]);
        const int g = l >> 2, t = l & 3;
        if (kind == MmaKind::Tf32) {
            A[g][t] = tf32_operand(p.a[0]);
            A[g + 8][t] = tf32_operand(p.a[1]);
            A[g][t + 4] = tf32_operand(p.a[2]);
            A[g + 8][t + 4] = tf32_operand(p.a[3]);
            B[t][g] = tf32_operand(p.b[0]);
            B[t + 4][g] = tf32_operand(p.b[1]);
        } else {
            float (*dec)(uint16_t) = kind == MmaKind::Bf16 ? bf16_to_f32 : f16_to_f32;
            for (int h = 0; h < 2; ++h) {
                A[g][2 * t + h] = dec(half_of(p.a[0], h));
                A[g + 8][2 * t + h] = dec(half_of(p.a[1], h));
                A[g][2 * t + 8 + h] = dec(half_of(p.a[2], h));
                A[g + 8][2 * t + 8 + h] = dec(half_of(p.a[3], h));
                B[2 * t + h][g] = dec(half_of(p.b[0], h));
                B[2 * t + 8 + h][g] = dec(half_of(p.b[1], h));
            }
        }
        C[g][2 * t] = p.c[0];
        C[g][2 * t + 1] = p.c[1];
        C[g + 8][2 * t] = p.c[2];
        C[g + 8][2 * t + 1] = p.c[3];
    }
    float D[16][8];
    for (int m = 0; m < 16; ++m)
        for (int n = 0; n < 8; ++n) {
            double s = C[m][n];
            for (int k = 0; k < K; ++k) s += (double)A[m][k] * (double)B[k][n];
            D[m][n] = (float)s;
        }
    for (int l = 0; l < 32; ++l) {
        MmaLane& p = *static_cast<MmaLane*>(lanes[l]);
        const int g = l >> 2, t = l & 3;
        p.d[0] = D[g][2 * t];
        p.d[1] = D[g][2 * t + 1];
        p.d[2] = D[g + 8][2 * t];
        p.d[3] = D[g + 8][2 * t + 1];
    }
}

// ---- ldmatrix -------------------------------------------------------------------------------------

struct LdmatrixLane {
    const void* row;
    uint32_t* r;
    int matrices;
    bool trans;
};

uint16_t smem_u16(const void* row, int col) {
    uint16_t v;
    memcpy(&v, static_cast<const char*>(row) + 2 * col, sizeof v);
    return v;
}

// Matrix i's row j comes from lane 8i + j's address. Lane l receives row l>>2, elements 2(l&3)
// and 2(l&3)+1 (low half first); with .trans, column l>>2, rows 2(l&3) and 2(l&3)+1.
void ldmatrix_complete(void* const lanes[32]) {
    const LdmatrixLane& first = *static_cast<LdmatrixLane*>(lanes[0]);
    const int matrices = first.matrices;
    const bool trans = first.trans;
    uint32_t out[32][4];
    for (int l = 0; l < 32; ++l) {
        const int g = l >> 2, t = l & 3;
        for (int i = 0; i < matrices; ++i) {
            uint16_t lo, hi;
            if (!trans) {
                const void* row = static_cast<LdmatrixLane*>(lanes[8 * i + g])->row;
                lo = smem_u16(row, 2 * t);
                hi = smem_u16(row, 2 * t + 1);
            } else {
                lo = smem_u16(static_cast<LdmatrixLane*>(lanes[8 * i + 2 * t])->row, g);
                hi = smem_u16(static_cast<LdmatrixLane*>(lanes[8 * i + 2 * t + 1])->row, g);
            }
            out[l][i] = (uint32_t)lo | (uint32_t)hi << 16;
        }
    }
    for (int l = 0; l < 32; ++l) {
        LdmatrixLane& p = *static_cast<LdmatrixLane*>(lanes[l]);
        for (int i = 0; i < matrices; ++i) p.r[i] = out[l][i];
    }
}

// ---- cp.async -------------------------------------------------------------------------------------

constexpr int kOpenGroup = -1;

struct PendingCopy {
    void* dst;
    const void* src;
    int size;
    int src_bytes;
    int group;  // kOpenGroup until the thread's next commit_group
};

struct AsyncState {
    std::vector<PendingCopy> pending;  // in issue order
    int committed = 0;                 // groups committed so far (ids 0..committed-1)
};

std::vector<AsyncState> g_async;  // per CUDA thread of the running block

AsyncState& my_async() { return g_async[(size_t)current_thread_index()]; }

void land(const PendingCopy& c) {
    if (c.src_bytes > 0) memcpy(c.dst, c.src, (size_t)c.src_bytes);
    if (c.src_bytes < c.size) memset(static_cast<char*>(c.dst) + c.src_bytes, 0, (size_t)(c.size - c.src_bytes));
}

// Lands, in issue order, every pending copy whose group is older than `first_kept_group` (and the
// open group's copies too when `include_open`).
void land_until(AsyncState& st, int first_kept_group, bool include_open) {
    size_t kept = 0;
    for (size_t i = 0; i < st.pending.size(); ++i) {
        const PendingCopy& c = st.pending[i];
        const bool due = c.group == kOpenGroup ? include_open : c.group < first_kept_group;
        if (due) land(c);
        else st.pending[kept++] = c;
    }
    st.pending.resize(kept);
}

}  // namespace

// ---- the twins --------------------------------------------------------------------------------------

void tc_mma(MmaKind kind, float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4],
            const char* site_file, int site_line) {
    MmaLane lane{kind, d, a, b, c};
    warp_exchange(0xFFFFFFFFu, 100 + (int)kind, &lane, &mma_complete, mma_name(kind), site_file, site_line);
}

uint32_t tc_f32_to_tf32(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7F800000u) == 0x7F800000u) {
        if (u & 0x007FFFFFu) return 0x7FFFE000u;  // NaN: a NaN (the payload is not specified)
        return u;                                 // infinity
    }
    // Half a TF32 unit added to the magnitude, then truncated: round to nearest, ties away from
    // zero. A carry into the exponent is correct (and past the largest finite value gives inf).
    return (u + 0x1000u) & 0xFFFFE000u;
}

void tc_ldmatrix(uint32_t* r, int matrices, bool trans, const void* smem_row, const char* site_file, int site_line) {
    static const char* const kNames[2][5] = {
        {"", "ldmatrix.sync.aligned.m8n8.x1.shared.b16", "ldmatrix.sync.aligned.m8n8.x2.shared.b16", "",
         "ldmatrix.sync.aligned.m8n8.x4.shared.b16"},
        {"", "ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16", "ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16", "",
         "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16"}};
    const char* what = kNames[trans][matrices];
    const int lane = current_thread_index() & 31;
    // Lanes 8*matrices.. supply no row: their addresses are ignored, as on the hardware.
    if (lane < 8 * matrices) {
        if (!in_shared_memory(smem_row, 16))
            kernel_fault(kIllegalAddress, "(lane " + std::to_string(lane) + ") passes row address " +
                                              hex_addr(smem_row) + " to " + what +
                                              ", which is not 16 bytes inside shared memory");
        if (reinterpret_cast<uintptr_t>(smem_row) % 16 != 0)
            kernel_fault(kMisalignedAddress, "(lane " + std::to_string(lane) + ") passes row address " +
                                                 hex_addr(smem_row) + " to " + what +
                                                 ", which is not 16-byte aligned");
    }
    LdmatrixLane payload{smem_row, r, matrices, trans};
    warp_exchange(0xFFFFFFFFu, 200 + 2 * matrices + (trans ? 1 : 0), &payload, &ldmatrix_complete, what, site_file,
                  site_line);
}

void tc_cp_async(void* dst, const void* src, int size, int src_bytes, const char* what) {
    const std::string w = std::string(what) + " to " + hex_addr(dst) + " from " + hex_addr(src);
    if (src_bytes < 0 || src_bytes > size)
        kernel_fault(kIllegalInstruction, "issues " + w + " with src-size " + std::to_string(src_bytes) +
                                              " (must be 0.." + std::to_string(size) + ")");
    if (!in_shared_memory(dst, (size_t)size))
        kernel_fault(kIllegalAddress, "issues " + w + ": the destination is not " + std::to_string(size) +
                                          " bytes inside shared memory");
    if (reinterpret_cast<uintptr_t>(dst) % (uintptr_t)size != 0 ||
        reinterpret_cast<uintptr_t>(src) % (uintptr_t)size != 0)
        kernel_fault(kMisalignedAddress,
                     "issues " + w + ": source and destination must be " + std::to_string(size) + "-byte aligned");
    // The source is read by the emulator, out of the instrumentation's sight.
    init_check_read(src, (size_t)src_bytes, "cp.async reads");
    // Poison until the copy lands at a wait that covers it.
    memset(dst, 0xFF, (size_t)size);
    my_async().pending.push_back(PendingCopy{dst, src, size, src_bytes, kOpenGroup});
}

void tc_cp_async_commit() {
    AsyncState& st = my_async();
    for (PendingCopy& c : st.pending)
        if (c.group == kOpenGroup) c.group = st.committed;
    ++st.committed;  // an empty group too, as on the hardware: it counts for wait_group
}

void tc_cp_async_wait(int newest_pending_allowed) {
    AsyncState& st = my_async();
    land_until(st, st.committed - newest_pending_allowed, false);
}

// cp.async.wait_all is cp.async.commit_group followed by cp.async.wait_group 0.
void tc_cp_async_wait_all() {
    tc_cp_async_commit();
    tc_cp_async_wait(0);
}

void tc_block_begin(int nthreads) {
    if ((int)g_async.size() < nthreads) g_async.resize((size_t)nthreads);
    for (int i = 0; i < nthreads; ++i) {
        g_async[(size_t)i].pending.clear();
        g_async[(size_t)i].committed = 0;
    }
}

// A thread that exits with copies in flight is a launch failure, not a warning: the ISA leaves
// such copies' completion undefined (they would write shared memory after their thread is gone,
// possibly into the next block's), and a kernel gets there only when its pipeline issues a stage
// that it never waits for: wasted bandwidth at best, a miscounted wait_group at worst. Kernels
// drain the pipeline (cp_async_wait_all) before they return.
void tc_thread_exit() {
    AsyncState& st = my_async();
    if (st.pending.empty()) return;
    const PendingCopy& c = st.pending.front();
    kernel_fault(kLaunchFailed, "returns with " + std::to_string(st.pending.size()) +
                                    " cp.async cop" + (st.pending.size() == 1 ? "y" : "ies") +
                                    " still pending (the oldest: " + std::to_string(c.size) + " bytes to " +
                                    hex_addr(c.dst) + "); wait for them (cp_async_wait_all) before returning");
}

}  // namespace ec_emu
