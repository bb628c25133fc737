// k-means (Lloyd) on the CPU: one fused pass = nearest-centre assignment + per-cluster sums.
//
// Assignment is exact with respect to the reference definition (fastorals/behavior/reference.py):
// the nearest centre minimises the float64 distance sum_d (x_d - c_d)^2 accumulated in order
// d = 0..D-1, ties going to the lowest centre index.
//
// 1. Screening, vectorised with points in SIMD lanes (16 float / 8 double per 64-byte vector,
//    two vectors per group when D <= 8): for every centre k, s_k = |c_k|^2 - 2 x.c_k in the input
//    precision (FMA where the CPU has it), keeping per lane the best value, its index (strict <,
//    so the lowest index among equal values) and the second best value.
// 2. Certification, per point: with unit roundoff u, |s_k - (|x - c_k|^2 - |x|^2)| <=
//    (2D + 2) u (|x|^2 + |c_k|^2), so when second - best exceeds twice that bound for every
//    centre (we use (8D + 16) u (|x|^2 + max_k |c_k|^2) + a denormal floor) the screened winner is
//    the exact winner. Otherwise (near ties, exact ties) all K distances are recomputed exactly
//    in float64, in the reference order, without FMA contraction.
// 3. Optional distance bounds (Hamerly): per point an upper bound u on the distance to its centre
//    and a lower bound l on the distance to every other centre, both rigorous (derived from the
//    certified screening values with their error bound, rounded outwards, stored in float32).
//    When the centres move by delta_k, u += delta_own and l -= max_{k != own} delta_k; a point
//    whose u < max(l, half the distance from its centre to the nearest other centre) provably
//    keeps its centre (strictly nearer in exact arithmetic), so it is not scanned; otherwise u is
//    tightened with the exact distance and, if that does not settle it, the point is screened.
//    Labels are therefore the same with or without bounds.
// 4. Every point is added to float64 per-cluster sums of its block, in index order; blocks (fixed
//    size, independent of the thread count) are merged in block order, so the result is bitwise
//    reproducible for any number of threads.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

#include <pybind11/stl.h>

#include "common/checks.h"
#include "common/parallel.h"
#include "common/registry.h"
#include "common/simd.h"

