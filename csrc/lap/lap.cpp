// Linear assignment: Jonker-Volgenant (1987) shortest augmenting path solver, exact, with
// column reduction, reduction transfer, augmenting row reduction, and Dijkstra augmentation
// over dense row scans (AVX-512 / AVX2 / scalar kernels picked at run time).
//
// Conventions (internal orientation; Python transposes so that n <= m):
//   cost      n x m, row-major, float32 or float64 (arithmetic is always float64)
//   negate    solve with -cost (maximization) without copying the matrix
//   v         column duals (m,), float64: reduced cost r_ij = c_ij - v_j >= u_i
//   x         row -> column (n,), int64
//   u         row duals (n,), float64, u_i = c_{i,x_i} - v_{x_i} = min_j r_ij
// Invariant kept by every phase: every assigned row's column is a minimum of its reduced costs
// (complementary slackness); for n < m every free column holds the largest dual value.
// The Dijkstra phase then yields an optimal assignment (shortest augmenting paths).
//
// Warm start: v and x from a previous solve of a nearby matrix. Rows whose previous column is
// no longer a reduced-cost minimum are released (and, for n < m, released columns are raised
// to the common free-column dual, releasing the rows that this makes non-minimal in turn);
// augmenting row reduction and Dijkstra then finish from this dual-feasible start, so the
// result is exactly optimal whatever the quality of the warm start.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 flags its own _mm512_undefined_* helpers (self-initialised on purpose) under -Wall
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define FASTORALS_LAP_X86 1
#endif

#include "common/checks.h"
#include "common/parallel.h"
#include "common/registry.h"

