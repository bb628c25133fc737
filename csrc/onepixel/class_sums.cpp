// One-Pixel Shortcut: per-class, per-channel, per-pixel sums S1 = sum x and S2 = sum x^2.
//
// One pass over the images, class-major: images are grouped by class (a counting sort of
// the labels), and a work item (class k, pixel strip) streams over the images of class k,
// reading each image's strip contiguously, while the strip's accumulators (all channels)
// stay in L1. Work items are independent (each output element has one writer), so threads
// never share accumulators and memory stays O(K*C*P) for any number of classes and image size.
//
// uint8: exact integer sums. S1 accumulates in uint16 (flushed every 257 images) and S2 in
// uint32 (x^2 <= 65025 fits uint16; flushed every 66051 images) into int64 outputs, so the
// scores computed from them are exact and reproducible.
// float32/float64: quantized to the exact scoring grid floor(x * 2^20) and summed exactly
// (integers in doubles, flushed to int64); also reports the value range and counts values
// that are NaN or outside [0, 1] (the caller raises).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

#include <pybind11/stl.h>

#include "common/checks.h"
#include "common/parallel.h"
#include "common/registry.h"
#include "common/simd.h"

namespace fastorals::onepixel {

namespace {

constexpr int64_t kFlushS1 = 257;    // 257 * 255 = 65535 fits uint16
constexpr int64_t kFlushS2 = 66051;  // 66051 * 65025 < 2^32
constexpr int64_t kL1Bytes = 32 * 1024;

FASTORALS_CLONES
void accumulate_u8(const uint8_t* FASTORALS_RESTRICT x, uint16_t* FASTORALS_RESTRICT s1,
                   uint32_t* FASTORALS_RESTRICT s2, int64_t len) {
  for (int64_t i = 0; i < len; ++i) {
    const uint16_t v = x[i];
    s1[i] = static_cast<uint16_t>(s1[i] + v);
    s2[i] += static_cast<uint16_t>(v * v);
  }
}

// Four images at once: the strip's accumulators are loaded and stored once per four images
// (the single-image loop is bound by accumulator traffic, not by reading the data).
// Partial sums stay exact: 4 * 255 fits uint16, 4 * 65025 fits uint32.
FASTORALS_CLONES
void accumulate_u8x4(const uint8_t* FASTORALS_RESTRICT xa, const uint8_t* FASTORALS_RESTRICT xb,
                     const uint8_t* FASTORALS_RESTRICT xc, const uint8_t* FASTORALS_RESTRICT xd,
                     uint16_t* FASTORALS_RESTRICT s1, uint32_t* FASTORALS_RESTRICT s2, int64_t len) {
  for (int64_t i = 0; i < len; ++i) {
    const uint16_t a = xa[i], b = xb[i], c = xc[i], d = xd[i];
    s1[i] = static_cast<uint16_t>(s1[i] + static_cast<uint16_t>(a + b + c + d));
    const uint32_t q = static_cast<uint32_t>(static_cast<uint16_t>(a * a)) + static_cast<uint16_t>(b * b) +
                       static_cast<uint16_t>(c * c) + static_cast<uint16_t>(d * d);
    s2[i] += q;
  }
}

// Floats: quantized to the exact scoring grid q = floor(clamp(x, 0, 1) * scale) (scale = 2^20)
// and accumulated in doubles, which hold these integers exactly until flushed to int64.
// Values that are NaN or outside [0, 1] are counted (the caller raises) and clamped so the
// sums stay well defined.
FASTORALS_CLONES
void accumulate_f32(const float* FASTORALS_RESTRICT x, double* FASTORALS_RESTRICT s1, double* FASTORALS_RESTRICT s2,
                    int64_t len, double scale, double* FASTORALS_RESTRICT stats) {
  double l = stats[0], h = stats[1], bad = stats[2];
#pragma omp simd reduction(min : l) reduction(max : h) reduction(+ : bad)
  for (int64_t i = 0; i < len; ++i) {
    const double v = static_cast<double>(x[i]);
    const bool ok = v >= 0.0 && v <= 1.0;  // false for NaN
    const double q = std::floor((ok ? v : (v > 1.0 ? 1.0 : 0.0)) * scale);
    s1[i] += q;
    s2[i] += q * q;
    l = v < l ? v : l;
    h = v > h ? v : h;
    bad += ok ? 0.0 : 1.0;
  }
  stats[0] = l;
  stats[1] = h;
  stats[2] = bad;
}

FASTORALS_CLONES
void accumulate_f64(const double* FASTORALS_RESTRICT x, double* FASTORALS_RESTRICT s1, double* FASTORALS_RESTRICT s2,
                    int64_t len, double scale, double* FASTORALS_RESTRICT stats) {
  double l = stats[0], h = stats[1], bad = stats[2];
#pragma omp simd reduction(min : l) reduction(max : h) reduction(+ : bad)
  for (int64_t i = 0; i < len; ++i) {
    const double v = x[i];
    const bool ok = v >= 0.0 && v <= 1.0;
    const double q = std::floor((ok ? v : (v > 1.0 ? 1.0 : 0.0)) * scale);
    s1[i] += q;
    s2[i] += q * q;
    l = v < l ? v : l;
    h = v > h ? v : h;
    bad += ok ? 0.0 : 1.0;
  }
  stats[0] = l;
  stats[1] = h;
  stats[2] = bad;
}

// No software prefetch: the images' strips are contiguous runs the hardware prefetcher follows;
// explicit prefetchnta of the next images stalled on full fill buffers and cost 3x in time.

inline void accumulate_float(const float* x, double* s1, double* s2, int64_t len, double scale, double* stats) {
  accumulate_f32(x, s1, s2, len, scale, stats);
}
inline void accumulate_float(const double* x, double* s1, double* s2, int64_t len, double scale, double* stats) {
  accumulate_f64(x, s1, s2, len, scale, stats);
}

void check_common(const py::array& images, const carray<int64_t>& labels, const py::array& s1,
                  const py::array& s2, int64_t num_classes) {
  check_ndim(images, 4, "images");
  check_ndim(labels, 1, "labels");
  check_dim(labels, 0, images.shape(0), "labels");
  for (auto* a : {&s1, &s2}) {
    const char* name = a == &s1 ? "s1" : "s2";
    check_ndim(*a, 3, name);
    check_dim(*a, 0, num_classes, name);
    check_dim(*a, 1, images.shape(1), name);
    check_dim(*a, 2, images.shape(2) * images.shape(3), name);
    check_writeable(*a, name);
  }
}

// Images grouped by class: order[offsets[k] .. offsets[k+1]) are the images of class k.
void group_by_class(const int64_t* y, int64_t N, int64_t K, std::vector<int64_t>& order,
                    std::vector<int64_t>& offsets) {
  offsets.assign(K + 1, 0);
  for (int64_t n = 0; n < N; ++n) {
    if (y[n] < 0 || y[n] >= K) throw std::invalid_argument("labels: values must lie in [0, num_classes)");
    ++offsets[y[n] + 1];
  }
  for (int64_t k = 0; k < K; ++k) offsets[k + 1] += offsets[k];
  std::vector<int64_t> fill(offsets.begin(), offsets.end() - 1);
  order.resize(N);
  for (int64_t n = 0; n < N; ++n) order[fill[y[n]]++] = n;
}

// Pixel strip so one work item's accumulators fit L1, shrunk until there is enough parallel work.
int64_t strip_width(int64_t P, int64_t C, int64_t bytes_per_acc, int64_t K, int threads) {
  int64_t strip = std::max<int64_t>(64, kL1Bytes / std::max<int64_t>(C * bytes_per_acc, 1));
  strip = std::min(strip, P);
  while (strip > 64 && K * ((P + strip - 1) / strip) < 4 * threads) strip = (strip + 1) / 2;
  return std::max<int64_t>(strip, 1);
}

}  // namespace

// Sums for uint8 images [N, C, H, W]; s1, s2: int64 [K, C, H*W].
void class_sums_u8(carray<uint8_t> images, carray<int64_t> labels, carray<int64_t> s1, carray<int64_t> s2,
                   int64_t num_classes, int num_threads) {
  check_common(images, labels, s1, s2, num_classes);
  const int64_t N = images.shape(0), C = images.shape(1), P = images.shape(2) * images.shape(3);
  const int64_t K = num_classes;
  const uint8_t* x = images.data();
  const int64_t* y = labels.data();
  int64_t* o1 = s1.mutable_data();
  int64_t* o2 = s2.mutable_data();
  py::gil_scoped_release nogil;
  std::vector<int64_t> order, offsets;
  group_by_class(y, N, K, order, offsets);
  const int threads = clamp_threads(num_threads, std::max<int64_t>(K * P, 1));
  const int64_t strip = strip_width(P, C, 6, K, threads);
  const int64_t nstrips = (P + strip - 1) / strip;
  parallel_for_dynamic(K * nstrips, threads, [&](int64_t item) {
    const int64_t k = item / nstrips, p0 = (item % nstrips) * strip, len = std::min(strip, P - p0);
    std::vector<uint16_t> a1(C * len, 0);
    std::vector<uint32_t> a2(C * len, 0);
    for (int64_t c = 0; c < C; ++c) {
      std::fill(o1 + (k * C + c) * P + p0, o1 + (k * C + c) * P + p0 + len, 0);
      std::fill(o2 + (k * C + c) * P + p0, o2 + (k * C + c) * P + p0 + len, 0);
    }
    auto flush1 = [&] {
      for (int64_t c = 0; c < C; ++c) {
        int64_t* d = o1 + (k * C + c) * P + p0;
        uint16_t* b = a1.data() + c * len;
        for (int64_t i = 0; i < len; ++i) {
          d[i] += b[i];
          b[i] = 0;
        }
      }
    };
    auto flush2 = [&] {
      for (int64_t c = 0; c < C; ++c) {
        int64_t* d = o2 + (k * C + c) * P + p0;
        uint32_t* b = a2.data() + c * len;
        for (int64_t i = 0; i < len; ++i) {
          d[i] += b[i];
          b[i] = 0;
        }
      }
    };
    // flush before an accumulator could exceed its range (at most kFlushS1 / kFlushS2 images each)
    int64_t since1 = 0, since2 = 0;
    auto room = [&](int64_t n) {
      if (since1 + n > kFlushS1) {
        flush1();
        since1 = 0;
      }
      if (since2 + n > kFlushS2) {
        flush2();
        since2 = 0;
      }
      since1 += n;
      since2 += n;
    };
    const int64_t end = offsets[k + 1];
    int64_t i = offsets[k];
    for (; i + 4 <= end; i += 4) {
      room(4);
      const uint8_t* ia = x + order[i] * C * P + p0;
      const uint8_t* ib = x + order[i + 1] * C * P + p0;
      const uint8_t* ic = x + order[i + 2] * C * P + p0;
      const uint8_t* id = x + order[i + 3] * C * P + p0;
      for (int64_t c = 0; c < C; ++c)
        accumulate_u8x4(ia + c * P, ib + c * P, ic + c * P, id + c * P, a1.data() + c * len, a2.data() + c * len,
                        len);
    }
    for (; i < end; ++i) {
      room(1);
      const uint8_t* img = x + order[i] * C * P + p0;
      for (int64_t c = 0; c < C; ++c) accumulate_u8(img + c * P, a1.data() + c * len, a2.data() + c * len, len);
    }
    flush1();
    flush2();
  });
}

// Sums for float images [N, C, H, W] (float32 or float64) on the grid floor(x * scale);
// s1, s2: int64 [K, C, H*W] (exact). Returns (min, max, number of NaN / out-of-[0, 1] values).
template <typename T>
std::tuple<double, double, int64_t> class_sums_float(carray<T> images, carray<int64_t> labels, carray<int64_t> s1,
                                                     carray<int64_t> s2, int64_t num_classes, int num_threads,
                                                     double scale) {
  check_common(images, labels, s1, s2, num_classes);
  if (!(scale >= 1.0 && scale <= 1048576.0)) throw std::invalid_argument("scale: expected a value in [1, 2^20]");
  const int64_t N = images.shape(0), C = images.shape(1), P = images.shape(2) * images.shape(3);
  const int64_t K = num_classes;
  const T* x = images.data();
  const int64_t* y = labels.data();
  int64_t* o1 = s1.mutable_data();
  int64_t* o2 = s2.mutable_data();
  // doubles hold integer sums exactly below 2^53: q^2 <= 2^40, so flush every 2^12 images
  const int64_t flush_every = 4096;
  std::vector<int64_t> order, offsets;
  const int threads = clamp_threads(num_threads, std::max<int64_t>(K * P, 1));
  const int64_t strip = strip_width(P, C, 16, K, threads);
  const int64_t nstrips = (P + strip - 1) / strip;
  std::vector<double> stats(3 * K * nstrips);
  for (int64_t i = 0; i < K * nstrips; ++i) {
    stats[3 * i] = std::numeric_limits<double>::infinity();
    stats[3 * i + 1] = -std::numeric_limits<double>::infinity();
    stats[3 * i + 2] = 0.0;
  }
  {
    py::gil_scoped_release nogil;
    group_by_class(y, N, K, order, offsets);
    parallel_for_dynamic(K * nstrips, threads, [&](int64_t item) {
      const int64_t k = item / nstrips, p0 = (item % nstrips) * strip, len = std::min(strip, P - p0);
      std::vector<double> a1(C * len, 0.0), a2(C * len, 0.0);
      for (int64_t c = 0; c < C; ++c) {
        std::fill(o1 + (k * C + c) * P + p0, o1 + (k * C + c) * P + p0 + len, 0);
        std::fill(o2 + (k * C + c) * P + p0, o2 + (k * C + c) * P + p0 + len, 0);
      }
      auto flush = [&] {
        for (int64_t c = 0; c < C; ++c) {
          int64_t* d1 = o1 + (k * C + c) * P + p0;
          int64_t* d2 = o2 + (k * C + c) * P + p0;
          double* b1 = a1.data() + c * len;
          double* b2 = a2.data() + c * len;
          for (int64_t i = 0; i < len; ++i) {
            d1[i] += static_cast<int64_t>(b1[i]);
            d2[i] += static_cast<int64_t>(b2[i]);
            b1[i] = 0.0;
            b2[i] = 0.0;
          }
        }
      };
      int64_t since = 0;
      for (int64_t i = offsets[k]; i < offsets[k + 1]; ++i) {
        const T* img = x + order[i] * C * P + p0;
        for (int64_t c = 0; c < C; ++c) {
          accumulate_float(img + c * P, a1.data() + c * len, a2.data() + c * len, len, scale, &stats[3 * item]);
        }
        if (++since == flush_every) {
          flush();
          since = 0;
        }
      }
      flush();
    });
  }
  double lo = std::numeric_limits<double>::infinity(), hi = -lo, bad = 0.0;
  for (int64_t i = 0; i < K * nstrips; ++i) {
    lo = std::min(lo, stats[3 * i]);
    hi = std::max(hi, stats[3 * i + 1]);
    bad += stats[3 * i + 2];
  }
  return {lo, hi, static_cast<int64_t>(bad)};
}

}  // namespace fastorals::onepixel

FASTORALS_REGISTER(onepixel, m) {
  using namespace fastorals::onepixel;
  m.def("class_sums_u8", &class_sums_u8,
        "Per-class sums of uint8 images [N,C,H,W] into int64 s1, s2 [K,C,H*W] (exact).", py::arg("images"),
        py::arg("labels"), py::arg("s1"), py::arg("s2"), py::arg("num_classes"), py::arg("num_threads"));
  m.def("class_sums_f32", &class_sums_float<float>,
        "Exact per-class sums of float32 images quantized to floor(x*scale), into int64 s1, s2; returns "
        "(min, max, number of NaN/out-of-range values).",
        py::arg("images"), py::arg("labels"), py::arg("s1"), py::arg("s2"), py::arg("num_classes"),
        py::arg("num_threads"), py::arg("scale"));
  m.def("class_sums_f64", &class_sums_float<double>,
        "Exact per-class sums of float64 images quantized to floor(x*scale), into int64 s1, s2; returns "
        "(min, max, number of NaN/out-of-range values).",
        py::arg("images"), py::arg("labels"), py::arg("s1"), py::arg("s2"), py::arg("num_classes"),
        py::arg("num_threads"), py::arg("scale"));
}