namespace fastorals::kmeans {

namespace {

typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef double v8d __attribute__((vector_size(64)));
typedef int64_t v8l __attribute__((vector_size(64)));
typedef float v8f __attribute__((vector_size(32)));

template <typename T>
struct VT;
template <>
struct VT<float> {
  using V = v16f;
  using IV = v16i;
  using I = int32_t;
  static constexpr int L = 16;
};
template <>
struct VT<double> {
  using V = v8d;
  using IV = v8l;
  using I = int64_t;
  static constexpr int L = 8;
};

constexpr int64_t kBlock = 4096;  // points per block (the unit of deterministic merging)

// Relative slack of the bounds computed in float64 (sqrt and sums); the float32 storage is
// rounded outwards separately, and the lane-wise bounds of the screening carry a 4e-6 factor.
constexpr double kSlackExact = 1e-9;

// float32 storage of the bounds, rounded outwards (inline: no libm call in the hot loop).
inline __attribute__((always_inline)) float round_up_f32(double v) {
  if (!(v < static_cast<double>(std::numeric_limits<float>::max()))) return std::numeric_limits<float>::infinity();
  if (!(v > 0.0)) return 0.0f;
  float f = static_cast<float>(v);
  if (static_cast<double>(f) < v) {
    uint32_t b;
    std::memcpy(&b, &f, sizeof(b));
    ++b;  // f >= 0: the next float up
    std::memcpy(&f, &b, sizeof(b));
  }
  return f;
}

inline __attribute__((always_inline)) float round_down_f32(double v) {
  if (!(v > 0.0)) return 0.0f;
  if (v >= static_cast<double>(std::numeric_limits<float>::max())) return std::numeric_limits<float>::max();
  float f = static_cast<float>(v);
  if (static_cast<double>(f) > v) {  // then f > 0
    uint32_t b;
    std::memcpy(&b, &f, sizeof(b));
    --b;
    std::memcpy(&f, &b, sizeof(b));
  }
  return f;
}

// Per-pass constants shared by all blocks.
template <typename T>
struct PassCtx {
  const T* x;
  const T* c;
  int64_t N;
  int D;
  int64_t K;
  const T* cm2;  // [K][D] = -2c
  const T* cn;   // [K] = |c|^2
  T coef, floor_abs, cmax;
  double coef_d, floor_d, cmax_d;
  int64_t* labels;
  // bounds relative to the cumulative centre drift: distance to the own centre <= upper + drift[own],
  // distance to any other centre >= lower - drift_max (drift: float64 cumulative shifts)
  float* upper;            // nullptr: no bounds kept
  float* lower;
  const double* drift;     // [K]
  double drift_max;
  const double* half_sep;  // nullptr: scan every point (bounds only written)
  bool accumulate;
};

// Scratch of one thread.
template <typename T>
struct Scratch {
  std::vector<T> xt, best, second;
  std::vector<typename VT<T>::I> idx, amb;
  std::vector<int64_t> todo;
  Scratch(int D, int G) : xt(static_cast<size_t>(D) * G), best(G), second(G), idx(G), amb(G), todo(kBlock) {}
};

// float32 points of dimension D = 1, 2, 4, 8 or 16: lane groups of consecutive points are transposed
// in registers (transpose_16) instead of through memory.
template <typename T, int DT>
constexpr bool kRegisterTranspose =
    std::is_same<T, float>::value && (DT == 1 || DT == 2 || DT == 4 || DT == 8 || DT == 16);

// Shuffle masks of transpose_16 for D = 2^t, derived by following every element: m[r][h] is the
// two-input shuffle of round r giving the output vector with bit r of its number = h. ok: every
// round uses one mask pair for all vector pairs and the result is out[d][lane = point].
struct TransposeMasks {
  int m[4][2][16];
  bool ok;
};

constexpr TransposeMasks transpose_masks(int t) {
  TransposeMasks tm{};
  tm.ok = true;
  const int D = 1 << t;
  int tag[16][16] = {};  // tag[v][lane] = point * 16 + d of the element held there
  for (int v = 0; v < D; ++v)
    for (int l = 0; l < 16; ++l) tag[v][l] = ((v * 16 + l) >> t) * 16 + ((v * 16 + l) & (D - 1));
  for (int r = 0; r < t; ++r) {
    int next[16][16] = {};
    bool first = true;
    for (int v = 0; v < D; ++v) {
      if ((v >> r) & 1) continue;
      const int w = v | (1 << r);
      for (int h = 0; h < 2; ++h) {
        const int out = h ? w : v;
        for (int o = 0; o < 16; ++o) {
          int idx = -1;
          if (r < t - 1) {
            // keep the lanes whose dimension bit r is h; lane bit r takes vector bit r (a point bit)
            idx = ((o >> r) & 1) * 16 + ((o & ~(1 << r)) | (h << r));
          } else {
            // last round: lane = point, vector number = dimension
            for (int q = 0; q < 32; ++q)
              if ((q < 16 ? tag[v][q] : tag[w][q - 16]) == o * 16 + out) idx = q;
          }
          if (idx < 0) tm.ok = false;
          if (first)
            tm.m[r][h][o] = idx;
          else if (tm.m[r][h][o] != idx)
            tm.ok = false;
          next[out][o] = idx < 0 ? -1 : (idx < 16 ? tag[v][idx] : tag[w][idx - 16]);
        }
      }
      first = false;
    }
    for (int v = 0; v < D; ++v)
      for (int l = 0; l < 16; ++l) tag[v][l] = next[v][l];
  }
  for (int d = 0; d < D; ++d)
    for (int l = 0; l < 16; ++l)
      if (tag[d][l] != l * 16 + d) tm.ok = false;
  return tm;
}

// (only evaluated at compile time: the vector return ABI of the non-AVX-512 clones does not apply)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
template <size_t... I>
constexpr v16i mask_vector(const int (&m)[16], std::index_sequence<I...>) {
  return v16i{m[I]...};
}
#pragma GCC diagnostic pop

constexpr int log2_dim(int D) { return D == 1 ? 0 : D == 2 ? 1 : D == 4 ? 2 : D == 8 ? 3 : 4; }

// Round RR of transpose_16, masks as compile-time constants.
template <int D, int RR>
inline __attribute__((always_inline)) void transpose_round(v16f r[D]) {
  constexpr int t = log2_dim(D);
  if constexpr (RR < t) {
    constexpr TransposeMasks tm = transpose_masks(t);
    static_assert(tm.ok, "transpose_16: inconsistent shuffle masks");
    constexpr v16i m0 = mask_vector(tm.m[RR][0], std::make_index_sequence<16>{});
    constexpr v16i m1 = mask_vector(tm.m[RR][1], std::make_index_sequence<16>{});
    for (int v = 0; v < D; ++v) {
      if ((v >> RR) & 1) continue;
      const int w = v | (1 << RR);
      const v16f lo = __builtin_shuffle(r[v], r[w], m0);
      const v16f hi = __builtin_shuffle(r[v], r[w], m1);
      r[v] = lo;
      r[w] = hi;
    }
    transpose_round<D, RR + 1>(r);
  }
}

// 16 consecutive float32 points of dimension D (row-major: D vectors) -> r[d] = dimension d of the
// 16 points, lane = point. log2(D) rounds of two-input shuffles, each moving one bit of the point
// index from the vector number into the lane number and one bit of the dimension the other way
// (D log2(D) shuffles, no stores).
template <int D>
inline __attribute__((always_inline)) void transpose_16(const float* FASTORALS_RESTRICT src, v16f r[D]) {
  static_assert((1 << log2_dim(D)) == D, "transpose_16: D must be 1, 2, 4, 8 or 16");
  for (int v = 0; v < D; ++v) std::memcpy(&r[v], src + 16 * v, sizeof(v16f));
  transpose_round<D, 0>(r);
}

// Screening of one group of P*L points against all K centres.
// xt: [D][P*L] transposed points. Outputs per lane: an upper bound on the distance to the winner and
// a lower bound on the distance to every other centre (best_out / second_out), index of the winner,
// whether the point needs an exact recheck.
template <typename T, int DT, int P, bool BOUNDS>
inline __attribute__((always_inline)) bool screen_group(const T* FASTORALS_RESTRICT xt,
                                                        const T* FASTORALS_RESTRICT rows, int D,
                                                        const T* FASTORALS_RESTRICT cm2,
                                                        const T* FASTORALS_RESTRICT cn, int64_t K, T coef, T floor_abs,
                                                        T cmax, T* FASTORALS_RESTRICT best_out,
                                                        T* FASTORALS_RESTRICT second_out,
                                                        typename VT<T>::I* FASTORALS_RESTRICT idx_out,
                                                        typename VT<T>::I* FASTORALS_RESTRICT amb_out) {
  using V = typename VT<T>::V;
  using IV = typename VT<T>::IV;
  using I = typename VT<T>::I;
  constexpr int L = VT<T>::L;
  constexpr int DS = DT > 0 ? DT : 1;
  V xv[DS][P];
  V xn[P];
  for (int p = 0; p < P; ++p) xn[p] = V{};
  if constexpr (DT > 0) {
    // rows (a consecutive run, float32, D = 1 ... 16 powers of two) or the transposed buffer xt
    if constexpr (kRegisterTranspose<T, DT>) {
      if (rows != nullptr)
        for (int p = 0; p < P; ++p) {
          V t[DS];
          transpose_16<DS>(rows + p * 16 * DS, t);
          for (int d = 0; d < DS; ++d) xv[d][p] = t[d];
        }
    }
    for (int d = 0; d < DT; ++d)
      for (int p = 0; p < P; ++p) {
        if (rows == nullptr) std::memcpy(&xv[d][p], xt + (d * P + p) * L, sizeof(V));
        xn[p] += xv[d][p] * xv[d][p];
      }
  } else {
    for (int d = 0; d < D; ++d)
      for (int p = 0; p < P; ++p) {
        V xl;
        std::memcpy(&xl, xt + (d * P + p) * L, sizeof(V));
        xn[p] += xl * xl;
      }
  }
  const T inf = std::numeric_limits<T>::infinity();
  IV any_amb = IV{};
  V b[P], s[P];
  IV id[P];
  for (int p = 0; p < P; ++p) {
    b[p] = V{} + inf;
    s[p] = V{} + inf;
    id[p] = IV{};
  }
  for (int64_t k = 0; k < K; ++k) {
    V acc[P];
    for (int p = 0; p < P; ++p) acc[p] = V{} + cn[k];
    const T* ck = cm2 + k * D;
    if constexpr (DT > 8 && P == 1) {
      // one vector of points: two partial sums halve the FMA dependency chain (the screening
      // error bound holds for any summation order)
      V odd = V{};
      for (int d = 0; d + 1 < DT; d += 2) {
        acc[0] += ck[d] * xv[d][0];
        odd += ck[d + 1] * xv[d + 1][0];
      }
      if constexpr (DT % 2 == 1) acc[0] += ck[DT - 1] * xv[DT - 1][0];
      acc[0] += odd;
    } else if constexpr (DT > 0) {
      for (int d = 0; d < DT; ++d) {
        const T cd = ck[d];
        for (int p = 0; p < P; ++p) acc[p] += cd * xv[d][p];
      }
    } else {
      for (int d = 0; d < D; ++d) {
        const T cd = ck[d];
        for (int p = 0; p < P; ++p) {
          V xl;
          std::memcpy(&xl, xt + (d * P + p) * L, sizeof(V));
          acc[p] += cd * xl;
        }
      }
    }
    const IV kk = IV{} + static_cast<I>(k);
    for (int p = 0; p < P; ++p) {
      const auto m = acc[p] < b[p];
      const V hi = m ? b[p] : acc[p];
      s[p] = hi < s[p] ? hi : s[p];
      id[p] = m ? kk : id[p];
      b[p] = m ? acc[p] : b[p];
    }
  }
  for (int p = 0; p < P; ++p) {
    // gap <= tolerance (also true for NaN gaps, never for K == 1 where s = inf)
    const V tol = coef * (xn[p] + cmax) + floor_abs;
    const IV amb = (s[p] - b[p] > tol) ? IV{} : IV{} + static_cast<I>(1);
    any_amb |= amb;
    std::memcpy(idx_out + p * L, &id[p], sizeof(IV));
    std::memcpy(amb_out + p * L, &amb, sizeof(IV));
    if constexpr (!BOUNDS) continue;
    // distance bounds: tol covers the screening error plus the rounding of these sums; the factors
    // cover sqrt and the products (see the file comment)
    V hi = b[p] + xn[p] + tol;
    V lo = s[p] + xn[p] - tol;
    hi = hi > V{} ? hi : V{};
    lo = lo > V{} ? lo : V{};
    V ub, lb;
    for (int l = 0; l < L; ++l) {
      ub[l] = std::sqrt(hi[l]);
      lb[l] = std::sqrt(lo[l]);
    }
    ub = ub * static_cast<T>(1.0 + 4e-6);
    lb = lb * static_cast<T>(1.0 - 4e-6);
    std::memcpy(best_out + p * L, &ub, sizeof(V));
    std::memcpy(second_out + p * L, &lb, sizeof(V));
  }
  I any = 0;
  for (int l = 0; l < L; ++l) any |= any_amb[l];
  return any != 0;
}

// Points per screening group for dimension D: two vectors of points for D <= 8, else one.
template <typename T>
constexpr int group_p(int D) {
  return D >= 1 && D <= 8 ? 2 : 1;
}

// The reference distance: float64, order d = 0..D-1, no FMA contraction (bitwise equal to
// reference.exact_sq_dist).
template <typename T>
__attribute__((optimize("fp-contract=off"))) inline double exact_dist(const T* xi, const T* c, int D) {
  double acc = 0.0;
  for (int d = 0; d < D; ++d) {
    const double diff = static_cast<double>(xi[d]) - static_cast<double>(c[d]);
    const double sq = diff * diff;
    acc = acc + sq;
  }
  return acc;
}

// Exact nearest centre (reference order and tie rule) of one point, with its distance and the
// smallest distance to any other centre.
template <typename T>
__attribute__((noinline, optimize("fp-contract=off"))) int64_t exact_argmin(const T* xi, const T* c, int D, int64_t K,
                                                                            double* d1, double* d2) {
  double bd = std::numeric_limits<double>::infinity(), sd = bd;
  int64_t lab = 0;
  for (int64_t k = 0; k < K; ++k) {
    const double dk = exact_dist(xi, c + k * D, D);
    if (dk < bd) {
      sd = bd;
      bd = dk;
      lab = k;
    } else if (dk < sd) {
      sd = dk;
    }
  }
  *d1 = bd;
  *d2 = sd;
  return lab;
}

// Exact distances of points [i0, i1) to their assigned centres (into out when given); their sum.
template <typename T>
__attribute__((noinline, optimize("fp-contract=off"))) double exact_dist_block(const T* x, const T* c, int D,
                                                                               const int64_t* labels, int64_t i0,
                                                                               int64_t i1, double* out) {
  double s = 0.0;
  for (int64_t i = i0; i < i1; ++i) {
    const double d = exact_dist(x + i * D, c + labels[i] * D, D);
    if (out != nullptr) out[i] = d;
    s += d;
  }
  return s;
}

// One block of points [b0, b1): bound tests, screening of the points that need it (gathered into
// groups of P*L lanes), labels and bounds, then block-local float64 sums in index order.
// DT > 0: compile-time D.
template <typename T, int DT, int P>
inline __attribute__((always_inline)) void block_impl(const PassCtx<T>& ctx, int64_t b0, int64_t b1,
                                                      Scratch<T>& sc, double* FASTORALS_RESTRICT sums,
                                                      int64_t* FASTORALS_RESTRICT counts, int64_t* stats) {
  constexpr int G = P * VT<T>::L;
  const int D = DT > 0 ? DT : ctx.D;
  const T* FASTORALS_RESTRICT x = ctx.x;
  int64_t* FASTORALS_RESTRICT labels = ctx.labels;
  int64_t changed = 0, rechecked = 0, ntodo = 0;
  int64_t* todo = sc.todo.data();
  // phase 1: which points must be screened (skipped points: nothing is written)
  if (ctx.half_sep == nullptr) {
    for (int64_t i = b0; i < b1; ++i) todo[ntodo++] = i;
  } else {
    const double* FASTORALS_RESTRICT drift = ctx.drift;
    const double* FASTORALS_RESTRICT hs = ctx.half_sep;
    const float* FASTORALS_RESTRICT up = ctx.upper;
    const float* FASTORALS_RESTRICT lo = ctx.lower;
    const double dmax = ctx.drift_max;
    for (int64_t i = b0; i < b1; ++i) {
      const int64_t a = labels[i];
      if (a < 0) {
        todo[ntodo++] = i;
        continue;
      }
      const double ub = (static_cast<double>(up[i]) + drift[a]) * (1.0 + kSlackExact);
      const double lb = (static_cast<double>(lo[i]) - dmax) * (1.0 - kSlackExact);
      const double m = lb > hs[a] ? lb : hs[a];
      if (ub < m) continue;
      todo[ntodo++] = i;
    }
    // tighten the upper bound with the exact distance before screening
    int64_t keep = 0;
    for (int64_t j = 0; j < ntodo; ++j) {
      const int64_t i = todo[j];
      const int64_t a = labels[i];
      if (a >= 0) {
        const double lb = (static_cast<double>(ctx.lower[i]) - dmax) * (1.0 - kSlackExact);
        const double m = lb > ctx.half_sep[a] ? lb : ctx.half_sep[a];
        const T* xi = x + i * D;
        const T* ca = ctx.c + a * D;
        double dd = 0.0;  // bound only: any summation order / FMA is covered by the slack
        for (int d = 0; d < D; ++d) {
          const double df = static_cast<double>(xi[d]) - static_cast<double>(ca[d]);
          dd += df * df;
        }
        const double ub = std::sqrt(dd) * (1.0 + kSlackExact);
        if (ub < m) {
          ctx.upper[i] = round_up_f32(ub - ctx.drift[a]);
          continue;
        }
      }
      todo[keep++] = i;
    }
    ntodo = keep;
  }
  // phase 2: screen the listed points
  T* xt = sc.xt.data();
  for (int64_t g0 = 0; g0 < ntodo; g0 += G) {
    const int64_t n = std::min<int64_t>(G, ntodo - g0);
    const bool run = todo[g0 + n - 1] - todo[g0] == n - 1;  // consecutive points
    const T* rows = nullptr;  // a full run of G points, transposed in registers
    if (n == G && run) {
      if constexpr (kRegisterTranspose<T, DT>) {
        rows = x + todo[g0] * D;
      } else {
        // strided reads of one dimension at a time, contiguous lane writes
        const T* FASTORALS_RESTRICT xb = x + todo[g0] * D;
        for (int d = 0; d < D; ++d)
          for (int j = 0; j < G; ++j) xt[d * G + j] = xb[j * D + d];
      }
    } else {
      for (int j = 0; j < G; ++j) {  // missing lanes: copies of the last point
        const T* xi = x + todo[g0 + std::min<int64_t>(j, n - 1)] * D;
        for (int d = 0; d < D; ++d) xt[d * G + j] = xi[d];
      }
    }
    bool any_amb;
    if (ctx.upper != nullptr)
      any_amb = screen_group<T, DT, P, true>(xt, rows, D, ctx.cm2, ctx.cn, ctx.K, ctx.coef, ctx.floor_abs, ctx.cmax, sc.best.data(),
                                   sc.second.data(), sc.idx.data(), sc.amb.data());
    else
      any_amb = screen_group<T, DT, P, false>(xt, rows, D, ctx.cm2, ctx.cn, ctx.K, ctx.coef, ctx.floor_abs, ctx.cmax, sc.best.data(),
                                    sc.second.data(), sc.idx.data(), sc.amb.data());
    if (!any_amb && ctx.upper == nullptr && run) {
      // consecutive points, every winner certified, no bounds: a vectorisable copy of the labels
      int64_t* FASTORALS_RESTRICT out = labels + todo[g0];
      const typename VT<T>::I* FASTORALS_RESTRICT win = sc.idx.data();
      int64_t ch = 0;
      for (int64_t j = 0; j < n; ++j) {
        const int64_t lab = static_cast<int64_t>(win[j]);
        ch += out[j] != lab;
        out[j] = lab;
      }
      changed += ch;
      continue;
    }
    for (int64_t j = 0; j < n; ++j) {
      const int64_t i = todo[g0 + j];
      int64_t lab;
      if (sc.amb[j]) {
        ++rechecked;
        double d1, d2;
        lab = exact_argmin(x + i * D, ctx.c, D, ctx.K, &d1, &d2);
        if (ctx.upper != nullptr) {
          ctx.upper[i] = round_up_f32(std::sqrt(d1) * (1.0 + kSlackExact) - ctx.drift[lab]);
          ctx.lower[i] = round_down_f32(std::sqrt(d2) * (1.0 - kSlackExact) + ctx.drift_max);
        }
      } else {
        lab = static_cast<int64_t>(sc.idx[j]);
        if (ctx.upper != nullptr) {
          ctx.upper[i] = round_up_f32(static_cast<double>(sc.best[j]) - ctx.drift[lab]);
          ctx.lower[i] = round_down_f32(static_cast<double>(sc.second[j]) + ctx.drift_max);
        }
      }
      changed += labels[i] != lab;
      labels[i] = lab;
    }
  }
  // phase 3: block-local sums in index order
  if (sums != nullptr && (DT == 8 || DT == 16)) {
    // 8-lane float64 vectors of the cluster's sums, the same index-order sum in every lane (a
    // narrower row would be copied into a vector through the stack: slower than the scalar loop)
    std::fill(sums, sums + ctx.K * D, 0.0);
    std::fill(counts, counts + ctx.K, int64_t{0});
    constexpr int DV = DT == 16 ? 16 : 8;
    for (int64_t i = b0; i < b1; ++i) {
      const int64_t a = labels[i];
      for (int h = 0; h < DV; h += 8) {
        v8d xd;
        if constexpr (std::is_same<T, float>::value) {
          v8f xv;
          std::memcpy(&xv, x + i * DV + h, sizeof(v8f));
          xd = __builtin_convertvector(xv, v8d);
        } else {
          std::memcpy(&xd, x + i * DV + h, sizeof(v8d));
        }
        v8d acc;
        std::memcpy(&acc, sums + a * DV + h, sizeof(v8d));
        acc += xd;
        std::memcpy(sums + a * DV + h, &acc, sizeof(v8d));
      }
      ++counts[a];
    }
  } else if (sums != nullptr) {
    std::fill(sums, sums + ctx.K * D, 0.0);
    std::fill(counts, counts + ctx.K, int64_t{0});
    for (int64_t i = b0; i < b1; ++i) {
      const T* xi = x + i * D;
      double* sk = sums + labels[i] * D;
      for (int d = 0; d < D; ++d) sk[d] += static_cast<double>(xi[d]);
      ++counts[labels[i]];
    }
  }
  stats[0] = changed;
  stats[1] = rechecked;
  stats[2] = ntodo;
}

template <typename T>
inline __attribute__((always_inline)) void block_dispatch(const PassCtx<T>& ctx, int64_t b0, int64_t b1,
                                                          Scratch<T>& sc, double* sums, int64_t* counts,
                                                          int64_t* stats) {
  switch (ctx.D) {
#define FASTORALS_KM_CASE(DD) \
  case DD:                    \
    return block_impl<T, DD, group_p<T>(DD)>(ctx, b0, b1, sc, sums, counts, stats);
    FASTORALS_KM_CASE(1)
    FASTORALS_KM_CASE(2)
    FASTORALS_KM_CASE(3)
    FASTORALS_KM_CASE(4)
    FASTORALS_KM_CASE(5)
    FASTORALS_KM_CASE(6)
    FASTORALS_KM_CASE(7)
    FASTORALS_KM_CASE(8)
    FASTORALS_KM_CASE(9)
    FASTORALS_KM_CASE(10)
    FASTORALS_KM_CASE(11)
    FASTORALS_KM_CASE(12)
    FASTORALS_KM_CASE(13)
    FASTORALS_KM_CASE(14)
    FASTORALS_KM_CASE(15)
    FASTORALS_KM_CASE(16)
#undef FASTORALS_KM_CASE
    default:
      return block_impl<T, 0, 1>(ctx, b0, b1, sc, sums, counts, stats);
  }
}

// The cloned entry points (AVX-512 / AVX2 / baseline).
FASTORALS_CLONES
void block_f32(const PassCtx<float>& ctx, int64_t b0, int64_t b1, Scratch<float>& sc, double* sums, int64_t* counts,
               int64_t* stats) {
  block_dispatch<float>(ctx, b0, b1, sc, sums, counts, stats);
}

FASTORALS_CLONES
void block_f64(const PassCtx<double>& ctx, int64_t b0, int64_t b1, Scratch<double>& sc, double* sums,
               int64_t* counts, int64_t* stats) {
  block_dispatch<double>(ctx, b0, b1, sc, sums, counts, stats);
}

inline void run_block(const PassCtx<float>& ctx, int64_t b0, int64_t b1, Scratch<float>& sc, double* sums,
                      int64_t* counts, int64_t* stats) {
  block_f32(ctx, b0, b1, sc, sums, counts, stats);
}
inline void run_block(const PassCtx<double>& ctx, int64_t b0, int64_t b1, Scratch<double>& sc, double* sums,
                      int64_t* counts, int64_t* stats) {
  block_f64(ctx, b0, b1, sc, sums, counts, stats);
}

template <typename T>
std::tuple<int64_t, int64_t, int64_t> lloyd_pass_impl(carray<T> x_arr, carray<T> c_arr, carray<int64_t> labels_arr,
                                                      carray<double> sums_arr, carray<int64_t> counts_arr,
                                                      bool accumulate, double unit_roundoff, py::object upper_obj,
                                                      py::object lower_obj, py::object drift_obj, double drift_max,
                                                      py::object half_sep_obj, int num_threads) {
  check_ndim(x_arr, 2, "x");
  check_ndim(c_arr, 2, "centers");
  const int64_t N = x_arr.shape(0), D64 = x_arr.shape(1), K = c_arr.shape(0);
  check_dim(c_arr, 1, D64, "centers");
  check_ndim(labels_arr, 1, "labels");
  check_dim(labels_arr, 0, N, "labels");
  check_writeable(labels_arr, "labels");
  if (accumulate) {
    check_ndim(sums_arr, 2, "sums");
    check_dim(sums_arr, 0, K, "sums");
    check_dim(sums_arr, 1, D64, "sums");
    check_ndim(counts_arr, 1, "counts");
    check_dim(counts_arr, 0, K, "counts");
    check_writeable(sums_arr, "sums");
    check_writeable(counts_arr, "counts");
  }
  if (K < 1) throw std::invalid_argument("centers: expected at least one centre");
  if (D64 < 1 || D64 > (1 << 20)) throw std::invalid_argument("x: expected 1 <= D <= 2^20 columns");
  if (std::is_same<T, float>::value && K >= (int64_t{1} << 31))
    throw std::invalid_argument("centers: at most 2^31 - 1 centres for float32");
  if (!(unit_roundoff > 0.0 && unit_roundoff < 1.0)) throw std::invalid_argument("unit_roundoff: expected (0, 1)");
  carray<float> up_a, lo_a;
  carray<double> dr_a, hs_a;
  float* upper = nullptr;
  float* lower = nullptr;
  const double* drift = nullptr;
  const double* half_sep = nullptr;
  std::vector<double> zero_drift;
  if (!upper_obj.is_none()) {
    up_a = upper_obj.cast<carray<float>>();
    lo_a = lower_obj.cast<carray<float>>();
    for (auto* a : {&up_a, &lo_a}) {
      const char* name = a == &up_a ? "upper" : "lower";
      check_ndim(*a, 1, name);
      check_dim(*a, 0, N, name);
      check_writeable(*a, name);
    }
    upper = up_a.mutable_data();
    lower = lo_a.mutable_data();
    if (!drift_obj.is_none()) {
      dr_a = drift_obj.cast<carray<double>>();
      check_ndim(dr_a, 1, "drift");
      check_dim(dr_a, 0, K, "drift");
      drift = dr_a.data();
    } else {
      zero_drift.assign(K, 0.0);
      drift = zero_drift.data();
    }
    if (!half_sep_obj.is_none()) {
      hs_a = half_sep_obj.cast<carray<double>>();
      check_ndim(hs_a, 1, "half_sep");
      check_dim(hs_a, 0, K, "half_sep");
      half_sep = hs_a.data();
    }
  } else if (!half_sep_obj.is_none()) {
    throw std::invalid_argument("half_sep: needs the bounds upper and lower");
  }
  if (!(drift_max >= 0.0)) throw std::invalid_argument("drift_max: expected >= 0");
  const int D = static_cast<int>(D64);
  const int64_t* lab_in = labels_arr.data();
  if (half_sep != nullptr)
    for (int64_t i = 0; i < N; ++i)
      if (lab_in[i] >= K) throw std::invalid_argument("labels: values must be < K (or -1) when bounds are used");

  PassCtx<T> ctx;
  ctx.x = x_arr.data();
  ctx.c = c_arr.data();
  ctx.N = N;
  ctx.D = D;
  ctx.K = K;
  ctx.labels = labels_arr.mutable_data();
  ctx.upper = upper;
  ctx.lower = lower;
  ctx.drift = drift;
  ctx.drift_max = drift_max;
  ctx.half_sep = half_sep;
  ctx.accumulate = accumulate;
  double* sums = accumulate ? sums_arr.mutable_data() : nullptr;
  int64_t* counts = accumulate ? counts_arr.mutable_data() : nullptr;

  int64_t changed = 0, rechecked = 0, scanned = 0;
  {
    py::gil_scoped_release nogil;
    // centre tables for the screening: -2c and |c|^2 in T, max |c|^2
    std::vector<T> cm2(K * D), cn(K);
    double cmax = 0.0;
    for (int64_t k = 0; k < K; ++k) {
      double nk = 0.0;
      for (int d = 0; d < D; ++d) {
        const double v = static_cast<double>(ctx.c[k * D + d]);
        nk += v * v;
        cm2[k * D + d] = static_cast<T>(-2.0 * v);
      }
      cn[k] = static_cast<T>(nk);
      cmax = std::max(cmax, nk);
    }
    ctx.cm2 = cm2.data();
    ctx.cn = cn.data();
    // tolerance on the screened gap (see the file comment); |x|^2 is summed in T, hence 1.01
    ctx.coef_d = (8.0 * D + 16.0) * 1.01 * unit_roundoff;
    ctx.floor_d = (8.0 * D + 16.0) * static_cast<double>(std::numeric_limits<T>::denorm_min());
    ctx.cmax_d = cmax * (1.0 + 4.0 * unit_roundoff);
    ctx.coef = static_cast<T>(ctx.coef_d);
    ctx.floor_abs = static_cast<T>(ctx.floor_d);
    ctx.cmax = static_cast<T>(ctx.cmax_d);
    if (accumulate) {
      std::fill(sums, sums + K * D, 0.0);
      std::fill(counts, counts + K, int64_t{0});
    }
    const int64_t nblocks = (N + kBlock - 1) / kBlock;
    const int threads = clamp_threads(num_threads, std::max<int64_t>(nblocks, 1));
    const int G = group_p<T>(D) * VT<T>::L;
    // blocks are processed in waves; each block's partial sums get a slot and the slots are merged
    // in block order, so the float64 sums do not depend on the number of threads
    const int64_t slot = accumulate ? K * D + K : 0;
    int64_t wave = std::max<int64_t>(8 * threads, (int64_t{16} << 20) / std::max<int64_t>(slot * 8, 1));
    wave = std::min<int64_t>(std::max<int64_t>(wave, threads), std::max<int64_t>(nblocks, 1));
    std::vector<double> part_sums(static_cast<size_t>(wave) * (accumulate ? K * D : 0));
    std::vector<int64_t> part_counts(static_cast<size_t>(wave) * (accumulate ? K : 0));
    std::vector<int64_t> part_stats(static_cast<size_t>(wave) * 3);
    std::vector<Scratch<T>> scratch;
    scratch.reserve(threads);
    for (int t = 0; t < threads; ++t) scratch.emplace_back(D, G);
    for (int64_t w0 = 0; w0 < nblocks; w0 += wave) {
      const int64_t nw = std::min(wave, nblocks - w0);
      parallel_for_dynamic(nw, threads, [&](int64_t j) {
        const int tid = thread_id();
        const int64_t b0 = (w0 + j) * kBlock, b1 = std::min(N, b0 + kBlock);
        run_block(ctx, b0, b1, scratch[tid], accumulate ? part_sums.data() + j * K * D : nullptr,
                  accumulate ? part_counts.data() + j * K : nullptr, part_stats.data() + 3 * j);
      });
      for (int64_t j = 0; j < nw; ++j) {
        if (accumulate) {
          const double* ps = part_sums.data() + j * K * D;
          const int64_t* pc = part_counts.data() + j * K;
          for (int64_t q = 0; q < K * D; ++q) sums[q] += ps[q];
          for (int64_t k = 0; k < K; ++k) counts[k] += pc[k];
        }
        changed += part_stats[3 * j];
        rechecked += part_stats[3 * j + 1];
        scanned += part_stats[3 * j + 2];
      }
    }
  }
  return {changed, rechecked, scanned};
}

// Exact float64 distance of every point to its assigned centre (reference order); written to
// dists when given; returns the sum, added in fixed blocks in block order (deterministic).
template <typename T>
double assigned_dist_impl(carray<T> x_arr, carray<T> c_arr, carray<int64_t> labels_arr, py::object dists_obj,
                          int num_threads) {
  check_ndim(x_arr, 2, "x");
  check_ndim(c_arr, 2, "centers");
  const int64_t N = x_arr.shape(0), D64 = x_arr.shape(1), K = c_arr.shape(0);
  check_dim(c_arr, 1, D64, "centers");
  check_ndim(labels_arr, 1, "labels");
  check_dim(labels_arr, 0, N, "labels");
  double* dists = nullptr;
  carray<double> d_arr;
  if (!dists_obj.is_none()) {
    d_arr = dists_obj.cast<carray<double>>();
    check_ndim(d_arr, 1, "dists");
    check_dim(d_arr, 0, N, "dists");
    check_writeable(d_arr, "dists");
    dists = d_arr.mutable_data();
  }
  const int D = static_cast<int>(D64);
  const T* x = x_arr.data();
  const T* c = c_arr.data();
  const int64_t* labels = labels_arr.data();
  for (int64_t i = 0; i < N; ++i)
    if (labels[i] < 0 || labels[i] >= K) throw std::invalid_argument("labels: values must lie in [0, K)");
  const int64_t nblocks = (N + kBlock - 1) / kBlock;
  std::vector<double> part(std::max<int64_t>(nblocks, 1), 0.0);
  {
    py::gil_scoped_release nogil;
    const int threads = clamp_threads(num_threads, std::max<int64_t>(nblocks, 1));
    parallel_for_dynamic(nblocks, threads, [&](int64_t b) {
      part[b] = exact_dist_block(x, c, D, labels, b * kBlock, std::min(N, (b + 1) * kBlock), dists);
    });
  }
  double total = 0.0;
  for (int64_t b = 0; b < nblocks; ++b) total += part[b];
  return total;
}

}  // namespace

}  // namespace fastorals::kmeans