namespace fastorals::lap {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr int kWarmArrPasses = 1;

enum Isa : int { kAuto = 0, kScalar = 1, kAvx2 = 2, kAvx512 = 3 };

int best_isa() {
#if defined(FASTORALS_LAP_X86) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")) return kAvx512;
  if (__builtin_cpu_supports("avx2")) return kAvx2;
#endif
  return kScalar;
}

template <typename T, bool NEG>
inline double val(const T* p) {
  const double c = static_cast<double>(*p);
  return NEG ? -c : c;
}

inline bool bad_value(double c) { return std::isnan(c) || c == -kInf; }

// ------------------------------------------------------------------------------------------
// Row kernels. Each exists as scalar, AVX2 and AVX-512 code; all give identical results
// (the same float64 operations per element; ties resolve to the smallest column index).
//
// scan:   d_j = min(d_j, c_j - w_j - off) (pred_j = row where it improves); returns the column
//         of the smallest d_j (smallest index on ties; -1 if all d_j are +inf), min in *dmin.
//         Columns already scanned carry w_j = -inf and d_j = +inf, so they never change.
// twomin: smallest and second smallest of c_j - w_j (u1 at j1, u2), and whether a NaN or
//         -inf entry is present.
// colmin: vmin_j = min(vmin_j, c_j) (imin_j = row on improvement) over a column range;
//         returns whether a NaN or -inf entry is present.
// ------------------------------------------------------------------------------------------

struct TwoMin {
  double u1, u2;
  int64_t j1;
  bool bad;
};

template <typename T, bool NEG>
int64_t scan_scalar(const T* c, const double* w, double* d, int32_t* pred, int32_t row, double off,
                    int64_t m, double* dmin) {
  double best = kInf;
  int64_t bj = -1;
  for (int64_t j = 0; j < m; ++j) {
    const double h = val<T, NEG>(c + j) - w[j] - off;
    double dj = d[j];
    if (h < dj) {
      dj = h;
      d[j] = h;
      pred[j] = row;
    }
    if (dj < best) {
      best = dj;
      bj = j;
    }
  }
  *dmin = best;
  return bj;
}

template <typename T, bool NEG>
TwoMin twomin_scalar(const T* c, const double* w, int64_t m) {
  double u1 = kInf, u2 = kInf;
  int64_t j1 = -1;
  bool bad = false;
  for (int64_t j = 0; j < m; ++j) {
    const double cj = val<T, NEG>(c + j);
    bad |= bad_value(cj);
    const double h = cj - w[j];
    if (h < u1) {
      u2 = u1;
      u1 = h;
      j1 = j;
    } else if (h < u2) {
      u2 = h;
    }
  }
  return {u1, u2, j1, bad};
}

template <typename T, bool NEG>
bool colmin_scalar(const T* c, double* vmin, int32_t* imin, int32_t row, int64_t b, int64_t e) {
  bool bad = false;
  for (int64_t j = b; j < e; ++j) {
    const double cj = val<T, NEG>(c + j);
    bad |= bad_value(cj);
    if (cj < vmin[j]) {
      vmin[j] = cj;
      imin[j] = row;
    }
  }
  return bad;
}

#if defined(FASTORALS_LAP_X86) && defined(__GNUC__)

// ---------------------------------------------------------------------------- AVX-512

#define LAP_AVX512 __attribute__((target("avx512f,avx512vl")))

template <typename T>
LAP_AVX512 inline __m512d load8(const T* p);
template <>
LAP_AVX512 inline __m512d load8<double>(const double* p) {
  return _mm512_loadu_pd(p);
}
template <>
LAP_AVX512 inline __m512d load8<float>(const float* p) {
  return _mm512_cvtps_pd(_mm256_loadu_ps(p));
}
template <typename T>
LAP_AVX512 inline __m512d load8_tail(const T* p, __mmask8 k, __m512d fill);
template <>
LAP_AVX512 inline __m512d load8_tail<double>(const double* p, __mmask8 k, __m512d fill) {
  return _mm512_mask_loadu_pd(fill, k, p);
}
template <>
LAP_AVX512 inline __m512d load8_tail<float>(const float* p, __mmask8 k, __m512d fill) {
  return _mm512_mask_blend_pd(k, fill, _mm512_cvtps_pd(_mm256_maskz_loadu_ps(k, p)));
}

template <bool NEG>
LAP_AVX512 inline __m512d sgn8(__m512d x) {
  return NEG ? _mm512_sub_pd(_mm512_setzero_pd(), x) : x;
}

LAP_AVX512 inline int64_t reduce_argmin8(__m512d best, __m512i bidx, double* out) {
  const double mn = _mm512_reduce_min_pd(best);
  *out = mn;
  if (!(mn < kInf)) return -1;
  const __mmask8 eq = _mm512_cmp_pd_mask(best, _mm512_set1_pd(mn), _CMP_EQ_OQ);
  const __m512i cand = _mm512_mask_blend_epi64(eq, _mm512_set1_epi64(std::numeric_limits<int64_t>::max()), bidx);
  return _mm512_reduce_min_epi64(cand);
}

template <typename T, bool NEG>
LAP_AVX512 int64_t scan_avx512(const T* c, const double* w, double* d, int32_t* pred, int32_t row, double off,
                               int64_t m, double* dmin) {
  const __m512d voff = _mm512_set1_pd(off);
  const __m256i vrow = _mm256_set1_epi32(row);
  const __m512d inf = _mm512_set1_pd(kInf);
  __m512d best = inf;
  __m512i bidx = _mm512_set1_epi64(-1);
  __m512i jv = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
  const __m512i step = _mm512_set1_epi64(8);
  int64_t j = 0;
  for (; j + 8 <= m; j += 8) {
    const __m512d h = _mm512_sub_pd(_mm512_sub_pd(sgn8<NEG>(load8<T>(c + j)), _mm512_loadu_pd(w + j)), voff);
    __m512d dv = _mm512_loadu_pd(d + j);
    const __mmask8 lt = _mm512_cmp_pd_mask(h, dv, _CMP_LT_OQ);
    dv = _mm512_mask_blend_pd(lt, dv, h);
    _mm512_mask_storeu_pd(d + j, lt, h);
    _mm256_mask_storeu_epi32(pred + j, lt, vrow);
    const __mmask8 b = _mm512_cmp_pd_mask(dv, best, _CMP_LT_OQ);
    best = _mm512_mask_blend_pd(b, best, dv);
    bidx = _mm512_mask_blend_epi64(b, bidx, jv);
    jv = _mm512_add_epi64(jv, step);
  }
  if (j < m) {
    const __mmask8 k = static_cast<__mmask8>((1u << (m - j)) - 1u);
    const __m512d h = _mm512_sub_pd(
        _mm512_sub_pd(sgn8<NEG>(load8_tail<T>(c + j, k, _mm512_setzero_pd())), _mm512_maskz_loadu_pd(k, w + j)), voff);
    __m512d dv = _mm512_mask_loadu_pd(inf, k, d + j);
    const __mmask8 lt = _mm512_mask_cmp_pd_mask(k, h, dv, _CMP_LT_OQ);
    dv = _mm512_mask_blend_pd(lt, dv, h);
    _mm512_mask_storeu_pd(d + j, lt, h);
    _mm256_mask_storeu_epi32(pred + j, lt, vrow);
    const __mmask8 b = _mm512_cmp_pd_mask(dv, best, _CMP_LT_OQ);
    best = _mm512_mask_blend_pd(b, best, dv);
    bidx = _mm512_mask_blend_epi64(b, bidx, jv);
  }
  return reduce_argmin8(best, bidx, dmin);
}

template <typename T, bool NEG>
LAP_AVX512 TwoMin twomin_avx512(const T* c, const double* w, int64_t m) {
  const __m512d inf = _mm512_set1_pd(kInf);
  const __m512d ninf = _mm512_set1_pd(-kInf);
  __m512d m1 = inf, m2 = inf;
  __m512i i1 = _mm512_set1_epi64(-1);
  __m512i jv = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
  const __m512i step = _mm512_set1_epi64(8);
  __mmask8 bad = 0;
  int64_t j = 0;
  auto body = [&](__m512d cv, __m512d wv, __mmask8 k) LAP_AVX512 {
    bad |= _mm512_mask_cmp_pd_mask(k, cv, cv, _CMP_UNORD_Q) | _mm512_mask_cmp_pd_mask(k, cv, ninf, _CMP_EQ_OQ);
    __m512d h = _mm512_sub_pd(cv, wv);
    h = _mm512_mask_blend_pd(k, inf, h);
    const __mmask8 lt = _mm512_cmp_pd_mask(h, m1, _CMP_LT_OQ);
    m2 = _mm512_mask_blend_pd(lt, _mm512_min_pd(h, m2), m1);
    m1 = _mm512_mask_blend_pd(lt, m1, h);
    i1 = _mm512_mask_blend_epi64(lt, i1, jv);
    jv = _mm512_add_epi64(jv, step);
  };
  for (; j + 8 <= m; j += 8) body(sgn8<NEG>(load8<T>(c + j)), _mm512_loadu_pd(w + j), 0xFF);
  if (j < m) {
    const __mmask8 k = static_cast<__mmask8>((1u << (m - j)) - 1u);
    body(sgn8<NEG>(load8_tail<T>(c + j, k, _mm512_setzero_pd())), _mm512_maskz_loadu_pd(k, w + j), k);
  }
  alignas(64) double a1[8], a2[8];
  alignas(64) int64_t ai[8];
  _mm512_store_pd(a1, m1);
  _mm512_store_pd(a2, m2);
  _mm512_store_si512(reinterpret_cast<void*>(ai), i1);
  TwoMin r{kInf, kInf, -1, bad != 0};
  int lane = -1;
  for (int l = 0; l < 8; ++l) {
    if (a1[l] < r.u1 || (a1[l] == r.u1 && lane >= 0 && ai[l] < r.j1)) {
      r.u1 = a1[l];
      r.j1 = ai[l];
      lane = l;
    }
  }
  for (int l = 0; l < 8; ++l) {
    r.u2 = std::min(r.u2, a2[l]);
    if (l != lane) r.u2 = std::min(r.u2, a1[l]);
  }
  return r;
}

template <typename T, bool NEG>
LAP_AVX512 bool colmin_avx512(const T* c, double* vmin, int32_t* imin, int32_t row, int64_t b, int64_t e) {
  const __m512d ninf = _mm512_set1_pd(-kInf);
  const __m256i vrow = _mm256_set1_epi32(row);
  __mmask8 bad = 0;
  int64_t j = b;
  for (; j + 8 <= e; j += 8) {
    const __m512d cv = sgn8<NEG>(load8<T>(c + j));
    bad |= _mm512_cmp_pd_mask(cv, cv, _CMP_UNORD_Q) | _mm512_cmp_pd_mask(cv, ninf, _CMP_EQ_OQ);
    const __m512d mv = _mm512_loadu_pd(vmin + j);
    const __mmask8 lt = _mm512_cmp_pd_mask(cv, mv, _CMP_LT_OQ);
    _mm512_mask_storeu_pd(vmin + j, lt, cv);
    _mm256_mask_storeu_epi32(imin + j, lt, vrow);
  }
  if (j < e) {
    const __mmask8 k = static_cast<__mmask8>((1u << (e - j)) - 1u);
    const __m512d cv = sgn8<NEG>(load8_tail<T>(c + j, k, _mm512_setzero_pd()));
    bad |= _mm512_mask_cmp_pd_mask(k, cv, cv, _CMP_UNORD_Q) | _mm512_mask_cmp_pd_mask(k, cv, ninf, _CMP_EQ_OQ);
    const __m512d mv = _mm512_maskz_loadu_pd(k, vmin + j);
    const __mmask8 lt = _mm512_mask_cmp_pd_mask(k, cv, mv, _CMP_LT_OQ);
    _mm512_mask_storeu_pd(vmin + j, lt, cv);
    _mm256_mask_storeu_epi32(imin + j, lt, vrow);
  }
  return bad != 0;
}

// ---------------------------------------------------------------------------- AVX2

#define LAP_AVX2 __attribute__((target("avx2")))

template <typename T>
LAP_AVX2 inline __m256d load4(const T* p);
template <>
LAP_AVX2 inline __m256d load4<double>(const double* p) {
  return _mm256_loadu_pd(p);
}
template <>
LAP_AVX2 inline __m256d load4<float>(const float* p) {
  return _mm256_cvtps_pd(_mm_loadu_ps(p));
}

template <bool NEG>
LAP_AVX2 inline __m256d sgn4(__m256d x) {
  return NEG ? _mm256_sub_pd(_mm256_setzero_pd(), x) : x;
}

// 4 x 64-bit lane mask -> 4 x 32-bit lane mask
LAP_AVX2 inline __m128i mask32(__m256d m) {
  const __m256i idx = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
  return _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(_mm256_castpd_si256(m), idx));
}

