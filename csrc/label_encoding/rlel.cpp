// RLEL (Shah & Aamodt, ICLR 2023) CPU kernels:
//  * R1, the error-correction regularizer mean_i sum_j relu(c |y_i - y_j| - ||z_i - z_j||_1),
//    forward and backward without the [B, B, M] difference tensor (O(B M) extra memory);
//  * the per-row part of the fused soft-target cross-entropy + expected-value decoding:
//    from the scores s = z D (one GEMM done by the caller) to (ce, prediction, log-normalizers)
//    in one pass per row, and the score gradient ds in one pass per row.
// Loops over j run on a transposed copy zT [M, B] so that every inner loop is a contiguous,
// vectorizable sweep over j (no horizontal reductions per pair).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/checks.h"
#include "common/parallel.h"
#include "common/registry.h"
#include "common/simd.h"

namespace fastorals::label_encoding {

// ------------------------------------------------------------------------------------------ R1

// d[j] = ||z_i - z_j||_1 for j in (i, B); zT is [M, B].
template <typename T>
static inline __attribute__((always_inline)) void r1_distances(const T* FASTORALS_RESTRICT zT, int64_t i,
                                                                int64_t B, int64_t M,
                                                                T* FASTORALS_RESTRICT d) {
  const int64_t j0 = i + 1;
  const int64_t n = B - j0;
  std::fill(d, d + n, T(0));
  int64_t k = 0;
  for (; k + 4 <= M; k += 4) {  // four bits per sweep: a quarter of the loads/stores of d
    const T z0 = zT[k * B + i], z1 = zT[(k + 1) * B + i], z2 = zT[(k + 2) * B + i], z3 = zT[(k + 3) * B + i];
    const T* FASTORALS_RESTRICT r0 = zT + k * B + j0;
    const T* FASTORALS_RESTRICT r1 = r0 + B;
    const T* FASTORALS_RESTRICT r2 = r1 + B;
    const T* FASTORALS_RESTRICT r3 = r2 + B;
#pragma omp simd
    for (int64_t t = 0; t < n; ++t)
      d[t] += ((std::fabs(z0 - r0[t]) + std::fabs(z1 - r1[t])) + std::fabs(z2 - r2[t])) + std::fabs(z3 - r3[t]);
  }
  for (; k < M; ++k) {
    const T zik = zT[k * B + i];
    const T* FASTORALS_RESTRICT row = zT + k * B + j0;
#pragma omp simd
    for (int64_t t = 0; t < n; ++t) d[t] += std::fabs(zik - row[t]);
  }
}

// sum over j > i of relu(scale |y_i - y_j| - d_ij)
template <typename T>
static inline __attribute__((always_inline)) double r1_row_forward(const T* FASTORALS_RESTRICT zT,
                                                                   const T* FASTORALS_RESTRICT y, int64_t i,
                                                                   int64_t B, int64_t M, T scale,
                                                                   T* FASTORALS_RESTRICT d) {
  r1_distances(zT, i, B, M, d);
  const int64_t j0 = i + 1;
  const int64_t n = B - j0;
  const T yi = y[i];
  const T* FASTORALS_RESTRICT yj = y + j0;
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t t = 0; t < n; ++t) {
    const T pre = std::fabs(yi - yj[t]) * scale - d[t];
    acc += pre > T(0) ? pre : T(0);
  }
  return static_cast<double>(acc);
}

