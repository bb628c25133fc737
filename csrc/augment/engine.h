// Per-image augmentation engine: applies one sample's whole chain of ops to a planar uint8
// image (C = 1 or 3 planes of H x W) using two ping-pong buffers from thread-local scratch.
//
// Every op reproduces Pillow's arithmetic (ImageOps, ImageEnhance, ImageFilter, Image.transform
// with NEAREST, Image.resize with LANCZOS, GaussianBlur's extended box blur) so outputs equal
// PIL's bit for bit. Pointwise ops are not applied to pixels at once: they are composed into a
// per-channel 256-entry lookup table that the next pixel pass (a geometric op, a filter or the
// final store) applies on the fly; histogram-based ops read the histogram of the image seen
// through that table. A chain of pointwise ops therefore costs no pixel pass at all.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace fastorals::augment {

enum OpId : int32_t {
  kFlip = 0,
  kMirror,
  kEdgeEnhance,
  kDetail,
  kSmooth,
  kAutoContrast,
  kEqualize,
  kInvert,
  kGaussianBlur,
  kResizeCrop,
  kRotate,
  kPosterize,
  kSolarize,
  kSolarizeAdd,
  kColor,
  kContrast,
  kBrightness,
  kSharpness,
  kShearX,
  kShearY,
  kTranslateX,
  kTranslateY,
  kNumOps
};

// Lanczos coefficients of one resize axis, for the outputs [o0, o0 + count).
struct Coeffs {
  int in_size = 0, out_size = 0, o0 = 0, count = 0, ksize = 0;
  std::vector<int32_t> bounds, kk;
};

struct Scratch {
  std::vector<uint8_t> img[2];   // ping-pong images, C*H*W each
  std::vector<uint8_t> plane[2];  // plane-sized work buffers (blur, resize)
  std::vector<float> frows;       // 3 rows of floats (3x3 filters)
  std::vector<uint32_t> acc;      // running sums (box blur)
  std::vector<int32_t> idx;       // source index per output pixel of a row (affine)
  std::vector<int32_t> bounds;    // resize: (min, count) per output sample
  std::vector<int32_t> kk;        // resize: fixed point coefficients
  std::vector<double> kd;         // resize: coefficient work buffer
  std::vector<Coeffs> coeffs;     // resize: small cache (levels repeat the same zooms)
  size_t coeffs_next = 0;
  void reserve(int C, int H, int W);
  const Coeffs& lanczos(int in_size, int out_size, int o0, int count, const Coeffs* keep);
};

class Engine {
 public:
  Engine(Scratch& s, int C, int H, int W) : s_(s), C_(C), H_(H), W_(W), HW_(int64_t(H) * W) {}

  // Start from `src` ([C, H, W]) cropped by (dy, dx) with zero fill, then mirrored if `flip`.
  void load(const uint8_t* src, int dy, int dx, bool flip);
  void apply(int op, double v);
  // Final pass. cut = (y1, y2, x1, x2): box zeroed (after ToTensor for float output).
  void store_u8(uint8_t* out, const int32_t* cut);
  // ``stream``: write the floats with non-temporal stores (for outputs larger than the caches).
  void store_f32(float* out, const int32_t* cut, const float* mean, const float* std, bool stream = false);

 private:
  const uint8_t* plane(int c) const { return cur_ + c * HW_; }
  uint8_t* next();
  void commit(uint8_t* buf, bool lut_applied);
  void reset_lut();
  void flush();
  void base_hist();
  void cur_hist(int c, uint32_t* h);
  void compose(int c, const uint8_t* f);
  void compose_all(const uint8_t* f);

  void flip_ud();
  void mirror();
  void filter3x3(const float* k, bool sharpen, float alpha);
  void color(float a);
  void contrast(float a);
  void autocontrast();
  void equalize();
  void gaussian_blur(float radius);
  void resize_crop(double zoom);
  void rotate(double angle);
  void transpose_op(int kind);
  void affine(const double* a);

  Scratch& s_;
  int C_, H_, W_;
  int64_t HW_;
  const uint8_t* cur_ = nullptr;
  int which_ = -1;  // -1: cur_ is the caller's input, else index into s_.img
  bool lut_id_ = true;
  bool hist_ok_ = false;
  uint8_t lut_[3][256];
  uint32_t hist_[3][256];
};

}  // namespace fastorals::augment
