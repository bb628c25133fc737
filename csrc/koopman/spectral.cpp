// SKD spectral terms: conjugate-pair-aware static/dynamic split of Koopman eigenvalues and
// the static + dynamic eigenvalue penalties with their gradients, fused in one pass.
//
// Semantics (the spec is fastorals/koopman/reference.py):
//   * pairing: the d-th occurrence (index order) of an eigenvalue a+ib, b > 0, pairs with the
//     d-th occurrence of a-ib; real and unpaired eigenvalues are singletons. A component's id
//     is the smallest index of its members.
//   * components are ordered by (key, id); key: |l-1|^2 ("ball"), -|l|^2 ("norm"), -Re l
//     ("real"). The first num_static components are static.
//   * static penalty (mean over static eigenvalues), dynamic penalty (mean over dynamic ones).
// Gradients are with respect to (Re l, Im l) of each eigenvalue, per matrix.
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "common/checks.h"
#include "common/parallel.h"
#include "common/registry.h"

namespace fastorals::koopman {

enum StaticMode { kBall = 0, kNorm = 1, kReal = 2 };
enum DynamicMode { kNone = 0, kDynReal = 1, kDynBall = 2, kThresh = 3, kStrict = 4 };

template <typename T>
static void one_matrix(const T* ev, int64_t k, int64_t num_static, int static_mode, int dynamic_mode,
                       double dyn_thr, double radius, double eigs_thr, T* static_loss, T* dynamic_loss,
                       T* grad_static, T* grad_dynamic, bool* mask, int64_t* comp, int64_t* nstatic,
                       std::vector<int64_t>& dup, std::vector<int64_t>& partner, std::vector<T>& key,
                       std::vector<int64_t>& rank) {
  auto re = [&](int64_t i) { return ev[2 * i]; };
  auto im = [&](int64_t i) { return ev[2 * i + 1]; };
  for (int64_t i = 0; i < k; ++i) {
    int64_t d = 0;
    for (int64_t j = 0; j < i; ++j) d += (re(j) == re(i) && im(j) == im(i));
    dup[i] = d;
    partner[i] = k;
  }
  for (int64_t i = 0; i < k; ++i) {
    if (!(im(i) > T(0))) continue;
    for (int64_t j = 0; j < k; ++j) {
      if (re(j) == re(i) && im(j) == -im(i) && dup[j] == dup[i]) {
        partner[i] = j;
        partner[j] = i;
        break;
      }
    }
  }
  for (int64_t i = 0; i < k; ++i) {
    comp[i] = partner[i] < i ? partner[i] : i;
    const T r = re(i), m = im(i);
    if (static_mode == kBall) {
      key[i] = (r - T(1)) * (r - T(1)) + m * m;
    } else if (static_mode == kNorm) {
      key[i] = -(r * r + m * m);
    } else {
      key[i] = -r;
    }
  }
  for (int64_t i = 0; i < k; ++i) {
    int64_t c = 0;
    for (int64_t j = 0; j < k; ++j) {
      if (comp[j] != j) continue;  // one representative per component
      c += (key[j] < key[i]) || (key[j] == key[i] && comp[j] < comp[i]);
    }
    rank[i] = c;
  }
  int64_t ns = 0;
  for (int64_t i = 0; i < k; ++i) {
    mask[i] = rank[i] < num_static;
    ns += mask[i];
  }
  *nstatic = ns;
  const int64_t nd = k - ns;
  double ls = 0.0, ld = 0.0;
  const double inv_s = ns > 0 ? 1.0 / double(ns) : 0.0;
  const double inv_d = nd > 0 ? 1.0 / double(nd) : 0.0;
  const double e2 = eigs_thr * eigs_thr;
  for (int64_t i = 0; i < k; ++i) {
    const double r = double(re(i)), m = double(im(i));
    double gsr = 0, gsi = 0, gdr = 0, gdi = 0;
    if (mask[i]) {
      if (static_mode == kBall) {
        ls += (r - 1) * (r - 1) + m * m;
        gsr = 2 * (r - 1);
        gsi = 2 * m;
      } else if (static_mode == kNorm) {
        const double n = r * r + m * m - 1;
        ls += n * n;
        gsr = 4 * n * r;
        gsi = 4 * n * m;
      } else {
        ls += (r - 1) * (r - 1);
        gsr = 2 * (r - 1);
      }
      gsr *= inv_s;
      gsi *= inv_s;
    } else if (dynamic_mode != kNone) {
      if (dynamic_mode == kDynReal) {
        if (r > dyn_thr) {
          ld += r;
          gdr = 1;
        }
      } else if (dynamic_mode == kDynBall) {
        const double dist = std::sqrt((r - 1) * (r - 1) + m * m);
        if (dist < radius) {
          ld += 2 - dist;
          if (dist > 0) {
            gdr = -(r - 1) / dist;
            gdi = -m / dist;
          }
        }
      } else if (dynamic_mode == kThresh) {
        const double n = r * r + m * m;
        if (n > dyn_thr) {
          ld += n;
          gdr = 2 * r;
          gdi = 2 * m;
        }
      } else {  // strict
        const double n = r * r + m * m - e2;
        ld += n * n;
        gdr = 4 * n * r;
        gdi = 4 * n * m;
      }
      gdr *= inv_d;
      gdi *= inv_d;
    }
    grad_static[2 * i] = T(gsr);
    grad_static[2 * i + 1] = T(gsi);
    grad_dynamic[2 * i] = T(gdr);
    grad_dynamic[2 * i + 1] = T(gdi);
  }
  *static_loss = T(ls * inv_s);
  *dynamic_loss = T(ld * inv_d);
}

template <typename T>
void spectral_terms(carray<T> eigvals, int64_t num_static, int static_mode, int dynamic_mode, double dyn_thr,
                    double radius, double eigs_thr, carray<T> static_loss, carray<T> dynamic_loss,
                    carray<T> grad_static, carray<T> grad_dynamic, carray<bool> mask, carray<int64_t> comp,
                    carray<int64_t> nstatic, int num_threads) {
  check_ndim(eigvals, 3, "eigvals");
  const int64_t M = eigvals.shape(0), k = eigvals.shape(1);
  check_dim(eigvals, 2, 2, "eigvals");
  check_ndim(static_loss, 1, "static_loss");
  check_dim(static_loss, 0, M, "static_loss");
  check_dim(dynamic_loss, 0, M, "dynamic_loss");
  check_ndim(grad_static, 3, "grad_static");
  check_dim(grad_static, 0, M, "grad_static");
  check_dim(grad_static, 1, k, "grad_static");
  check_ndim(grad_dynamic, 3, "grad_dynamic");
  check_dim(grad_dynamic, 0, M, "grad_dynamic");
  check_dim(grad_dynamic, 1, k, "grad_dynamic");
  check_ndim(mask, 2, "mask");
  check_dim(mask, 0, M, "mask");
  check_dim(mask, 1, k, "mask");
  check_ndim(comp, 2, "comp");
  check_dim(comp, 0, M, "comp");
  check_dim(comp, 1, k, "comp");
  check_dim(nstatic, 0, M, "nstatic");
  if (num_static < 0) throw std::invalid_argument("num_static: expected >= 0");
  if (static_mode < 0 || static_mode > 2) throw std::invalid_argument("static_mode: expected 0, 1 or 2");
  if (dynamic_mode < 0 || dynamic_mode > 4) throw std::invalid_argument("dynamic_mode: expected 0..4");
  for (auto* a : {&static_loss, &dynamic_loss, &grad_static, &grad_dynamic}) check_writeable(*a, "output");
  check_writeable(mask, "mask");
  check_writeable(comp, "comp");
  check_writeable(nstatic, "nstatic");
  const T* ev = eigvals.data();
  T* sl = static_loss.mutable_data();
  T* dl = dynamic_loss.mutable_data();
  T* gs = grad_static.mutable_data();
  T* gd = grad_dynamic.mutable_data();
  bool* mk = mask.mutable_data();
  int64_t* cp = comp.mutable_data();
  int64_t* ns = nstatic.mutable_data();
  py::gil_scoped_release nogil;
  parallel_chunks(M, num_threads, [&](int64_t b, int64_t e, int) {
    std::vector<int64_t> dup(k), partner(k), rank(k);
    std::vector<T> key(k);
    for (int64_t m = b; m < e; ++m) {
      one_matrix<T>(ev + m * k * 2, k, num_static, static_mode, dynamic_mode, dyn_thr, radius, eigs_thr, sl + m,
                    dl + m, gs + m * k * 2, gd + m * k * 2, mk + m * k, cp + m * k, ns + m, dup, partner, key,
                    rank);
    }
  });
}

}  // namespace fastorals::koopman