LAP_AVX2 inline int64_t reduce_argmin4(__m256d best, __m256i bidx, double* out) {
  alignas(32) double b[4];
  alignas(32) int64_t ix[4];
  _mm256_store_pd(b, best);
  _mm256_store_si256(reinterpret_cast<__m256i*>(ix), bidx);
  double mn = kInf;
  int64_t j = -1;
  for (int l = 0; l < 4; ++l) {
    if (b[l] < mn || (b[l] == mn && j >= 0 && ix[l] < j)) {
      mn = b[l];
      j = ix[l];
    }
  }
  *out = mn;
  return j;
}

template <typename T, bool NEG>
LAP_AVX2 int64_t scan_avx2(const T* c, const double* w, double* d, int32_t* pred, int32_t row, double off,
                           int64_t m, double* dmin) {
  const __m256d voff = _mm256_set1_pd(off);
  const __m128i vrow = _mm_set1_epi32(row);
  __m256d best = _mm256_set1_pd(kInf);
  __m256i bidx = _mm256_set1_epi64x(-1);
  __m256i jv = _mm256_setr_epi64x(0, 1, 2, 3);
  const __m256i step = _mm256_set1_epi64x(4);
  int64_t j = 0;
  for (; j + 4 <= m; j += 4) {
    const __m256d h = _mm256_sub_pd(_mm256_sub_pd(sgn4<NEG>(load4<T>(c + j)), _mm256_loadu_pd(w + j)), voff);
    __m256d dv = _mm256_loadu_pd(d + j);
    const __m256d lt = _mm256_cmp_pd(h, dv, _CMP_LT_OQ);
    dv = _mm256_blendv_pd(dv, h, lt);
    _mm256_storeu_pd(d + j, dv);
    _mm_maskstore_epi32(pred + j, mask32(lt), vrow);
    const __m256d b = _mm256_cmp_pd(dv, best, _CMP_LT_OQ);
    best = _mm256_blendv_pd(best, dv, b);
    bidx = _mm256_castpd_si256(_mm256_blendv_pd(_mm256_castsi256_pd(bidx), _mm256_castsi256_pd(jv), b));
    jv = _mm256_add_epi64(jv, step);
  }
  double mn;
  int64_t bj = reduce_argmin4(best, bidx, &mn);
  for (; j < m; ++j) {
    const double h = val<T, NEG>(c + j) - w[j] - off;
    double dj = d[j];
    if (h < dj) {
      dj = h;
      d[j] = h;
      pred[j] = row;
    }
    if (dj < mn) {
      mn = dj;
      bj = j;
    }
  }
  *dmin = mn;
  return bj;
}

