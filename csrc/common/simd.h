// Portable speed without -march=native: hot loops marked FASTORALS_CLONES are compiled for
// AVX-512, AVX2 and baseline x86-64, and the loader picks the best at run time (GCC ifunc).
// Works on non-template functions only; elsewhere it expands to nothing.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(FASTORALS_NO_CLONES)
#if __GNUC__ >= 12
#define FASTORALS_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define FASTORALS_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#else
#define FASTORALS_CLONES
#endif

#if defined(__GNUC__) || defined(__clang__)
#define FASTORALS_RESTRICT __restrict__
#else
#define FASTORALS_RESTRICT
#endif
