// BeT head loss on the CPU, forward and gradient in one pass over the rows.
//
// For every row m (of M = batch x time): logits z [K], offsets o [K, A], true bin t, residual r [A],
// weight w (1 when absent), inv_total = 1 / sum_m w_m:
//
//   log p_t = z_t - logsumexp(z),  p = exp(log p_t)
//   focal_m = -(1 - p)^gamma log p_t
//   mse_m   = mean_a (o[t, a] - r_a)^2
//   class_loss  = inv_total sum_m w_m focal_m,  offset_loss = inv_total sum_m w_m mse_m
//
// and, when asked, the gradients of the two losses (the op's backward only scales them):
//
//   d class_loss / d z_k    = inv_total w_m (delta_{kt} - softmax_k) G,
//                             G = gamma p (1 - p)^(gamma - 1) log p_t - (1 - p)^gamma
//   d offset_loss / d o[t]  = inv_total w_m 2 (o[t] - r) / A   (other bins: 0)
//
// One exp per logit (stored in the gradient row, then turned into the gradient), float64 row
// statistics, and a deterministic reduction (fixed row blocks summed in order).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#include <pybind11/stl.h>

#include "common/checks.h"
#include "common/parallel.h"
#include "common/registry.h"
#include "common/simd.h"

namespace fastorals::behavior {

namespace {

constexpr int64_t kRowBlock = 64;  // rows per reduction block (deterministic order)

// exp(z_i - zmax) for a row, stored in out; returns the sum of the stored values.
// float: Cody-Waite reduction (round to nearest via the 1.5 * 2^23 trick, no libm call) and a
// degree-6 polynomial, ~1 ulp; arguments below -87 give 0 (torch: a denormal < 1.2e-38).
inline __attribute__((always_inline)) double exp_row(const float* FASTORALS_RESTRICT z, float zmax,
                                                     float* FASTORALS_RESTRICT out, int64_t n) {
  const float log2e = 1.44269504088896341f;
  const float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
  const float magic = 12582912.0f;  // 1.5 * 2^23
  float se = 0.0f;  // lane-wise float partial sums (relative error ~ sqrt(K) u, like a float32 logsumexp)
#pragma omp simd reduction(+ : se)
  for (int64_t i = 0; i < n; ++i) {
    const float x0 = z[i] - zmax;
    const float x = x0 < -87.0f ? -87.0f : x0;
    const float t = x * log2e + magic;
    const float fn = t - magic;  // round(x * log2e)
    float r = x - fn * ln2_hi;
    r = r - fn * ln2_lo;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t tb;
    std::memcpy(&tb, &t, sizeof(tb));
    const int32_t bits = (tb - 0x4B400000 + 127) << 23;  // 2^round(x * log2e)
    float scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    const float v = x0 < -87.0f ? 0.0f : p * scale;
    out[i] = v;
    se += v;
  }
  return static_cast<double>(se);
}

inline __attribute__((always_inline)) double exp_row(const double* z, double zmax, double* out, int64_t n) {
  double se = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    out[i] = std::exp(z[i] - zmax);
    se += out[i];
  }
  return se;
}

// (1 - p)^gamma and gamma p (1 - p)^(gamma - 1) log p, with the limits at p = 1.
inline void focal_terms(double p, double logp, double gamma, double* pow_g, double* dterm) {
  const double q = 1.0 - p;
  if (gamma == 0.0) {
    *pow_g = 1.0;
    *dterm = 0.0;
  } else if (gamma == 1.0) {
    *pow_g = q;
    *dterm = p * logp;
  } else if (gamma == 2.0) {
    *pow_g = q * q;
    *dterm = 2.0 * p * q * logp;
  } else if (q <= 0.0) {
    *pow_g = 0.0;
    *dterm = 0.0;  // q^(gamma-1) log p -> 0 as p -> 1 (log p ~ -q) for gamma > 0
  } else {
    *pow_g = std::pow(q, gamma);
    *dterm = gamma * p * std::pow(q, gamma - 1.0) * logp;
  }
}

template <typename T>
struct LossArgs {
  const T* z;
  const T* o;
  const int64_t* bins;
  const T* r;
  const T* w;
  T* gl;
  T* gr;
  int64_t M, K, A;
  double gamma, inv_total;
};

// Rows [m0, m1): loss sums (focal, mse) and, when gl != nullptr, the gradients.
template <typename T>
inline __attribute__((always_inline)) void rows_impl(const LossArgs<T>& a, int64_t m0, int64_t m1, T* scratch,
                                                     double* fsum_out, double* msum_out) {
  const int64_t K = a.K, A = a.A;
  double fsum = 0.0, msum = 0.0;
  for (int64_t m = m0; m < m1; ++m) {
    const T* zm = a.z + m * K;
    T* e = a.gl != nullptr ? a.gl + m * K : scratch;
    T zmax = zm[0];
#pragma omp simd reduction(max : zmax)
    for (int64_t k = 0; k < K; ++k) zmax = zm[k] > zmax ? zm[k] : zmax;
    const double se = exp_row(zm, zmax, e, K);
    const int64_t t = a.bins[m];
    const double logp = static_cast<double>(zm[t]) - static_cast<double>(zmax) - std::log(se);
    const double p = std::exp(logp);
    double pow_g, dterm;
    focal_terms(p, logp, a.gamma, &pow_g, &dterm);
    const double wm = a.w != nullptr ? static_cast<double>(a.w[m]) : 1.0;
    fsum += wm * (-pow_g * logp);
    const T* ot = a.o + (m * K + t) * A;
    const T* rm = a.r + m * A;
    double sq = 0.0;
    for (int64_t j = 0; j < A; ++j) {
      const double dlt = static_cast<double>(ot[j]) - static_cast<double>(rm[j]);
      sq += dlt * dlt;
    }
    msum += wm * sq / static_cast<double>(A);
    if (a.gl != nullptr) {
      const double G = dterm - pow_g;  // d focal / d z_k = (delta_kt - s_k) G
      const double scale = wm * a.inv_total;
      const T cs = static_cast<T>(-G * scale / se);  // -s_k G scale = e_k * cs
#pragma omp simd
      for (int64_t k = 0; k < K; ++k) e[k] = e[k] * cs;
      e[t] = static_cast<T>(static_cast<double>(e[t]) + G * scale);
      const double c2 = 2.0 * scale / static_cast<double>(A);
      T* gm = a.gr + m * A;
      for (int64_t j = 0; j < A; ++j)
        gm[j] = static_cast<T>(c2 * (static_cast<double>(ot[j]) - static_cast<double>(rm[j])));
    }
  }
  *fsum_out = fsum;
  *msum_out = msum;
}

FASTORALS_CLONES
void rows_f32(const LossArgs<float>& a, int64_t m0, int64_t m1, float* scratch, double* f, double* s) {
  rows_impl<float>(a, m0, m1, scratch, f, s);
}

FASTORALS_CLONES
void rows_f64(const LossArgs<double>& a, int64_t m0, int64_t m1, double* scratch, double* f, double* s) {
  rows_impl<double>(a, m0, m1, scratch, f, s);
}

inline void rows(const LossArgs<float>& a, int64_t m0, int64_t m1, float* sc, double* f, double* s) {
  rows_f32(a, m0, m1, sc, f, s);
}
inline void rows(const LossArgs<double>& a, int64_t m0, int64_t m1, double* sc, double* f, double* s) {
  rows_f64(a, m0, m1, sc, f, s);
}

template <typename T>
std::tuple<double, double> bet_loss_impl(carray<T> logits_a, carray<T> offsets_a, carray<int64_t> bins_a,
                                         carray<T> residuals_a, py::object weight_obj, double gamma, double inv_total,
                                         py::object grad_logits_obj, py::object grad_rows_obj, int num_threads) {
  check_ndim(logits_a, 2, "logits");
  const int64_t M = logits_a.shape(0), K = logits_a.shape(1);
  check_ndim(offsets_a, 3, "offsets");
  check_dim(offsets_a, 0, M, "offsets");
  check_dim(offsets_a, 1, K, "offsets");
  const int64_t A = offsets_a.shape(2);
  check_ndim(bins_a, 1, "bins");
  check_dim(bins_a, 0, M, "bins");
  check_ndim(residuals_a, 2, "residuals");
  check_dim(residuals_a, 0, M, "residuals");
  check_dim(residuals_a, 1, A, "residuals");
  if (K < 1 || A < 1) throw std::invalid_argument("logits/offsets: expected K >= 1 bins and A >= 1 action dims");
  if (!(gamma >= 0.0)) throw std::invalid_argument("gamma: expected >= 0");
  const T* w = nullptr;
  carray<T> weight_a;
  if (!weight_obj.is_none()) {
    weight_a = weight_obj.cast<carray<T>>();
    check_ndim(weight_a, 1, "weight");
    check_dim(weight_a, 0, M, "weight");
    w = weight_a.data();
  }
  T* gl = nullptr;
  T* gr = nullptr;
  carray<T> gl_a, gr_a;
  if (!grad_logits_obj.is_none()) {
    gl_a = grad_logits_obj.cast<carray<T>>();
    gr_a = grad_rows_obj.cast<carray<T>>();
    check_ndim(gl_a, 2, "grad_logits");
    check_dim(gl_a, 0, M, "grad_logits");
    check_dim(gl_a, 1, K, "grad_logits");
    check_ndim(gr_a, 2, "grad_rows");
    check_dim(gr_a, 0, M, "grad_rows");
    check_dim(gr_a, 1, A, "grad_rows");
    check_writeable(gl_a, "grad_logits");
    check_writeable(gr_a, "grad_rows");
    gl = gl_a.mutable_data();
    gr = gr_a.mutable_data();
  }
  const T* z = logits_a.data();
  const T* o = offsets_a.data();
  const int64_t* bins = bins_a.data();
  const T* r = residuals_a.data();
  for (int64_t m = 0; m < M; ++m)
    if (bins[m] < 0 || bins[m] >= K) throw std::invalid_argument("bins: values must lie in [0, num_bins)");

  const int64_t nblocks = (M + kRowBlock - 1) / kRowBlock;
  std::vector<double> part(2 * std::max<int64_t>(nblocks, 1), 0.0);
  {
    py::gil_scoped_release nogil;
    const int threads = clamp_threads(num_threads, std::max<int64_t>(nblocks, 1));
    const LossArgs<T> args{z, o, bins, r, w, gl, gr, M, K, A, gamma, inv_total};
    parallel_chunks(nblocks, threads, [&](int64_t blo, int64_t bhi, int) {
      std::vector<T> scratch(gl == nullptr ? K : 0);
      for (int64_t blk = blo; blk < bhi; ++blk)
        rows(args, blk * kRowBlock, std::min(M, (blk + 1) * kRowBlock), scratch.data(), &part[2 * blk],
             &part[2 * blk + 1]);
    });
  }
  double fsum = 0.0, msum = 0.0;
  for (int64_t b = 0; b < nblocks; ++b) {
    fsum += part[2 * b];
    msum += part[2 * b + 1];
  }
  return {fsum * inv_total, msum * inv_total};
}

}  // namespace

}  // namespace fastorals::behavior

FASTORALS_REGISTER(behavior, m) {
  using namespace fastorals::behavior;
  m.def("bet_loss_f32", &bet_loss_impl<float>,
        "BeT head loss on float32 rows: logits [M,K], offsets [M,K,A], bins [M] int64, residuals [M,A], optional "
        "weight [M]; returns (class_loss, offset_loss) as float64 and, when grad_logits [M,K] / grad_rows [M,A] "
        "are given, writes the gradients of class_loss w.r.t. logits and of offset_loss w.r.t. the true bin's "
        "offsets.",
        py::arg("logits"), py::arg("offsets"), py::arg("bins"), py::arg("residuals"), py::arg("weight"),
        py::arg("gamma"), py::arg("inv_total"), py::arg("grad_logits"), py::arg("grad_rows"), py::arg("num_threads"));
  m.def("bet_loss_f64", &bet_loss_impl<double>, "float64 version of bet_loss_f32.", py::arg("logits"),
        py::arg("offsets"), py::arg("bins"), py::arg("residuals"), py::arg("weight"), py::arg("gamma"),
        py::arg("inv_total"), py::arg("grad_logits"), py::arg("grad_rows"), py::arg("num_threads"));
}