// g_i += sum_{j>i} a_ij sign(z_i - z_j);  g_j -= a_ij sign(z_i - z_j)   (gT is [M, B])
template <typename T>
static inline __attribute__((always_inline)) void r1_row_backward(const T* FASTORALS_RESTRICT zT,
                                                                  const T* FASTORALS_RESTRICT y, int64_t i,
                                                                  int64_t B, int64_t M, T scale,
                                                                  T* FASTORALS_RESTRICT d,
                                                                  T* FASTORALS_RESTRICT gT) {
  r1_distances(zT, i, B, M, d);
  const int64_t j0 = i + 1;
  const int64_t n = B - j0;
  const T yi = y[i];
  const T* FASTORALS_RESTRICT yj = y + j0;
  int64_t active = 0;
#pragma omp simd reduction(+ : active)
  for (int64_t t = 0; t < n; ++t) {
    const T pre = std::fabs(yi - yj[t]) * scale - d[t];
    d[t] = pre > T(0) ? T(1) : T(0);  // d now holds the activity mask a_ij
    active += pre > T(0) ? 1 : 0;
  }
  if (active == 0) return;
  int64_t k = 0;
  for (; k + 4 <= M; k += 4) {  // four bits per sweep over j: the mask is loaded once for all four
    const T z0 = zT[k * B + i], z1 = zT[(k + 1) * B + i], z2 = zT[(k + 2) * B + i], z3 = zT[(k + 3) * B + i];
    const T* FASTORALS_RESTRICT r0 = zT + k * B + j0;
    const T* FASTORALS_RESTRICT r1 = r0 + B;
    const T* FASTORALS_RESTRICT r2 = r1 + B;
    const T* FASTORALS_RESTRICT r3 = r2 + B;
    T* FASTORALS_RESTRICT g0 = gT + k * B + j0;
    T* FASTORALS_RESTRICT g1 = g0 + B;
    T* FASTORALS_RESTRICT g2 = g1 + B;
    T* FASTORALS_RESTRICT g3 = g2 + B;
    T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int64_t t = 0; t < n; ++t) {
      const T a = d[t];
      const T d0 = z0 - r0[t], d1 = z1 - r1[t], d2 = z2 - r2[t], d3 = z3 - r3[t];
      const T e0 = a * (T(d0 > T(0)) - T(d0 < T(0)));
      const T e1 = a * (T(d1 > T(0)) - T(d1 < T(0)));
      const T e2 = a * (T(d2 > T(0)) - T(d2 < T(0)));
      const T e3 = a * (T(d3 > T(0)) - T(d3 < T(0)));
      s0 += e0, s1 += e1, s2 += e2, s3 += e3;
      g0[t] -= e0, g1[t] -= e1, g2[t] -= e2, g3[t] -= e3;
    }
    gT[k * B + i] += s0;
    gT[(k + 1) * B + i] += s1;
    gT[(k + 2) * B + i] += s2;
    gT[(k + 3) * B + i] += s3;
  }
  for (; k < M; ++k) {
    const T zik = zT[k * B + i];
    const T* FASTORALS_RESTRICT row = zT + k * B + j0;
    T* FASTORALS_RESTRICT grow = gT + k * B + j0;
    T gi = 0;  // a sum of +-1 and 0: exact in float up to 2^24 terms
#pragma omp simd reduction(+ : gi)
    for (int64_t t = 0; t < n; ++t) {
      const T diff = zik - row[t];
      const T s = d[t] * (T(diff > T(0)) - T(diff < T(0)));
      gi += s;
      grow[t] -= s;
    }
    gT[k * B + i] += gi;
  }
}

FASTORALS_CLONES static double r1_row_forward_f32(const float* zT, const float* y, int64_t i, int64_t B,
                                                  int64_t M, float scale, float* d) {
  return r1_row_forward<float>(zT, y, i, B, M, scale, d);
}
FASTORALS_CLONES static double r1_row_forward_f64(const double* zT, const double* y, int64_t i, int64_t B,
                                                  int64_t M, double scale, double* d) {
  return r1_row_forward<double>(zT, y, i, B, M, scale, d);
}
FASTORALS_CLONES static void r1_row_backward_f32(const float* zT, const float* y, int64_t i, int64_t B,
                                                 int64_t M, float scale, float* d, float* gT) {
  r1_row_backward<float>(zT, y, i, B, M, scale, d, gT);
}
FASTORALS_CLONES static void r1_row_backward_f64(const double* zT, const double* y, int64_t i, int64_t B,
                                                 int64_t M, double scale, double* d, double* gT) {
  r1_row_backward<double>(zT, y, i, B, M, scale, d, gT);
}

