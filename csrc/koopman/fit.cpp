// Koopman fit for small latent sizes in one call after the Gram product [X^T X | X^T Y] (BLAS):
// ridge, Cholesky factorization, the two triangular solves and the
// condition estimate of fastorals/koopman/ops.py (diagonal ratio of the factor, and a few
// power iterations on A and A^-1 from fixed probe vectors). The PyTorch path launches some
// fifty small ops for the same work; at k = 40 their overhead is most of the time.
//
// Per group g of z (G, B, T, k): X = z[g, :, :-1, :] and Y = z[g, :, 1:, :] stacked as
// n = B (T - 1) rows; A = X^T X + lam I with lam = ridge (* trace(X^T X) / k when relative);
// C = A^-1 X^T Y. A failed factorization (non-positive or non-finite pivot j) sets info = j + 1
// (LAPACK's convention) and fills C and the factor with NaN; the condition estimate is +inf
// then and wherever C is not finite, so ``cond <= limit`` alone tells a usable fit.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "common/checks.h"
#include "common/parallel.h"
#include "common/registry.h"
#include "common/simd.h"

namespace fastorals::koopman {

namespace {

// a[0..n) += s * x[0..n)
template <typename T>
inline void axpy(T* FASTORALS_RESTRICT a, const T* FASTORALS_RESTRICT x, T s, int64_t n) {
  for (int64_t j = 0; j < n; ++j) a[j] += s * x[j];
}


// Dot product with 16 independent partial sums (vectorizes without reassociating a serial sum).
template <typename T>
inline T dot(const T* FASTORALS_RESTRICT a, const T* FASTORALS_RESTRICT b, int64_t n) {
  T acc[16] = {};
  int64_t j = 0;
  for (; j + 16 <= n; j += 16)
    for (int l = 0; l < 16; ++l) acc[l] += a[j + l] * b[j + l];
  for (int w = 8; w >= 1; w /= 2)  // pairwise: a short dependency chain
    for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
  T s = acc[0];
  for (; j < n; ++j) s += a[j] * b[j];
  return s;
}

constexpr int64_t kPad = 16;  // row stride of the work matrices: a multiple of 16 elements, zero padded

// v <- (L L^T)^-1 v for one vector (length kp, zero padded); L and U = L^T row-major with stride kp.
// Column-oriented substitutions: each solved unknown is removed from the rest with one axpy over
// a whole padded row (no reductions); ``w`` is scratch of length kp.
template <typename T>
void chol_solve_vec(const T* L, const T* U, T* v, T* w, int64_t k, int64_t kp) {
  for (int64_t j = 0; j < k; ++j) {  // L w = v
    const T x = v[j] / L[j * kp + j];
    w[j] = x;
    axpy(v, U + j * kp, -x, kp);  // column j of L
  }
  for (int64_t j = k - 1; j >= 0; --j) {  // L^T v = w
    const T x = w[j] / L[j * kp + j];
    v[j] = x;
    axpy(w, L + j * kp, -x, kp);  // column j of L^T
  }
  for (int64_t j = 0; j < k; ++j) w[j] = 0;
  for (int64_t j = k; j < kp; ++j) v[j] = 0;
}

template <typename T>
void normalize(T* v, int64_t k, int64_t kp) {
  const T n = std::max(std::sqrt(dot(v, v, kp)), std::numeric_limits<T>::min());
  for (int64_t i = 0; i < k; ++i) v[i] /= n;
}

// out = A v (A symmetric k x k, stride kp; v, out length kp): a sum of rows, no reductions
template <typename T>
void sym_mul(const T* A, const T* v, T* out, int64_t k, int64_t kp) {
  std::fill(out, out + kp, T(0));
  for (int64_t j = 0; j < k; ++j) axpy(out, A + j * kp, v[j], kp);
}

template <typename T>
void fit_one(const T* ne, int64_t k, const T* probe, int64_t p, int iters, T ridge, bool relative, T* C, T* L,
             T* cond, int32_t* info, std::vector<T>& buf) {
  const int64_t kp = (k + kPad - 1) / kPad * kPad;
  buf.assign(size_t(4 * kp * kp + 5 * kp), T(0));
  T* A = buf.data();    // X^T X + lam I
  T* R = A + kp * kp;   // X^T Y, then C
  T* Lw = R + kp * kp;  // the factor
  T* Uw = Lw + kp * kp;  // its transpose
  T* u = Uw + kp * kp;
  T* v = u + kp;
  T* t1 = v + kp;
  T* t2 = t1 + kp;
  T* w = t2 + kp;  // scratch
  for (int64_t i = 0; i < k; ++i) {  // row i of ne is [X^T X row i | X^T Y row i]
    std::copy(ne + i * 2 * k, ne + i * 2 * k + k, A + i * kp);
    std::copy(ne + i * 2 * k + k, ne + (i + 1) * 2 * k, R + i * kp);
  }
  T lam = ridge;
  if (relative) {
    T tr = 0;
    for (int64_t i = 0; i < k; ++i) tr += A[i * kp + i];
    lam = ridge * std::max(tr / T(k), std::numeric_limits<T>::min());
  }
  for (int64_t i = 0; i < k; ++i) A[i * kp + i] += lam;
  // row i of L solves L[:i, :i] l = A[i, :i] (forward substitution, one axpy per solved entry
  // against the rows of U = L^T), then L[i][i] = sqrt(A[i][i] - |l|^2)
  *info = 0;
  for (int64_t i = 0; i < k && *info == 0; ++i) {
    T* li = Lw + i * kp;
    std::copy(A + i * kp, A + i * kp + kp, w);
    for (int64_t m = 0; m < i; ++m) {
      const T x = w[m] / Lw[m * kp + m];
      li[m] = x;
      axpy(w, Uw + m * kp, -x, kp);  // U[m][j] = L[j][m], nonzero for j >= m (rows < i only)
    }
    const T s = A[i * kp + i] - dot(li, li, kp);
    if (!(s > T(0)) || !std::isfinite(s)) {
      *info = int32_t(i + 1);
      break;
    }
    li[i] = std::sqrt(s);
    for (int64_t m = 0; m <= i; ++m) Uw[m * kp + i] = li[m];
  }
  if (*info != 0) {
    const T nan = std::numeric_limits<T>::quiet_NaN();
    std::fill(L, L + k * k, nan);
    std::fill(C, C + k * k, nan);
    *cond = std::numeric_limits<T>::infinity();
    return;
  }
  // C = A^-1 R: forward then back substitution on whole rows of right-hand sides
  for (int64_t i = 0; i < k; ++i) {
    T* ri = R + i * kp;
    for (int64_t j = 0; j < i; ++j) axpy(ri, R + j * kp, -Lw[i * kp + j], kp);
    const T d = Lw[i * kp + i];
    for (int64_t c = 0; c < kp; ++c) ri[c] /= d;
  }
  for (int64_t i = k - 1; i >= 0; --i) {
    T* ri = R + i * kp;
    for (int64_t j = i + 1; j < k; ++j) axpy(ri, R + j * kp, -Lw[j * kp + i], kp);
    const T d = Lw[i * kp + i];
    for (int64_t c = 0; c < kp; ++c) ri[c] /= d;
  }
  bool finite = true;
  for (int64_t i = 0; i < k; ++i) {
    std::copy(R + i * kp, R + i * kp + k, C + i * k);
    std::copy(Lw + i * kp, Lw + i * kp + k, L + i * k);
    for (int64_t j = 0; j < k; ++j) finite = finite && std::isfinite(R[i * kp + j]);
  }
  if (!finite) {  // an overflowing solve: flagged through the condition estimate
    *cond = std::numeric_limits<T>::infinity();
    return;
  }
  // condition estimate: (max/min diagonal of the factor)^2, and per probe column ``iters`` power
  // iterations on A and on A^-1, then the largest Rayleigh quotients
  T dmax = Lw[0], dmin = Lw[0];
  for (int64_t i = 1; i < k; ++i) {
    dmax = std::max(dmax, Lw[i * kp + i]);
    dmin = std::min(dmin, Lw[i * kp + i]);
  }
  const T ratio = (dmax / dmin) * (dmax / dmin);
  T big = -std::numeric_limits<T>::infinity(), inv_big = big;
  for (int64_t c = 0; c < p; ++c) {
    for (int64_t i = 0; i < k; ++i) u[i] = v[i] = probe[i * p + c];
    for (int it = 0; it < iters; ++it) {
      sym_mul(A, u, t1, k, kp);
      std::copy(t1, t1 + k, u);
      normalize(u, k, kp);
      chol_solve_vec(Lw, Uw, v, w, k, kp);
      normalize(v, k, kp);
    }
    sym_mul(A, u, t1, k, kp);
    big = std::max(big, dot(u, t1, k));
    std::copy(v, v + kp, t2);
    chol_solve_vec(Lw, Uw, t2, w, k, kp);
    inv_big = std::max(inv_big, dot(v, t2, k));
  }
  const T est = big * inv_big;
  *cond = std::isnan(est) ? est : std::max(ratio, est);
}

// The solve of one group compiled for AVX-512, AVX2 and baseline x86-64 (everything inlined into
// the clone, so the short row loops are vectorized without a call per row).
#if defined(__GNUC__) && !defined(__clang__)
#define FASTORALS_FLATTEN __attribute__((flatten))
#else
#define FASTORALS_FLATTEN
#endif
FASTORALS_CLONES FASTORALS_FLATTEN void fit_one_f(const float* ne, int64_t k, const float* probe, int64_t p, int iters,
                                                  float ridge, bool relative, float* C, float* L, float* cond,
                                                  int32_t* info, std::vector<float>& buf) {
  fit_one<float>(ne, k, probe, p, iters, ridge, relative, C, L, cond, info, buf);
}
FASTORALS_CLONES FASTORALS_FLATTEN void fit_one_d(const double* ne, int64_t k, const double* probe, int64_t p,
                                                  int iters, double ridge, bool relative, double* C, double* L,
                                                  double* cond, int32_t* info, std::vector<double>& buf) {
  fit_one<double>(ne, k, probe, p, iters, ridge, relative, C, L, cond, info, buf);
}

template <typename T>
void koopman_solve(carray<T> normal, carray<T> probe, int iters, double ridge, bool relative, carray<T> C,
                   carray<T> L, carray<T> cond, carray<int32_t> info, int num_threads) {
  check_ndim(normal, 3, "normal");
  const int64_t G = normal.shape(0), k = normal.shape(1);
  check_dim(normal, 2, 2 * k, "normal");
  check_ndim(probe, 2, "probe");
  check_dim(probe, 0, k, "probe");
  const int64_t p = probe.shape(1);
  if (iters < 0) throw std::invalid_argument("iters: expected >= 0");
  for (auto* a : {&C, &L}) {
    check_ndim(*a, 3, "C/L");
    check_dim(*a, 0, G, "C/L");
    check_dim(*a, 1, k, "C/L");
    check_dim(*a, 2, k, "C/L");
  }
  check_writeable(C, "C");
  check_writeable(L, "L");
  check_out_vector(cond, G, "cond");
  check_out_vector(info, G, "info");
  const T* np = normal.data();
  const T* pr = probe.data();
  T* cp = C.mutable_data();
  T* lp = L.mutable_data();
  T* kp = cond.mutable_data();
  int32_t* ip = info.mutable_data();
  py::gil_scoped_release nogil;
  parallel_chunks(G, G > 1 ? num_threads : 1, [&](int64_t b, int64_t e, int) {
    std::vector<T> buf;
    for (int64_t g = b; g < e; ++g)
      if constexpr (std::is_same_v<T, float>)
        fit_one_f(np + g * k * 2 * k, k, pr, p, iters, T(ridge), relative, cp + g * k * k, lp + g * k * k, kp + g,
                  ip + g, buf);
      else
        fit_one_d(np + g * k * 2 * k, k, pr, p, iters, T(ridge), relative, cp + g * k * k, lp + g * k * k, kp + g,
                  ip + g, buf);
  });
}

}  // namespace

}  // namespace fastorals::koopman

FASTORALS_REGISTER(koopman_fit, m) {
  const char* doc =
      "Koopman matrices from the normal equations [X^T X | X^T Y] (G, k, 2k) with a ridge: writes C and "
      "the Cholesky factor (G, k, k), a condition estimate (G,) and the factorization status (G,) (0: success).";
  m.def("koopman_solve", &fastorals::koopman::koopman_solve<float>, doc, py::arg("normal"), py::arg("probe"),
        py::arg("iters"), py::arg("ridge"), py::arg("relative"), py::arg("C"), py::arg("L"), py::arg("cond"),
        py::arg("info"), py::arg("num_threads"));
  m.def("koopman_solve", &fastorals::koopman::koopman_solve<double>, doc, py::arg("normal"), py::arg("probe"),
        py::arg("iters"), py::arg("ridge"), py::arg("relative"), py::arg("C"), py::arg("L"), py::arg("cond"),
        py::arg("info"), py::arg("num_threads"));
}
