// Bounds of static and dynamic shared memory (see shared_guard.h for what and why).
#include "shared_guard.h"

#include <cxxabi.h>
#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

// Static __shared__ variables of every kernel (cuda_shim.h); the linker defines the bounds.
extern "C" char __start_ec_shared[] __attribute__((weak));
extern "C" char __stop_ec_shared[] __attribute__((weak));

namespace ec_emu {
namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr size_t kDynGuard = 0;  // ASan sees past the exact-size allocation instead
#else
constexpr size_t kDynGuard = 256;
#endif

struct Var {
    uintptr_t lo, hi;
    std::string name;
};

struct Layout {
    std::vector<Var> vars;                                // sorted by address
    std::vector<std::pair<uintptr_t, uintptr_t>> guards;  // every other byte range of the section
    int unguarded_sides = 0;  // variable ends that touch another variable or the section's edge
    bool found = false;       // the symbol table was read
};

std::string demangle(const char* s) {
    int status = 0;
    char* d = abi::__cxa_demangle(s, nullptr, nullptr, &status);
    std::string r = status == 0 && d ? d : s;
    free(d);
    return r;
}

// The extents of the section's variables, from this library's own .symtab (the kernels' local
// statics are there unless the library was stripped; the build never strips it).
Layout read_layout() {
    Layout L;
    const uintptr_t lo = reinterpret_cast<uintptr_t>(__start_ec_shared);
    const uintptr_t hi = reinterpret_cast<uintptr_t>(__stop_ec_shared);
    if (!lo || hi <= lo) return L;
    Dl_info info;
    link_map* map = nullptr;
    if (!dladdr1(reinterpret_cast<void*>(&read_layout), &info, reinterpret_cast<void**>(&map), RTLD_DL_LINKMAP) ||
        !map || !info.dli_fname)
        return L;
    const int fd = open(info.dli_fname, O_RDONLY);
    if (fd < 0) return L;
    struct stat st;
    void* m = fstat(fd, &st) == 0 ? mmap(nullptr, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0) : MAP_FAILED;
    close(fd);
    if (m == MAP_FAILED) return L;
    const char* base = static_cast<const char*>(m);
    const auto* eh = reinterpret_cast<const Elf64_Ehdr*>(base);
    const auto* sh = reinterpret_cast<const Elf64_Shdr*>(base + eh->e_shoff);
    for (int i = 0; i < eh->e_shnum; ++i) {
        if (sh[i].sh_type != SHT_SYMTAB) continue;
        const char* strtab = base + sh[sh[i].sh_link].sh_offset;
        const auto* sym = reinterpret_cast<const Elf64_Sym*>(base + sh[i].sh_offset);
        const size_t n = sh[i].sh_size / sizeof(Elf64_Sym);
        for (size_t k = 0; k < n; ++k) {
            if (ELF64_ST_TYPE(sym[k].st_info) != STT_OBJECT || sym[k].st_size == 0) continue;
            const uintptr_t a = map->l_addr + sym[k].st_value;
            if (a < lo || a >= hi) continue;
            const char* name = strtab + sym[k].st_name;
            if (strstr(name, "ec_shared_guard_")) continue;  // a guard: its bytes stay guard bytes
            L.vars.push_back({a, a + sym[k].st_size, demangle(name)});
        }
        L.found = true;
    }
    munmap(m, st.st_size);
    std::sort(L.vars.begin(), L.vars.end(), [](const Var& a, const Var& b) { return a.lo < b.lo; });
    uintptr_t at = lo;
    for (const Var& v : L.vars) {
        if (v.lo > at) L.guards.push_back({at, v.lo});
        else ++L.unguarded_sides;  // touches the previous variable or the section's start
        at = v.hi > at ? v.hi : at;
    }
    if (at < hi) L.guards.push_back({at, hi});
    else if (!L.vars.empty()) ++L.unguarded_sides;
    return L;
}

const Layout& layout() {
    static const Layout L = read_layout();
    return L;
}

// The first byte of [a, b) that is not 0xFF, or b.
const unsigned char* first_written(const unsigned char* a, const unsigned char* b) {
    for (; a < b && ((reinterpret_cast<uintptr_t>(a) & 7) || b - a < 8); ++a)
        if (*a != 0xFF) return a;
    for (; b - a >= 8; a += 8) {
        uint64_t w;
        memcpy(&w, a, 8);
        if (w != ~0ull) break;
    }
    for (; a < b; ++a)
        if (*a != 0xFF) return a;
    return b;
}

std::string describe_static(uintptr_t bad) {
    const Layout& L = layout();
    const Var* before = nullptr;
    const Var* after = nullptr;
    for (const Var& v : L.vars) {
        if (v.hi <= bad) before = &v;
        else if (v.lo > bad && !after) after = &v;
    }
    char b[512];
    if (before && (!after || bad - before->hi <= after->lo - bad))
        snprintf(b, sizeof b, "byte %zu past the end of __shared__ %s (%zu bytes)", (size_t)(bad - before->hi),
                 before->name.c_str(), (size_t)(before->hi - before->lo));
    else if (after)
        snprintf(b, sizeof b, "byte %zu before the start of __shared__ %s (%zu bytes)", (size_t)(after->lo - bad),
                 after->name.c_str(), (size_t)(after->hi - after->lo));
    else
        snprintf(b, sizeof b, "a guard byte of the static shared memory section");
    return b;
}

}  // namespace