static inline double r1_row_forward_any(const float* zT, const float* y, int64_t i, int64_t B, int64_t M,
                                        float scale, float* d) {
  return r1_row_forward_f32(zT, y, i, B, M, scale, d);
}
static inline double r1_row_forward_any(const double* zT, const double* y, int64_t i, int64_t B, int64_t M,
                                        double scale, double* d) {
  return r1_row_forward_f64(zT, y, i, B, M, scale, d);
}
static inline void r1_row_backward_any(const float* zT, const float* y, int64_t i, int64_t B, int64_t M,
                                       float scale, float* d, float* gT) {
  r1_row_backward_f32(zT, y, i, B, M, scale, d, gT);
}
static inline void r1_row_backward_any(const double* zT, const double* y, int64_t i, int64_t B, int64_t M,
                                       double scale, double* d, double* gT) {
  r1_row_backward_f64(zT, y, i, B, M, scale, d, gT);
}

// One thread per ~256k pair-bit operations: below that a team's wake-up costs more than it saves.
static inline int64_t r1_useful_threads(int64_t B, int64_t M) {
  const int64_t work = B * B / 2 * (M > 0 ? M : 1);
  return std::max<int64_t>(1, work >> 18);
}

static void check_r1_args(const py::array& zT, const py::array& y, const char* zname) {
  check_ndim(zT, 2, zname);
  check_ndim(y, 1, "labels");
  check_dim(y, 0, zT.shape(1), "labels");
}

// Sum over ordered pairs i != j of relu(scale |y_i - y_j| - ||z_i - z_j||_1) (= B * R1).
template <typename T>
static double r1_forward(carray<T> zT, carray<T> y, double scale, int num_threads) {
  check_r1_args(zT, y, "zT");
  const int64_t M = zT.shape(0), B = zT.shape(1);
  const T* zp = zT.data();
  const T* yp = y.data();
  const T sc = static_cast<T>(scale);
  py::gil_scoped_release nogil;
  if (B < 2) return 0.0;
  const int T_ = clamp_threads(num_threads, r1_useful_threads(B, M));
  std::vector<double> partial(static_cast<size_t>(T_) * 8, 0.0);  // padded against false sharing
  std::vector<std::vector<T>> scratch(T_, std::vector<T>(static_cast<size_t>(B)));
  // rows i have B - 1 - i pairs: dynamic schedule over blocks of rows balances the triangle
  const int64_t block = 16;
  const int64_t nblocks = (B + block - 1) / block;
  parallel_for_dynamic(nblocks, T_, [&](int64_t b) {
    const int tid = thread_id();
    T* d = scratch[tid].data();
    double acc = 0.0;
    const int64_t e = std::min(B, (b + 1) * block);
    for (int64_t i = b * block; i < e; ++i) acc += r1_row_forward_any(zp, yp, i, B, M, sc, d);
    partial[static_cast<size_t>(tid) * 8] += acc;
  });
  double total = 0.0;
  for (int t = 0; t < T_; ++t) total += partial[static_cast<size_t>(t) * 8];
  return 2.0 * total;
}