template <typename T, bool NEG>
LAP_AVX2 TwoMin twomin_avx2(const T* c, const double* w, int64_t m) {
  const __m256d inf = _mm256_set1_pd(kInf);
  const __m256d ninf = _mm256_set1_pd(-kInf);
  __m256d m1 = inf, m2 = inf, bad = _mm256_setzero_pd();
  __m256i i1 = _mm256_set1_epi64x(-1);
  __m256i jv = _mm256_setr_epi64x(0, 1, 2, 3);
  const __m256i step = _mm256_set1_epi64x(4);
  int64_t j = 0;
  for (; j + 4 <= m; j += 4) {
    const __m256d cv = sgn4<NEG>(load4<T>(c + j));
    bad = _mm256_or_pd(bad, _mm256_or_pd(_mm256_cmp_pd(cv, cv, _CMP_UNORD_Q), _mm256_cmp_pd(cv, ninf, _CMP_EQ_OQ)));
    const __m256d h = _mm256_sub_pd(cv, _mm256_loadu_pd(w + j));
    const __m256d lt = _mm256_cmp_pd(h, m1, _CMP_LT_OQ);
    m2 = _mm256_blendv_pd(_mm256_min_pd(h, m2), m1, lt);
    m1 = _mm256_blendv_pd(m1, h, lt);
    i1 = _mm256_castpd_si256(_mm256_blendv_pd(_mm256_castsi256_pd(i1), _mm256_castsi256_pd(jv), lt));
    jv = _mm256_add_epi64(jv, step);
  }
  alignas(32) double a1[4], a2[4];
  alignas(32) int64_t ai[4];
  _mm256_store_pd(a1, m1);
  _mm256_store_pd(a2, m2);
  _mm256_store_si256(reinterpret_cast<__m256i*>(ai), i1);
  TwoMin r{kInf, kInf, -1, _mm256_movemask_pd(bad) != 0};
  int lane = -1;
  for (int l = 0; l < 4; ++l) {
    if (a1[l] < r.u1 || (a1[l] == r.u1 && lane >= 0 && ai[l] < r.j1)) {
      r.u1 = a1[l];
      r.j1 = ai[l];
      lane = l;
    }
  }
  for (int l = 0; l < 4; ++l) {
    r.u2 = std::min(r.u2, a2[l]);
    if (l != lane) r.u2 = std::min(r.u2, a1[l]);
  }
  for (; j < m; ++j) {
    const double cj = val<T, NEG>(c + j);
    r.bad |= bad_value(cj);
    const double h = cj - w[j];
    if (h < r.u1) {
      r.u2 = r.u1;
      r.u1 = h;
      r.j1 = j;
    } else if (h < r.u2) {
      r.u2 = h;
    }
  }
  return r;
}

