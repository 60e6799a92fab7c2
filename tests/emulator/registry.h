// Helpers of the generated reg_<module>.cpp files (see gen_registry.py): a launcher that unpacks
// `void** kernelParams` by the kernel's own signature, and compile-time parameter sizes.
#pragma once

#include <stdint.h>
#include <string.h>

#include <array>
#include <type_traits>
#include <utility>

#include "emu.h"

namespace ec_emu {

template <class... A> constexpr std::array<uint32_t, sizeof...(A)> param_sizes(void (*)(A...)) {
    return {{(uint32_t)sizeof(A)...}};
}

template <size_t N> constexpr bool same_sizes(const std::array<uint32_t, N>& a, const std::array<uint32_t, N>& b) {
    for (size_t i = 0; i < N; ++i)
        if (a[i] != b[i]) return false;
    return true;
}
template <size_t N, size_t M>
constexpr bool same_sizes(const std::array<uint32_t, N>&, const std::array<uint32_t, M>&) {
    return false;  // a different number of parameters
}

// Reads parameter I (a copy of the launch's argument bytes, as the hardware's parameter space).
template <class T> T load_param(void* p) {
    static_assert(std::is_trivially_copyable<T>::value, "kernel parameters are copied bytewise");
    typename std::remove_cv<T>::type v;
    memcpy(&v, p, sizeof v);
    return v;
}

template <class... A> struct Invoker {
    template <size_t... I> static void call(void (*f)(A...), void** params, std::index_sequence<I...>) {
        f(load_param<A>(params[I])...);
    }
    static void invoke(void* fn, void** params) {
        call(reinterpret_cast<void (*)(A...)>(fn), params, std::index_sequence_for<A...>{});
    }
};

template <class... A> constexpr Invoke invoker(void (*)(A...)) { return &Invoker<A...>::invoke; }

struct Registrar {
    Registrar(const char* module, const EntryInfo* entries, int count) { register_module(module, entries, count); }
};

}  // namespace ec_emu