// grad [B, M] = coef * sum_j a_ij sign(z_i - z_j)   (coef = -2 * grad_out / B for R1's mean).
template <typename T>
static void r1_backward(carray<T> zT, carray<T> y, double scale, double coef, carray<T> grad, int num_threads) {
  check_r1_args(zT, y, "zT");
  const int64_t M = zT.shape(0), B = zT.shape(1);
  check_ndim(grad, 2, "grad");
  check_dim(grad, 0, B, "grad");
  check_dim(grad, 1, M, "grad");
  check_writeable(grad, "grad");
  const T* zp = zT.data();
  const T* yp = y.data();
  T* gp = grad.mutable_data();
  const T sc = static_cast<T>(scale);
  py::gil_scoped_release nogil;
  std::fill(gp, gp + B * M, T(0));
  if (B < 2 || M == 0) return;
  const int T_ = clamp_threads(num_threads, r1_useful_threads(B, M));
  // one transposed accumulator per thread: the symmetric update touches rows j of other blocks
  std::vector<std::vector<T>> acc(T_, std::vector<T>(static_cast<size_t>(B * M), T(0)));
  std::vector<std::vector<T>> scratch(T_, std::vector<T>(static_cast<size_t>(B)));
  const int64_t block = 16;
  const int64_t nblocks = (B + block - 1) / block;
  parallel_for_dynamic(nblocks, T_, [&](int64_t b) {
    const int tid = thread_id();
    T* d = scratch[tid].data();
    T* gT = acc[tid].data();
    const int64_t e = std::min(B, (b + 1) * block);
    for (int64_t i = b * block; i < e; ++i) r1_row_backward_any(zp, yp, i, B, M, sc, d, gT);
  });
  // reduce the per-thread accumulators and transpose into grad [B, M]
  const T c = static_cast<T>(coef);
  parallel_chunks(B, T_, [&](int64_t b0, int64_t b1, int) {
    for (int64_t i = b0; i < b1; ++i)
      for (int64_t k = 0; k < M; ++k) {
        T s = 0;
        for (int t = 0; t < T_; ++t) s += acc[t][k * B + i];
        gp[i * M + k] = c * s;
      }
  });
}

// ------------------------------------------------------------------ fused soft-target CE rows

// exp for float, branch-free so the row loops vectorize without -ffast-math: x = n ln2 + r with
// n rounded to nearest by the 1.5 * 2^23 trick (std::floor does not vectorize under the default
// trapping-math), |r| <= ln2/2, degree-7 Taylor polynomial, 2^n through the exponent bits. Max
// relative error ~2 ulp on [-64, 88]. Below -64 it returns exactly 0: every caller adds the
// result to a sum whose largest term is 1 (softmax weights), where e^-64 ~ 1.6e-28 is far below
// float resolution, and an exact zero keeps later products out of the denormal range (whose
// arithmetic is ~100x slower on x86).
static inline __attribute__((always_inline)) float bit_cast_f32(int32_t bits) {
#if defined(__GNUC__) || defined(__clang__)
  return __builtin_bit_cast(float, bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof(float));
  return f;
#endif
}

static inline __attribute__((always_inline)) float exp_f32(float x) {
  const bool tiny = x < -64.0f;
  x = x < -64.0f ? -64.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693145751953125f;
  r = r - n * 1.428606765330187045e-06f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return tiny ? 0.0f : p * bit_cast_f32(bits);
}
static inline __attribute__((always_inline)) double exp_any(double x) { return std::exp(x); }
static inline __attribute__((always_inline)) float exp_any(float x) { return exp_f32(x); }

// Reductions run in kLanes independent accumulators (exact IEEE semantics, vectorizable
// without reassociation); the ragged tail goes through a padded, masked block.
constexpr int kLanes = 16;