template <typename T, bool NEG>
LAP_AVX2 bool colmin_avx2(const T* c, double* vmin, int32_t* imin, int32_t row, int64_t b, int64_t e) {
  const __m256d ninf = _mm256_set1_pd(-kInf);
  const __m128i vrow = _mm_set1_epi32(row);
  __m256d bad = _mm256_setzero_pd();
  int64_t j = b;
  for (; j + 4 <= e; j += 4) {
    const __m256d cv = sgn4<NEG>(load4<T>(c + j));
    bad = _mm256_or_pd(bad, _mm256_or_pd(_mm256_cmp_pd(cv, cv, _CMP_UNORD_Q), _mm256_cmp_pd(cv, ninf, _CMP_EQ_OQ)));
    const __m256d mv = _mm256_loadu_pd(vmin + j);
    const __m256d lt = _mm256_cmp_pd(cv, mv, _CMP_LT_OQ);
    _mm256_storeu_pd(vmin + j, _mm256_blendv_pd(mv, cv, lt));
    _mm_maskstore_epi32(imin + j, mask32(lt), vrow);
  }
  bool any = _mm256_movemask_pd(bad) != 0;
  return colmin_scalar<T, NEG>(c, vmin, imin, row, j, e) || any;
}

#endif  // x86

// Kernel table for one (T, NEG) and ISA.
template <typename T, bool NEG>
struct Kernels {
  int64_t (*scan)(const T*, const double*, double*, int32_t*, int32_t, double, int64_t, double*);
  TwoMin (*twomin)(const T*, const double*, int64_t);
  bool (*colmin)(const T*, double*, int32_t*, int32_t, int64_t, int64_t);

  static Kernels make(int isa) {
#if defined(FASTORALS_LAP_X86) && defined(__GNUC__)
    if (isa == kAvx512)
      return {&scan_avx512<T, NEG>, &twomin_avx512<T, NEG>, &colmin_avx512<T, NEG>};
    if (isa == kAvx2) return {&scan_avx2<T, NEG>, &twomin_avx2<T, NEG>, &colmin_avx2<T, NEG>};
#endif
    (void)isa;
    return {&scan_scalar<T, NEG>, &twomin_scalar<T, NEG>, &colmin_scalar<T, NEG>};
  }
};

// Runs fn(block) for every block; serially (no OpenMP region) when one thread or one block.
template <typename F>
void for_blocks(int64_t blocks, int threads, F&& fn) {
  if (blocks <= 0) return;
  if (threads <= 1 || blocks == 1) {
    for (int64_t b = 0; b < blocks; ++b) fn(b);
    return;
  }
  parallel_for_dynamic(blocks, threads, fn);
}

class InvalidCost : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};
class Infeasible : public std::domain_error {
 public:
  using std::domain_error::domain_error;
};

struct Stats {
  int64_t free_after_init = 0;  // rows left for Dijkstra after initialization
  int64_t arr_steps = 0;        // augmenting row reduction row scans
  int64_t dijkstra_scans = 0;   // Dijkstra row scans
  int64_t released = 0;         // warm start: previous pairs released
};

// ------------------------------------------------------------------------------------------
// The solver.
// ------------------------------------------------------------------------------------------
template <typename T, bool NEG>
class Solver {
 public:
  Solver(const T* cost, int64_t n, int64_t m, double* v, int64_t* x, int isa, int threads)
      : C_(cost), n_(n), m_(m), v_(v), x_(x), k_(Kernels<T, NEG>::make(isa)), threads_(threads),
        y_(m, -1), d_(m, kInf), w_(m), dS_(m), pred_(m, 0) {}

  Stats cold() {
    for (int64_t i = 0; i < n_; ++i) x_[i] = -1;
    std::vector<int32_t> free_rows;
    if (n_ == m_) {
      column_reduction(free_rows);
    } else {
      for (int64_t j = 0; j < m_; ++j) v_[j] = 0.0;
      free_rows.resize(n_);
      for (int64_t i = 0; i < n_; ++i) free_rows[i] = static_cast<int32_t>(i);
    }
    arr(free_rows, 2);
    stats_.free_after_init = static_cast<int64_t>(free_rows.size());
    augment_all(free_rows);
    return stats_;
  }

  Stats warm() {
    std::vector<int32_t> free_rows;
    warm_init(free_rows);
    arr(free_rows, kWarmArrPasses);
    stats_.free_after_init = static_cast<int64_t>(free_rows.size());
    augment_all(free_rows);
    return stats_;
  }