FASTORALS_REGISTER(kmeans, m) {
  using namespace fastorals::kmeans;
  m.def("lloyd_pass_f32", &lloyd_pass_impl<float>,
        "One Lloyd pass on float32 points x [N,D] and centres [K,D]: labels [N] int64 (in: previous, out: "
        "nearest centre, exact, ties to the lowest index); float64 sums [K,D] and int64 counts [K] when "
        "accumulate. Optional float32 distance bounds upper/lower [N], relative to the cumulative centre drift "
        "[K] (float64) and its running maximum drift_max: |x - c_own| <= upper + drift[own], |x - c_k| >= lower "
        "- drift_max; screened points get new bounds; with half_sep [K] (half the distance of each centre to its "
        "nearest other centre) points whose bounds prove their centre unchanged are skipped. Returns (number of "
        "changed labels, number of exact rechecks, number of points screened).",
        py::arg("x"), py::arg("centers"), py::arg("labels"), py::arg("sums"), py::arg("counts"),
        py::arg("accumulate"), py::arg("unit_roundoff"), py::arg("upper") = py::none(),
        py::arg("lower") = py::none(), py::arg("drift") = py::none(), py::arg("drift_max") = 0.0,
        py::arg("half_sep") = py::none(), py::arg("num_threads") = 0);
  m.def("lloyd_pass_f64", &lloyd_pass_impl<double>, "float64 version of lloyd_pass_f32.", py::arg("x"),
        py::arg("centers"), py::arg("labels"), py::arg("sums"), py::arg("counts"), py::arg("accumulate"),
        py::arg("unit_roundoff"), py::arg("upper") = py::none(), py::arg("lower") = py::none(),
        py::arg("drift") = py::none(), py::arg("drift_max") = 0.0, py::arg("half_sep") = py::none(),
        py::arg("num_threads") = 0);
  m.def("assigned_dist_f32", &assigned_dist_impl<float>,
        "Exact float64 squared distance of each float32 point to its assigned centre, into dists [N] when given; "
        "returns their sum (deterministic order).",
        py::arg("x"), py::arg("centers"), py::arg("labels"), py::arg("dists"), py::arg("num_threads"));
  m.def("assigned_dist_f64", &assigned_dist_impl<double>, "float64 version of assigned_dist_f32.", py::arg("x"),
        py::arg("centers"), py::arg("labels"), py::arg("dists"), py::arg("num_threads"));
}