// One row: scores s [Q], levels lv [Q] -> {ce, expected value, lse(s), lse(a)} with
// a_q = -|y - l_q| inv_ts. qn is the level nearest to y (where a peaks), used as a's shift.
template <typename T>
static inline __attribute__((always_inline)) void ce_row_forward(const T* FASTORALS_RESTRICT s,
                                                                 const T* FASTORALS_RESTRICT lv, int64_t Q,
                                                                 int64_t qn, T y, T inv_ts, T* out) {
  const int64_t Qv = Q - Q % kLanes;
  T lane_max[kLanes];
  for (int u = 0; u < kLanes; ++u) lane_max[u] = -INFINITY;
  for (int64_t q0 = 0; q0 < Qv; q0 += kLanes)
    for (int u = 0; u < kLanes; ++u) lane_max[u] = s[q0 + u] > lane_max[u] ? s[q0 + u] : lane_max[u];
  T smax = -INFINITY;
  for (int u = 0; u < kLanes; ++u) smax = lane_max[u] > smax ? lane_max[u] : smax;
  for (int64_t q = Qv; q < Q; ++q) smax = s[q] > smax ? s[q] : smax;
  const T amax = -std::fabs(y - lv[qn]) * inv_ts;

  T se[kLanes] = {}, sel[kLanes] = {}, sa[kLanes] = {}, sas[kLanes] = {};
  for (int64_t q0 = 0; q0 < Qv; q0 += kLanes)
    for (int u = 0; u < kLanes; ++u) {
      const T v = s[q0 + u], l = lv[q0 + u];
      const T e = exp_any(v - smax);
      const T t = exp_any(-std::fabs(y - l) * inv_ts - amax);
      se[u] += e;
      sel[u] += e * l;
      sa[u] += t;
      sas[u] += t * v;
    }
  if (Qv < Q) {  // padded tail: pad values keep every term finite, the mask zeroes them
    T vb[kLanes], lb[kLanes], mk[kLanes];
    for (int u = 0; u < kLanes; ++u) {
      const bool ok = Qv + u < Q;
      vb[u] = ok ? s[Qv + u] : smax;
      lb[u] = ok ? lv[Qv + u] : y;
      mk[u] = ok ? T(1) : T(0);
    }
    for (int u = 0; u < kLanes; ++u) {
      const T e = exp_any(vb[u] - smax) * mk[u];
      const T t = exp_any(-std::fabs(y - lb[u]) * inv_ts - amax) * mk[u];
      se[u] += e;
      sel[u] += e * lb[u];
      sa[u] += t;
      sas[u] += t * vb[u];
    }
  }
  T rse = 0, rsel = 0, rsa = 0, rsas = 0;
  for (int u = 0; u < kLanes; ++u) rse += se[u], rsel += sel[u], rsa += sa[u], rsas += sas[u];
  const T lse = smax + std::log(rse);
  out[0] = lse - rsas / rsa;  // ce = lse(s) - sum_q t_q s_q
  out[1] = rsel / rse;        // expected value
  out[2] = lse;
  out[3] = amax + std::log(rsa);
}

// In place: sd holds the scores s on entry, ds_q = gce (p_q - t_q) + gev p_q (l_q - ev) on exit.
template <typename T>
static inline __attribute__((always_inline)) void ce_row_backward(T* FASTORALS_RESTRICT sd,
                                                                  const T* FASTORALS_RESTRICT lv, int64_t Q,
                                                                  T y, T inv_ts, T lse, T lsea, T ev, T gce,
                                                                  T gev) {
  for (int64_t q = 0; q < Q; ++q) {
    const T l = lv[q];
    const T p = exp_any(sd[q] - lse);
    const T t = exp_any(-std::fabs(y - l) * inv_ts - lsea);
    sd[q] = gce * (p - t) + gev * p * (l - ev);
  }
}

static inline int64_t nearest_level(double y, double lo, double step, int64_t Q) {
  const double q = std::nearbyint((y - lo) / step);
  if (!(q > 0)) return 0;  // also NaN
  return q >= double(Q - 1) ? Q - 1 : static_cast<int64_t>(q);
}