  void row_duals(double* u) const {
    for (int64_t i = 0; i < n_; ++i) u[i] = val<T, NEG>(row(i) + x_[i]) - v_[x_[i]];
  }

 private:
  const T* row(int64_t i) const { return C_ + i * m_; }

  [[noreturn]] void invalid() const {
    throw InvalidCost("cost: expected finite values or +inf (forbidden pairs); found NaN or -inf");
  }
  [[noreturn]] void infeasible(int64_t i, const char* what = "row") const {
    throw Infeasible(std::string("cost: infeasible assignment: ") + what + " " + std::to_string(i) +
                     " cannot be matched through finite entries (too many +inf / forbidden pairs)");
  }

  // Column reduction (square): v_j = min_i c_ij; each column goes to its minimum row if that
  // row is still unmatched (columns visited from last to first); then reduction transfer.
  void column_reduction(std::vector<int32_t>& free_rows) {
    std::vector<int32_t> imin(m_, -1);
    for (int64_t j = 0; j < m_; ++j) v_[j] = kInf;
    const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(threads_, m_ / 256));
    std::vector<char> bad(blocks, 0);
    for_blocks(blocks, static_cast<int>(blocks), [&](int64_t blk) {
      const int64_t b = m_ * blk / blocks, e = m_ * (blk + 1) / blocks;
      bool any = false;
      for (int64_t i = 0; i < n_; ++i) any |= k_.colmin(row(i), v_, imin.data(), static_cast<int32_t>(i), b, e);
      bad[blk] = any;
    });
    for (char b : bad)
      if (b) invalid();
    reduce_from_column_minima(imin, free_rows);
  }

  // Given v = column minima and their rows: each column goes to its minimum row if that row is
  // still unmatched (columns visited from last to first); then reduction transfer.
  void reduce_from_column_minima(const std::vector<int32_t>& imin, std::vector<int32_t>& free_rows) {
    std::vector<int32_t> matches(n_, 0);
    for (int64_t j = m_ - 1; j >= 0; --j) {
      if (!(v_[j] < kInf)) infeasible(j, "column");  // all forbidden, in a square problem
      const int32_t i = imin[j];
      if (matches[i]++ == 0) {
        x_[i] = j;
        y_[j] = i;
      }
    }
    // reduction transfer, against a snapshot of v (parallel over rows; see header for why
    // the invariant holds): row i keeps its column, whose dual drops to tie i's second best.
    std::vector<int32_t> single;
    for (int64_t i = 0; i < n_; ++i) {
      if (matches[i] == 0) free_rows.push_back(static_cast<int32_t>(i));
      else if (matches[i] == 1) single.push_back(static_cast<int32_t>(i));
    }
    if (free_rows.empty()) return;  // every row got a column at reduced cost 0: already optimal
    std::vector<double> mu(single.size());
    for_blocks(static_cast<int64_t>((single.size() + 63) / 64), threads_, [&](int64_t blk) {
      const int64_t b = blk * 64, e = std::min<int64_t>(b + 64, single.size());
      for (int64_t s = b; s < e; ++s) {
        const int32_t i = single[s];
        const TwoMin t = k_.twomin(row(i), v_, m_);
        mu[s] = (t.j1 == x_[i]) ? t.u2 : t.u1;
      }
    });
    for (size_t s = 0; s < single.size(); ++s) {
      if (mu[s] < kInf) v_[x_[single[s]]] -= mu[s];
    }
  }

  // Augmenting row reduction (Jonker-Volgenant): a free row takes its best column, lowering
  // that column's dual to tie the row's second best; a displaced row continues at once.
  void arr(std::vector<int32_t>& free_rows, int passes) {
    std::vector<int32_t> next;
    for (int pass = 0; pass < passes && !free_rows.empty(); ++pass) {
      next.clear();
      int64_t budget = 4 * n_ + 64;
      for (int32_t start : free_rows) {
        int32_t i = start;
        while (i >= 0) {
          TwoMin t = k_.twomin(row(i), v_, m_);
          ++stats_.arr_steps;
          if (t.bad) invalid();
          if (!(t.u1 < kInf)) infeasible(i);
          int64_t j1 = t.j1;
          int32_t i0 = y_[j1];
          const bool lower = t.u1 < t.u2 && t.u2 < kInf;
          if (lower) {
            v_[j1] -= t.u2 - t.u1;
          } else if (i0 >= 0 && t.u2 < kInf) {
            // tie: prefer a column that is free; find the second best column explicitly
            const int64_t j2 = second_column(i, t);
            if (j2 >= 0) {
              j1 = j2;
              i0 = y_[j1];
            }
          }
          x_[i] = j1;
          y_[j1] = i;
          if (i0 >= 0) {
            x_[i0] = -1;
            if (lower && --budget > 0) {
              i = i0;
              continue;
            }
            next.push_back(i0);
          }
          i = -1;
        }
      }
      free_rows.swap(next);
    }
  }

  // Column j != t.j1 achieving t.u2 in row i (the tie partner), or -1.
  int64_t second_column(int32_t i, const TwoMin& t) const {
    const T* c = row(i);
    for (int64_t j = 0; j < m_; ++j) {
      if (j != t.j1 && val<T, NEG>(c + j) - v_[j] == t.u2) return j;
    }
    return -1;
  }

  void warm_init(std::vector<int32_t>& free_rows) {
    // previous assignment: drop out-of-range and duplicate columns
    for (int64_t i = 0; i < n_; ++i) {
      const int64_t j = x_[i];
      if (j < 0 || j >= m_ || y_[j] >= 0 || !std::isfinite(v_[j])) {
        x_[i] = -1;
      } else {
        y_[j] = static_cast<int32_t>(i);
      }
    }
    for (int64_t j = 0; j < m_; ++j) {
      if (std::isnan(v_[j])) v_[j] = 0.0;
      else if (std::isinf(v_[j])) v_[j] = 0.0;
    }
    // One pass over the matrix: the two smallest reduced costs of every row under the warm duals
    // (is the previous column still a minimum? by how much?) and the NaN / -inf checks.
    std::vector<char> keep(n_, 0);
    std::vector<double> r(n_, kInf);    // r_i = reduced cost of row i at its column
    std::vector<double> gap(n_, 0.0);   // second best minus best reduced cost of row i, if its column is the best
    std::vector<char> bad(n_, 0);
    const int nt = clamp_threads(threads_, std::max<int64_t>(1, n_ / 64));
    auto body = [&](int64_t b, int64_t e, int) {
      for (int64_t i = b; i < e; ++i) {
        const TwoMin t = k_.twomin(row(i), v_, m_);
        bad[i] = t.bad;
        const int64_t j = x_[i];
        if (j >= 0) {
          const double rij = val<T, NEG>(row(i) + j) - v_[j];
          r[i] = rij;
          // a previous pair is kept when its column is still a reduced-cost minimum, up to the
          // rounding of the float64 dual arithmetic (a few ulps of the magnitudes involved)
          const double tol = 0x1p-44 * (std::fabs(val<T, NEG>(row(i) + j)) + std::fabs(v_[j]));
          keep[i] = rij <= t.u1 + tol && rij < kInf;
          if (t.j1 == j && t.u2 < kInf) gap[i] = t.u2 - t.u1;
        }
      }
    };
    if (nt == 1) body(0, n_, 0);
    else parallel_chunks(n_, nt, body);
    for (int64_t i = 0; i < n_; ++i)
      if (bad[i]) invalid();
    for (int64_t i = 0; i < n_; ++i) {
      if (x_[i] >= 0 && !keep[i]) {
        y_[x_[i]] = -1;
        x_[i] = -1;
        ++stats_.released;
      }
    }
    if (stats_.released > 0 && n_ == m_) {
      // reduction transfer on the kept rows, from the two minima already computed: each kept
      // column's dual drops to tie its row's second best, which makes it less attractive to the
      // released rows (their augmenting row reduction then finds free columns quickly). Square
      // problems only: for n < m the free-column repair below changes reduced costs first.
      for (int64_t i = 0; i < n_; ++i)
        if (x_[i] >= 0 && gap[i] > 0) v_[x_[i]] -= gap[i];
    }
    if (n_ < m_) {
      // every free column must hold the largest dual: raise released / free columns to it,
      // releasing the rows whose column stops being a reduced-cost minimum.
      double M = -kInf;
      for (int64_t j = 0; j < m_; ++j) M = std::max(M, v_[j]);
      std::vector<int64_t> work;
      for (int64_t j = 0; j < m_; ++j)
        if (y_[j] < 0 && v_[j] < M) work.push_back(j);
      while (!work.empty()) {
        const int64_t j = work.back();
        work.pop_back();
        if (y_[j] >= 0 || !(v_[j] < M)) continue;
        v_[j] = M;
        for (int64_t k = 0; k < n_; ++k) {
          const int64_t jk = x_[k];
          if (jk < 0) continue;
          if (val<T, NEG>(row(k) + j) - M < r[k]) {
            x_[k] = -1;
            y_[jk] = -1;
            ++stats_.released;
            if (v_[jk] < M) work.push_back(jk);
          }
        }
      }
    }
    for (int64_t i = 0; i < n_; ++i)
      if (x_[i] < 0) free_rows.push_back(static_cast<int32_t>(i));
  }

  void augment_all(const std::vector<int32_t>& free_rows) {
    if (free_rows.empty()) return;
    for (int64_t j = 0; j < m_; ++j) w_[j] = v_[j];
    S_.reserve(64);
    for (int32_t f : free_rows) augment(f);
  }

  // Dijkstra from free row f over reduced costs; columns are scanned in order of distance;
  // stops at the first free column; then updates duals of scanned columns and flips the path.
  void augment(int32_t f) {
    S_.clear();
    int32_t i = f;
    double off = 0.0;
    double mu = 0.0;
    int64_t end = -1;
    for (;;) {
      double dmin;
      const int64_t j = k_.scan(row(i), w_.data(), d_.data(), pred_.data(), i, off, m_, &dmin);
      ++stats_.dijkstra_scans;
      if (j < 0) infeasible(f);
      mu = dmin;
      if (y_[j] < 0) {
        end = j;
        break;
      }
      S_.push_back(static_cast<int32_t>(j));
      dS_[j] = dmin;
      d_[j] = kInf;
      w_[j] = -kInf;
      i = y_[j];
      off = (val<T, NEG>(row(i) + j) - v_[j]) - mu;
    }
    for (int32_t j : S_) {
      v_[j] += dS_[j] - mu;
      w_[j] = v_[j];
    }
    std::fill(d_.begin(), d_.end(), kInf);
    int64_t j = end;
    for (;;) {
      const int32_t r = pred_[j];
      y_[j] = r;
      const int64_t prev = x_[r];
      x_[r] = j;
      if (r == f) break;
      j = prev;
    }
  }

  const T* C_;
  int64_t n_, m_;
  double* v_;
  int64_t* x_;
  Kernels<T, NEG> k_;
  int threads_;
  std::vector<int32_t> y_;
  std::vector<double> d_, w_, dS_;
  std::vector<int32_t> pred_;
  std::vector<int32_t> S_;
  Stats stats_;
};

