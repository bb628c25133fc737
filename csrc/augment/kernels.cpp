// fastorals._C.augment: batched per-sample augmentation on the CPU. One OpenMP task per
// sample runs that sample's whole chain (crop/flip, ops, cutout, ToTensor/Normalize) in one
// Engine over thread-local ping-pong buffers.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>

#include "augment/engine.h"
#include "common/checks.h"
#include "common/parallel.h"
#include "common/registry.h"

namespace fastorals::augment {

namespace {

void check_shape(const py::array& a, std::initializer_list<py::ssize_t> shape, const char* name) {
  check_ndim(a, static_cast<py::ssize_t>(shape.size()), name);
  py::ssize_t i = 0;
  for (auto s : shape) check_dim(a, i++, s, name);
}

// Bytes of float output from which it is streamed past the caches: the L2 of every thread.
int64_t stream_threshold(int threads) {
  static const int64_t forced = [] {
    const char* e = std::getenv("FASTORALS_AUGMENT_STREAM_BYTES");
    return e ? std::strtoll(e, nullptr, 10) : int64_t(-1);
  }();
  if (forced >= 0) return forced;
  static const int64_t l2 = [] {
    long v = -1;
#if defined(_SC_LEVEL2_CACHE_SIZE)
    v = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    return v > 0 ? int64_t(v) : int64_t(1) << 20;
  }();
  return l2 * threads;
}

}  // namespace

void apply_chains(carray<uint8_t> images, carray<int32_t> ops, carray<double> values, carray<int32_t> crop,
                  carray<uint8_t> flip, carray<int32_t> cutout, carray<float> mean, carray<float> std,
                  py::array out, int num_threads) {
  check_ndim(images, 4, "images");
  const py::ssize_t B = images.shape(0), C = images.shape(1), H = images.shape(2), W = images.shape(3);
  if (C != 1 && C != 3) throw std::invalid_argument("images: expected 1 or 3 channels, got " + std::to_string(C));
  if (H < 1 || W < 1) throw std::invalid_argument("images: expected height and width >= 1");
  check_ndim(ops, 2, "ops");
  check_dim(ops, 0, B, "ops");
  const py::ssize_t K = ops.shape(1);
  check_shape(values, {B, K}, "values");
  check_shape(crop, {B, 2}, "crop");
  check_shape(flip, {B}, "flip");
  check_shape(cutout, {B, 4}, "cutout");
  check_shape(mean, {C}, "mean");
  check_shape(std, {C}, "std");
  check_shape(out, {B, C, H, W}, "out");
  check_contiguous(out, "out");
  check_writeable(out, "out");
  const bool float_out = out.dtype().is(py::dtype::of<float>());
  if (!float_out && !out.dtype().is(py::dtype::of<uint8_t>()))
    throw std::invalid_argument("out: expected dtype uint8 or float32");

  const uint8_t* img = images.data();
  const int32_t* op = ops.data();
  const double* val = values.data();
  const int32_t* cr = crop.data();
  const uint8_t* fl = flip.data();
  const int32_t* cu = cutout.data();
  const float* mu = mean.data();
  const float* sd = std.data();
  void* dst = out.mutable_data();

  for (py::ssize_t i = 0; i < B * K; ++i) {
    if (op[i] < -1 || op[i] >= kNumOps) {
      std::ostringstream s;
      s << "ops: unknown op id " << op[i] << " at [" << i / K << ", " << i % K << "], expected -1.." << kNumOps - 1;
      throw std::invalid_argument(s.str());
    }
  }

  const int64_t chw = int64_t(C) * H * W;
  const int iC = int(C), iH = int(H), iW = int(W);
  // A parallel region costs more than it saves on tiny batches (e.g. a few 32x32 images).
  const int threads = int64_t(B) * chw * (K + 1) < (int64_t(1) << 16) ? 1 : num_threads;
  // A float output larger than the threads' L2 caches together cannot stay in cache for the
  // consumer anyway: write it with non-temporal stores (no read-for-ownership, and the caller's
  // working set survives). FASTORALS_AUGMENT_STREAM_BYTES overrides the threshold.
  const bool stream = float_out && int64_t(B) * chw * 4 >= stream_threshold(clamp_threads(threads, B));
  py::gil_scoped_release nogil;
  parallel_for_dynamic(B, threads, [&](int64_t b) {
    static thread_local Scratch scratch;
    scratch.reserve(iC, iH, iW);
    Engine e(scratch, iC, iH, iW);
    e.load(img + b * chw, cr[2 * b], cr[2 * b + 1], fl[b] != 0);
    for (py::ssize_t k = 0; k < K; ++k) {
      const int o = op[b * K + k];
      if (o >= 0) e.apply(o, val[b * K + k]);
    }
    if (float_out)
      e.store_f32(static_cast<float*>(dst) + b * chw, cu + 4 * b, mu, sd, stream);
    else
      e.store_u8(static_cast<uint8_t*>(dst) + b * chw, cu + 4 * b);
  });
}

}  // namespace fastorals::augment

FASTORALS_REGISTER(augment, m) {
  m.doc() = "Batched per-sample image augmentation (PIL-exact ops, one pass per image chain).";
  m.def("apply_chains", &fastorals::augment::apply_chains,
        "Apply per-sample op chains to uint8 [B, C, H, W] images, writing uint8 or float32 `out`.\n"
        "ops int32 [B, K] (-1 = none), values float64 [B, K], crop int32 [B, 2] (dy, dx),\n"
        "flip uint8 [B], cutout int32 [B, 4] (y1, y2, x1, x2), mean/std float32 [C].",
        py::arg("images"), py::arg("ops"), py::arg("values"), py::arg("crop"), py::arg("flip"),
        py::arg("cutout"), py::arg("mean"), py::arg("std"), py::arg("out"), py::arg("num_threads") = 0);
  m.attr("num_ops") = static_cast<int>(fastorals::augment::kNumOps);
}