#define FASTORALS_CE_ROWS(T, SUFFIX)                                                                      \
  FASTORALS_CLONES static void ce_rows_forward_##SUFFIX(const T* s, const T* lv, const T* y, int64_t b0,   \
                                                        int64_t b1, int64_t Q, double lo, double step,     \
                                                        T inv_ts, T* ce, T* ev, T* lse, T* lsea) {         \
    for (int64_t b = b0; b < b1; ++b) {                                                                   \
      T out[4];                                                                                           \
      ce_row_forward<T>(s + b * Q, lv, Q, nearest_level(y[b], lo, step, Q), y[b], inv_ts, out);           \
      ce[b] = out[0], ev[b] = out[1], lse[b] = out[2], lsea[b] = out[3];                                  \
    }                                                                                                     \
  }                                                                                                       \
  FASTORALS_CLONES static void ce_rows_backward_##SUFFIX(T* sd, const T* lv, const T* y, int64_t b0,       \
                                                         int64_t b1, int64_t Q, T inv_ts, const T* lse,    \
                                                         const T* lsea, const T* ev, const T* gce,         \
                                                         const T* gev) {                                   \
    for (int64_t b = b0; b < b1; ++b)                                                                     \
      ce_row_backward<T>(sd + b * Q, lv, Q, y[b], inv_ts, lse[b], lsea[b], ev[b], gce[b], gev[b]);        \
  }                                                                                                       \
  static inline void ce_rows_forward_any(const T* s, const T* lv, const T* y, int64_t b0, int64_t b1,     \
                                         int64_t Q, double lo, double step, T inv_ts, T* ce, T* ev,       \
                                         T* lse, T* lsea) {                                                \
    ce_rows_forward_##SUFFIX(s, lv, y, b0, b1, Q, lo, step, inv_ts, ce, ev, lse, lsea);                   \
  }                                                                                                       \
  static inline void ce_rows_backward_any(T* sd, const T* lv, const T* y, int64_t b0, int64_t b1,         \
                                          int64_t Q, T inv_ts, const T* lse, const T* lsea, const T* ev,  \
                                          const T* gce, const T* gev) {                                    \
    ce_rows_backward_##SUFFIX(sd, lv, y, b0, b1, Q, inv_ts, lse, lsea, ev, gce, gev);                     \
  }

FASTORALS_CE_ROWS(float, f32)
FASTORALS_CE_ROWS(double, f64)
#undef FASTORALS_CE_ROWS

static void check_vec(const py::array& a, int64_t n, const char* name) {
  check_ndim(a, 1, name);
  check_dim(a, 0, n, name);
}

// scores [B, Q], levels [Q] (l_q = lo + q step), labels [B] -> ce, prediction, lse, lse_target [B].
template <typename T>
static void ce_forward(carray<T> scores, carray<T> levels, carray<T> y, double lo, double step, double inv_ts,
                       carray<T> ce, carray<T> ev, carray<T> lse, carray<T> lsea, int num_threads) {
  check_ndim(scores, 2, "scores");
  const int64_t B = scores.shape(0), Q = scores.shape(1);
  if (Q < 1) throw std::invalid_argument("scores: expected at least one level");
  check_vec(levels, Q, "levels");
  check_vec(y, B, "labels");
  for (auto* a : {&ce, &ev, &lse, &lsea}) {
    check_vec(*a, B, "out");
    check_writeable(*a, "out");
  }
  const T *sp = scores.data(), *lp = levels.data(), *yp = y.data();
  T *cp = ce.mutable_data(), *ep = ev.mutable_data(), *op = lse.mutable_data(), *ap = lsea.mutable_data();
  const T its = static_cast<T>(inv_ts);
  py::gil_scoped_release nogil;
  parallel_chunks(B, clamp_threads(num_threads, (B * Q) / 32768 + 1), [&](int64_t b0, int64_t b1, int) {
    ce_rows_forward_any(sp, lp, yp, b0, b1, Q, lo, step, its, cp, ep, op, ap);
  });
}