template <typename T>
py::dict solve_impl(carray<T> cost, bool negate, carray<double> v, carray<int64_t> x, carray<double> u, bool warm,
                    int isa, int num_threads) {
  check_ndim(cost, 2, "cost");
  const int64_t n = cost.shape(0), m = cost.shape(1);
  if (n > m) throw std::invalid_argument("cost: expected rows <= columns (transpose first), got shape " + shape_str(cost));
  if (m >= (int64_t{1} << 31)) throw std::invalid_argument("cost: more than 2^31 - 1 columns");
  check_out_vector(v, m, "col_duals");
  check_out_vector(x, n, "row_to_col");
  check_out_vector(u, n, "row_duals");
  const T* c = cost.data();
  double* vp = v.mutable_data();
  int64_t* xp = x.mutable_data();
  double* up = u.mutable_data();
  int chosen = isa == kAuto ? best_isa() : std::min(isa, best_isa());
  const int threads = clamp_threads(num_threads, 1 << 20);
  Stats st;
  {
    py::gil_scoped_release nogil;
    if (n > 0) {
      if (negate) {
        Solver<T, true> s(c, n, m, vp, xp, chosen, threads);
        st = warm ? s.warm() : s.cold();
        s.row_duals(up);
      } else {
        Solver<T, false> s(c, n, m, vp, xp, chosen, threads);
        st = warm ? s.warm() : s.cold();
        s.row_duals(up);
      }
    }
  }
  py::dict out;
  out["free_after_init"] = st.free_after_init;
  out["arr_steps"] = st.arr_steps;
  out["dijkstra_scans"] = st.dijkstra_scans;
  out["released"] = st.released;
  out["isa"] = chosen == kAvx512 ? "avx512" : (chosen == kAvx2 ? "avx2" : "scalar");
  return out;
}

}  // namespace

}  // namespace fastorals::lap