void* smem_alloc_dynamic(size_t bytes) {
    if (!bytes) return nullptr;
    char* p = static_cast<char*>(malloc(bytes + 2 * kDynGuard));
    return p ? p + kDynGuard : nullptr;
}

void smem_free_dynamic(void* p, size_t bytes) {
    (void)bytes;
    if (p) free(static_cast<char*>(p) - kDynGuard);
}

void smem_block_begin(void* dyn, size_t dyn_bytes) {
    char* const lo = __start_ec_shared;
    char* const hi = __stop_ec_shared;
    if (lo && hi > lo) memset(lo, 0xFF, (size_t)(hi - lo));
    if (dyn) memset(static_cast<char*>(dyn) - kDynGuard, 0xFF, dyn_bytes + 2 * kDynGuard);
}

bool smem_guards_intact(void* dyn, size_t dyn_bytes, std::string* what) {
    for (const auto& g : layout().guards) {
        const auto* a = reinterpret_cast<const unsigned char*>(g.first);
        const auto* b = reinterpret_cast<const unsigned char*>(g.second);
        const unsigned char* w = first_written(a, b);
        if (w != b) {
            *what = "out-of-bounds write to shared memory: " + describe_static(reinterpret_cast<uintptr_t>(w)) +
                    " was written";
            return false;
        }
    }
    if (dyn && kDynGuard) {
        const auto* d = static_cast<const unsigned char*>(dyn);
        const unsigned char* w = first_written(d - kDynGuard, d);
        char b[256];
        if (w != d) {
            snprintf(b, sizeof b, "out-of-bounds write to shared memory: byte %zu before the start of the dynamic "
                     "shared memory (%zu bytes) was written", (size_t)(d - w), dyn_bytes);
            *what = b;
            return false;
        }
        w = first_written(d + dyn_bytes, d + dyn_bytes + kDynGuard);
        if (w != d + dyn_bytes + kDynGuard) {
            snprintf(b, sizeof b, "out-of-bounds write to shared memory: byte %zu past the end of the dynamic "
                     "shared memory (%zu bytes) was written", (size_t)(w - d - dyn_bytes), dyn_bytes);
            *what = b;
            return false;
        }
    }
    return true;
}

std::string smem_guard_summary() {
    const Layout& L = layout();
    if (!L.found) return "no static shared guards (no symbol table)";
    char b[128];
    snprintf(b, sizeof b, "shared guards (%zu static variables, %d unguarded sides)", L.vars.size(),
             L.unguarded_sides);
    return b;
}

}  // namespace ec_emu