// grad_scores holds the scores s = z D on entry and d(sum gce * ce + gev * prediction)/ds on exit.
template <typename T>
static void ce_backward(carray<T> grad_scores, carray<T> levels, carray<T> y, double inv_ts, carray<T> lse,
                        carray<T> lsea, carray<T> ev, carray<T> gce, carray<T> gev, int num_threads) {
  check_ndim(grad_scores, 2, "grad_scores");
  check_writeable(grad_scores, "grad_scores");
  const int64_t B = grad_scores.shape(0), Q = grad_scores.shape(1);
  check_vec(levels, Q, "levels");
  check_vec(y, B, "labels");
  check_vec(lse, B, "lse");
  check_vec(lsea, B, "lse_target");
  check_vec(ev, B, "prediction");
  check_vec(gce, B, "grad_ce");
  check_vec(gev, B, "grad_prediction");
  T* sd = grad_scores.mutable_data();
  const T *lp = levels.data(), *yp = y.data();
  const T *op = lse.data(), *ap = lsea.data(), *ep = ev.data(), *gc = gce.data(), *ge = gev.data();
  const T its = static_cast<T>(inv_ts);
  py::gil_scoped_release nogil;
  parallel_chunks(B, clamp_threads(num_threads, (B * Q) / 32768 + 1), [&](int64_t b0, int64_t b1, int) {
    ce_rows_backward_any(sd, lp, yp, b0, b1, Q, its, op, ap, ep, gc, ge);
  });
}

}  // namespace fastorals::label_encoding

FASTORALS_REGISTER(label_encoding, m) {
  namespace le = fastorals::label_encoding;
  const char* r1f = "R1 forward: sum over ordered pairs of relu(scale |y_i - y_j| - ||z_i - z_j||_1); zT is [M, B].";
  m.def("r1_forward", &le::r1_forward<float>, r1f, py::arg("zT"), py::arg("labels"), py::arg("scale"),
        py::arg("num_threads"));
  m.def("r1_forward", &le::r1_forward<double>, r1f, py::arg("zT"), py::arg("labels"), py::arg("scale"),
        py::arg("num_threads"));
  const char* r1b = "R1 backward: grad[i] = coef * sum_j [active_ij] sign(z_i - z_j); zT is [M, B], grad [B, M].";
  m.def("r1_backward", &le::r1_backward<float>, r1b, py::arg("zT"), py::arg("labels"), py::arg("scale"),
        py::arg("coef"), py::arg("grad"), py::arg("num_threads"));
  m.def("r1_backward", &le::r1_backward<double>, r1b, py::arg("zT"), py::arg("labels"), py::arg("scale"),
        py::arg("coef"), py::arg("grad"), py::arg("num_threads"));
  const char* cef = "Soft-target CE rows: scores [B, Q], levels [Q] -> ce, expected value, lse(scores), lse(targets).";
  m.def("ce_forward", &le::ce_forward<float>, cef, py::arg("scores"), py::arg("levels"), py::arg("labels"),
        py::arg("lo"), py::arg("step"), py::arg("inv_ts"), py::arg("ce"), py::arg("prediction"), py::arg("lse"),
        py::arg("lse_target"), py::arg("num_threads"));
  m.def("ce_forward", &le::ce_forward<double>, cef, py::arg("scores"), py::arg("levels"), py::arg("labels"),
        py::arg("lo"), py::arg("step"), py::arg("inv_ts"), py::arg("ce"), py::arg("prediction"), py::arg("lse"),
        py::arg("lse_target"), py::arg("num_threads"));
  const char* ceb = "Soft-target CE rows backward, in place: grad_scores holds s on entry, d(gce ce + gev pred)/ds on exit.";
  m.def("ce_backward", &le::ce_backward<float>, ceb, py::arg("grad_scores"), py::arg("levels"), py::arg("labels"),
        py::arg("inv_ts"), py::arg("lse"), py::arg("lse_target"), py::arg("prediction"), py::arg("grad_ce"),
        py::arg("grad_prediction"), py::arg("num_threads"));
  m.def("ce_backward", &le::ce_backward<double>, ceb, py::arg("grad_scores"), py::arg("levels"), py::arg("labels"),
        py::arg("inv_ts"), py::arg("lse"), py::arg("lse_target"), py::arg("prediction"), py::arg("grad_ce"),
        py::arg("grad_prediction"), py::arg("num_threads"));
}