FASTORALS_REGISTER(lap, m) {
  using namespace fastorals::lap;
  static const char* doc =
      "Exact linear assignment (Jonker-Volgenant) on a rows <= columns cost matrix, minimizing "
      "(or maximizing with negate=True). Writes row_to_col, col_duals and row_duals in place. "
      "warm=True starts from the given col_duals and row_to_col. isa: 0 auto, 1 scalar, 2 avx2, "
      "3 avx512. Returns a dict of counters.";
  m.def("solve_f64", &solve_impl<double>, doc, py::arg("cost"), py::arg("negate"), py::arg("col_duals"),
        py::arg("row_to_col"), py::arg("row_duals"), py::arg("warm"), py::arg("isa") = 0, py::arg("num_threads") = 0);
  m.def("solve_f32", &solve_impl<float>, doc, py::arg("cost"), py::arg("negate"), py::arg("col_duals"),
        py::arg("row_to_col"), py::arg("row_duals"), py::arg("warm"), py::arg("isa") = 0, py::arg("num_threads") = 0);
  m.def("best_isa", []() {
    const int i = best_isa();
    return std::string(i == kAvx512 ? "avx512" : (i == kAvx2 ? "avx2" : "scalar"));
  });
  py::register_exception<InvalidCost>(m, "InvalidCostError", PyExc_ValueError);
  py::register_exception<Infeasible>(m, "InfeasibleError", PyExc_ValueError);
}