FASTORALS_REGISTER(koopman, m) {
  const char* doc =
      "Static/dynamic split and spectral penalties of Koopman eigenvalues given as (M, k, 2) real views; "
      "writes per-matrix static/dynamic losses, their gradients w.r.t. (Re, Im), the static mask, "
      "component ids and static counts.";
  m.def("spectral_terms", &fastorals::koopman::spectral_terms<float>, doc, py::arg("eigvals"), py::arg("num_static"),
        py::arg("static_mode"), py::arg("dynamic_mode"), py::arg("dynamic_threshold"), py::arg("ball_radius"),
        py::arg("eigs_threshold"), py::arg("static_loss"), py::arg("dynamic_loss"), py::arg("grad_static"),
        py::arg("grad_dynamic"), py::arg("mask"), py::arg("comp"), py::arg("nstatic"), py::arg("num_threads"));
  m.def("spectral_terms", &fastorals::koopman::spectral_terms<double>, doc, py::arg("eigvals"),
        py::arg("num_static"), py::arg("static_mode"), py::arg("dynamic_mode"), py::arg("dynamic_threshold"),
        py::arg("ball_radius"), py::arg("eigs_threshold"), py::arg("static_loss"), py::arg("dynamic_loss"),
        py::arg("grad_static"), py::arg("grad_dynamic"), py::arg("mask"), py::arg("comp"), py::arg("nstatic"),
        py::arg("num_threads"));
}
