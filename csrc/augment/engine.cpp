// Per-image augmentation engine (see engine.h). Pillow's arithmetic is reproduced exactly:
// float32 where Pillow uses float, double where it uses double, the same fixed point, and no
// fused multiply-add (Pillow's x86-64 builds have none), hence fp-contract=off below.
#include "augment/engine.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "common/simd.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace fastorals::augment {

namespace {

constexpr double kPi = 3.14159265358979323846;

// FASTORALS_AUGMENT_SCALAR=1 turns the hand-written SIMD paths off (to test the portable ones).
inline bool simd_allowed() {
  static const bool ok = std::getenv("FASTORALS_AUGMENT_SCALAR") == nullptr;
  return ok;
}


// Clamp to [0, 255] after truncating a float toward zero. For every finite v in int range this
// equals Pillow's clip8 (clamp in float, then truncate) and ImagingBlend's clipping, and it
// vectorizes (cvttps2dq + integer min/max) where the float comparisons would branch.
inline int clamp255(int v) {
  v = v < 0 ? 0 : v;
  return v > 255 ? 255 : v;
}
inline uint8_t trunc_clip8(float v) { return static_cast<uint8_t>(clamp255(static_cast<int>(v))); }

// ImagingBlend(in1, in2, alpha): in1 + alpha * (in2 - in1) in float, truncated; clipped when
// alpha is outside [0, 1] (inside, the value cannot leave [0, 255]).
inline uint8_t blend_px(int in1, int in2, float alpha) {
  return trunc_clip8(static_cast<float>(in1) + alpha * static_cast<float>(in2 - in1));
}

inline int gray_l(int r, int g, int b) {  // Convert.c rgb2l (L24)
  return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;
}

// Python's float % 360.0
inline double py_mod360(double v) {
  double m = std::fmod(v, 360.0);
  if (m != 0.0) {
    if (m < 0.0) m += 360.0;
  } else {
    m = 0.0;
  }
  return m;
}

// Python's round(x, 15): correctly rounded decimal, back to the nearest double.
inline double py_round15(double x) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.15f", x);
  return std::strtod(buf, nullptr);
}

inline int pil_floor(double v) { return v < 0.0 ? static_cast<int>(std::floor(v)) : static_cast<int>(v); }
inline int pil_coord(double v) { return v < 0.0 ? -1 : static_cast<int>(v); }

inline double sinc(double x) {
  if (x == 0.0) return 1.0;
  x = x * kPi;
  return std::sin(x) / x;
}
inline double lanczos(double x) {
  if (-3.0 <= x && x < 3.0) return sinc(x) * sinc(x / 3);
  return 0.0;
}

constexpr int kPrecisionBits = 32 - 8 - 2;

// Resample.c precompute_coeffs + normalize_coeffs_8bpc for outputs [o0, o0 + count) of a
// LANCZOS resize inSize -> outSize. bounds[2i] = first input, bounds[2i+1] = taps (-1: the
// output lies outside [0, outSize) and is filled with 0). Returns ksize.
int lanczos_coeffs(int in_size, int out_size, int o0, int count, std::vector<int32_t>& bounds,
                   std::vector<int32_t>& kk, std::vector<double>& kd) {
  const float in0 = 0.0f, in1 = static_cast<float>(in_size);
  double scale = static_cast<double>(in1 - in0) / out_size;
  double filterscale = scale < 1.0 ? 1.0 : scale;
  double support = 3.0 * filterscale;
  int ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  bounds.assign(size_t(count) * 2, 0);
  kk.assign(size_t(count) * ksize, 0);
  kd.assign(size_t(ksize), 0.0);
  for (int i = 0; i < count; ++i) {
    int xx = o0 + i;
    if (xx < 0 || xx >= out_size) {
      bounds[2 * i] = 0;
      bounds[2 * i + 1] = -1;
      continue;
    }
    double center = in0 + (xx + 0.5) * scale;
    double ww = 0.0;
    double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    for (int x = 0; x < xmax; ++x) {
      double w = lanczos((x + xmin - center + 0.5) * ss);
      kd[x] = w;
      ww += w;
    }
    for (int x = 0; x < xmax; ++x) {
      if (ww != 0.0) kd[x] /= ww;
    }
    int32_t* k = &kk[size_t(i) * ksize];
    for (int x = 0; x < xmax; ++x) {
      k[x] = kd[x] < 0 ? static_cast<int>(-0.5 + kd[x] * (1 << kPrecisionBits))
                       : static_cast<int>(0.5 + kd[x] * (1 << kPrecisionBits));
    }
    bounds[2 * i] = xmin;
    bounds[2 * i + 1] = xmax;
  }
  return ksize;
}

// BoxBlur.c _gaussian_blur_radius (float arithmetic, sqrt/floor in double).
float gaussian_box_radius(float radius, int passes) {
  float sigma2, L, l, a;
  sigma2 = radius * radius / passes;
  L = static_cast<float>(std::sqrt(12.0 * sigma2 + 1.0));
  l = static_cast<float>(std::floor((L - 1.0) / 2.0));
  a = (2 * l + 1) * (l * (l + 1) - 3 * sigma2);
  a /= 6 * (sigma2 - (l + 1) * (l + 1));
  return l + a;
}

// ---------------------------------------------------------------- vectorizable row kernels

// One row of a 3x3 filter (ImagingFilter's float sums). ``sharpen``: the sum is Sharpness's
// degenerate pixel d, and the output is blend(d, image, alpha) (ImageEnhance.Sharpness).
FASTORALS_CLONES void filter_row(const float* FASTORALS_RESTRICT a, const float* FASTORALS_RESTRICT b,
                                 const float* FASTORALS_RESTRICT c, const float* FASTORALS_RESTRICT k, bool sharpen,
                                 float alpha, uint8_t* FASTORALS_RESTRICT out, int W) {
  // a: row y+1 (kernel[0..2]), b: row y (kernel[3..5]), c: row y-1 (kernel[6..8])
  const float k0 = k[0], k1 = k[1], k2 = k[2], k3 = k[3], k4 = k[4], k5 = k[5], k6 = k[6], k7 = k[7], k8 = k[8];
  for (int x = 1; x < W - 1; ++x) {
    float ss = 0.5f;
    ss += (a[x - 1] * k0 + a[x] * k1) + a[x + 1] * k2;
    ss += (b[x - 1] * k3 + b[x] * k4) + b[x + 1] * k5;
    ss += (c[x - 1] * k6 + c[x] * k7) + c[x + 1] * k8;
    if (sharpen) {
      const float d = static_cast<float>(clamp255(static_cast<int>(ss)));
      ss = d + alpha * (b[x] - d);
    }
    out[x] = trunc_clip8(ss);
  }
}

FASTORALS_CLONES void box_row(const uint8_t* FASTORALS_RESTRICT add, const uint8_t* FASTORALS_RESTRICT sub,
                              const uint8_t* FASTORALS_RESTRICT far, uint32_t* FASTORALS_RESTRICT acc,
                              uint8_t* FASTORALS_RESTRICT o, int m, uint32_t ww, uint32_t fw) {
  for (int j = 0; j < m; ++j) {
    uint32_t a = acc[j] + uint32_t(add[j]) - uint32_t(sub[j]);
    acc[j] = a;
    uint32_t bulk = a * ww + (uint32_t(sub[j]) + uint32_t(far[j])) * fw;
    o[j] = static_cast<uint8_t>((bulk + (1u << 23)) >> 24);
  }
}

FASTORALS_CLONES void acc_add(const uint8_t* FASTORALS_RESTRICT row, uint32_t* FASTORALS_RESTRICT acc, int m,
                              uint32_t times) {
  for (int j = 0; j < m; ++j) acc[j] += uint32_t(row[j]) * times;
}

// The r = 0 row of box_pass: the window sum is the pixel itself (acc == add), so the running sum
// and its buffer drop out; the same uint32 arithmetic otherwise.
FASTORALS_CLONES void box_row_r0(const uint8_t* FASTORALS_RESTRICT cur, const uint8_t* FASTORALS_RESTRICT prev,
                                 const uint8_t* FASTORALS_RESTRICT next, uint8_t* FASTORALS_RESTRICT o, int m,
                                 uint32_t ww, uint32_t fw) {
  for (int j = 0; j < m; ++j) {
    uint32_t bulk = uint32_t(cur[j]) * ww + (uint32_t(prev[j]) + uint32_t(next[j])) * fw;
    o[j] = static_cast<uint8_t>((bulk + (1u << 23)) >> 24);
  }
}

// One pass of Pillow's box blur along the rows of an n x m plane (each column independently):
// acc = sum of src[clamp(i-r .. i+r)], out = (acc * ww + (src[clamp(i-r-1)] + src[clamp(i+r+1)]) * fw
// + 2^23) >> 24, all in uint32 as ImagingLineBoxBlur8.
void box_pass(const uint8_t* src, uint8_t* dst, int n, int m, int r, uint32_t ww, uint32_t fw, uint32_t* acc) {
  const int64_t M = m;
  if (r == 0) {
    for (int i = 0; i < n; ++i)
      box_row_r0(src + i * M, src + std::max(i - 1, 0) * M, src + std::min(i + 1, n - 1) * M, dst + i * M, m, ww, fw);
    return;
  }
  for (int j = 0; j < m; ++j) acc[j] = 0;
  acc_add(src, acc, m, uint32_t(r + 1));
  int direct = std::min(r, n);  // rows 0 .. r-1, clamped
  for (int i = 0; i < direct; ++i) acc_add(src + i * M, acc, m, 1u);
  if (r > n) acc_add(src + (n - 1) * M, acc, m, uint32_t(r - n));
  for (int i = 0; i < n; ++i) {
    box_row(src + std::min(i + r, n - 1) * M, src + std::max(i - r - 1, 0) * M, src + std::min(i + r + 1, n - 1) * M,
            acc, dst + i * M, m, ww, fw);
  }
}

#if defined(__SSE2__)
// 16 x 16 byte tile transpose with SSE2 unpacks (x86-64 baseline).
inline void transpose_tile16(const uint8_t* src, int64_t ss, uint8_t* dst, int64_t ds) {
  __m128i a[16], b[16];
  for (int i = 0; i < 16; ++i) a[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i * ss));
  for (int k = 0; k < 8; ++k) {  // bytes of row pairs
    b[2 * k] = _mm_unpacklo_epi8(a[2 * k], a[2 * k + 1]);
    b[2 * k + 1] = _mm_unpackhi_epi8(a[2 * k], a[2 * k + 1]);
  }
  for (int g = 0; g < 4; ++g) {  // 16-bit pairs of row quads
    const __m128i* t = b + 4 * g;
    a[4 * g + 0] = _mm_unpacklo_epi16(t[0], t[2]);
    a[4 * g + 1] = _mm_unpackhi_epi16(t[0], t[2]);
    a[4 * g + 2] = _mm_unpacklo_epi16(t[1], t[3]);
    a[4 * g + 3] = _mm_unpackhi_epi16(t[1], t[3]);
  }
  for (int g = 0; g < 2; ++g) {  // 32-bit pairs of row octets
    const __m128i* t = a + 8 * g;
    for (int q = 0; q < 4; ++q) {
      b[8 * g + 2 * q] = _mm_unpacklo_epi32(t[q], t[q + 4]);
      b[8 * g + 2 * q + 1] = _mm_unpackhi_epi32(t[q], t[q + 4]);
    }
  }
  for (int j = 0; j < 8; ++j) {  // 64-bit halves: rows 0-7 with rows 8-15
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + (2 * j) * ds), _mm_unpacklo_epi64(b[j], b[j + 8]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + (2 * j + 1) * ds), _mm_unpackhi_epi64(b[j], b[j + 8]));
  }
}
#endif

void transpose_u8(const uint8_t* src, uint8_t* dst, int n, int m) {  // src n x m -> dst m x n
  constexpr int B = 16;
  int n16 = 0, m16 = 0;
#if defined(__SSE2__)
  n16 = n / B * B;
  m16 = m / B * B;
  for (int i0 = 0; i0 < n16; i0 += B)
    for (int j0 = 0; j0 < m16; j0 += B) transpose_tile16(src + int64_t(i0) * m + j0, m, dst + int64_t(j0) * n + i0, n);
#endif
  for (int i0 = 0; i0 < n; i0 += B) {
    int i1 = std::min(i0 + B, n);
    for (int j0 = (i0 < n16 ? m16 : 0); j0 < m; j0 += B) {
      int j1 = std::min(j0 + B, m);
      for (int i = i0; i < i1; ++i)
        for (int j = j0; j < j1; ++j) dst[int64_t(j) * n + i] = src[int64_t(i) * m + j];
    }
  }
}

// Lanczos pass along the rows of a plane for one output row (each column independently):
// out[x] = clip8(2^21 + sum_t src[ymin + t][x] * k[t]), int32 as ImagingResampleVertical_8bpc.
// Integer sums are exact, so accumulating tap by tap over a row equals Pillow's per-pixel order.
FASTORALS_CLONES void resample_vrow(const uint8_t* FASTORALS_RESTRICT src, int64_t stride, int ymin, int taps,
                                    const int32_t* FASTORALS_RESTRICT k, uint8_t* FASTORALS_RESTRICT out, int W,
                                    int32_t* FASTORALS_RESTRICT acc) {
  for (int x = 0; x < W; ++x) acc[x] = 1 << (kPrecisionBits - 1);
  for (int t = 0; t < taps; ++t) {
    const uint8_t* row = src + (ymin + t) * stride;
    const int32_t kt = k[t];
    for (int x = 0; x < W; ++x) acc[x] += int32_t(row[x]) * kt;
  }
  for (int x = 0; x < W; ++x) {
    int v = acc[x] >> kPrecisionBits;
    out[x] = static_cast<uint8_t>(clamp255(v));
  }
}

// ImageEnhance.Color: blend(L(rgb) replicated, rgb, a) per pixel (Convert.c rgb2l, ImagingBlend).
FASTORALS_CLONES void color_rows(const uint8_t* FASTORALS_RESTRICT R, const uint8_t* FASTORALS_RESTRICT G,
                                 const uint8_t* FASTORALS_RESTRICT B, uint8_t* FASTORALS_RESTRICT out, int64_t n,
                                 float a) {
  uint8_t* FASTORALS_RESTRICT oR = out;
  uint8_t* FASTORALS_RESTRICT oG = out + n;
  uint8_t* FASTORALS_RESTRICT oB = out + 2 * n;
  for (int64_t i = 0; i < n; ++i) {
    int r = R[i], g = G[i], b = B[i];
    int l = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;
    float fl = static_cast<float>(l);
    oR[i] = trunc_clip8(fl + a * static_cast<float>(r - l));
    oG[i] = trunc_clip8(fl + a * static_cast<float>(g - l));
    oB[i] = trunc_clip8(fl + a * static_cast<float>(b - l));
  }
}

FASTORALS_CLONES void reverse_row_portable(const uint8_t* FASTORALS_RESTRICT in, uint8_t* FASTORALS_RESTRICT out, int n) {
  for (int i = 0; i < n; ++i) out[i] = in[n - 1 - i];
}

#if defined(__GNUC__) && defined(__x86_64__)
// Masks of the first min(left, N) lanes (left >= 0) for the masked loads and stores of tails.
inline __mmask16 lanes16(int64_t left) { return left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1); }
inline __mmask32 lanes32(int64_t left) { return left >= 32 ? ~__mmask32(0) : __mmask32((1u << left) - 1); }
inline __mmask64 lanes64(int64_t left) { return left >= 64 ? ~__mmask64(0) : (__mmask64(1) << left) - 1; }

// table[x] for the 64 bytes of x, a 256-entry byte table in t[0..3] (64 entries each): two
// 128-entry VBMI permutes, bit 7 picks the half.
__attribute__((target("avx512f,avx512bw,avx512vbmi"))) inline __m512i lut64_vbmi(__m512i x, const __m512i* t) {
  return _mm512_mask_blend_epi8(_mm512_movepi8_mask(x), _mm512_permutex2var_epi8(t[0], x, t[1]),
                                _mm512_permutex2var_epi8(t[2], x, t[3]));
}
#endif

#if defined(__GNUC__) && defined(__x86_64__)
// 64 bytes per step: out[i..i+63] are in[n-64-i .. n-1-i] reversed by one byte permute.
__attribute__((target("avx512f,avx512bw,avx512vbmi"))) void reverse_row_vbmi(const uint8_t* in, uint8_t* out, int n) {
  alignas(64) uint8_t iota[64];
  for (int k = 0; k < 64; ++k) iota[k] = static_cast<uint8_t>(k);
  const __m512i lanes = _mm512_load_si512(iota);
  // byte index (m - 1 - lane): the reversal of the first m bytes (m = 64: of all of them)
  auto reversal = [&](int m) { return _mm512_sub_epi8(_mm512_set1_epi8(static_cast<char>(m - 1)), lanes); };
  const __m512i r = reversal(64);
  int i = 0;
  for (; i + 64 <= n; i += 64)
    _mm512_storeu_si512(out + i, _mm512_maskz_permutexvar_epi8(~__mmask64(0), r, _mm512_loadu_si512(in + n - 64 - i)));
  const int m = n - i;  // the remaining outputs mirror the first m inputs: one masked step
  if (m > 0) {
    const __mmask64 k = lanes64(m);
    const __m512i idx = reversal(m);
    _mm512_mask_storeu_epi8(out + i, k, _mm512_maskz_permutexvar_epi8(~__mmask64(0), idx, _mm512_maskz_loadu_epi8(k, in)));
  }
}
#endif

bool has_vbmi();

void reverse_row(const uint8_t* in, uint8_t* out, int n) {
#if defined(__GNUC__) && defined(__x86_64__)
  if (n >= 64 && has_vbmi()) {
    reverse_row_vbmi(in, out, n);
    return;
  }
#endif
  reverse_row_portable(in, out, n);
}

// Source index of each output pixel of a row in Pillow's 16.16 affine_fixed (-1: outside).
FASTORALS_CLONES void fixed_row(int xx0, int yy0, int a0, int a3, int W, int H, int32_t* FASTORALS_RESTRICT idx) {
  for (int x = 0; x < W; ++x) {
    int xin = (xx0 + x * a0) >> 16;
    int yin = (yy0 + x * a3) >> 16;
    bool ok = unsigned(xin) < unsigned(W) && unsigned(yin) < unsigned(H);
    idx[x] = ok ? yin * W + xin : -1;
  }
}

void gather_row_scalar(const uint8_t* p, const int32_t* idx, uint8_t* o, int n) {
  for (int x = 0; x < n; ++x) {
    int i = idx[x];
    uint8_t v = p[i < 0 ? 0 : i];
    o[x] = i < 0 ? 0 : v;
  }
}

#if defined(__GNUC__) && defined(__x86_64__)
// o[x] = p[idx[x]] (0 where idx < 0) with 32-bit gathers; reads stay inside [p, p + plane): a
// dword load is moved back from the plane's last bytes and the wanted byte shifted out.
__attribute__((target("avx2"))) void gather_row_avx2(const uint8_t* p, int64_t plane, const int32_t* idx,
                                                      uint8_t* o, int n) {
  int x = 0;
  if (plane >= 4) {
    const __m256i lim = _mm256_set1_epi32(int(plane - 4));
    const __m256i zero = _mm256_setzero_si256();
    const __m256i ff = _mm256_set1_epi32(0xFF);
    for (; x + 8 <= n; x += 8) {
      __m256i i = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx + x));
      __m256i neg = _mm256_cmpgt_epi32(zero, i);
      __m256i ic = _mm256_max_epi32(i, zero);
      __m256i base = _mm256_min_epi32(ic, lim);
      __m256i shift = _mm256_slli_epi32(_mm256_sub_epi32(ic, base), 3);
      __m256i v = _mm256_i32gather_epi32(reinterpret_cast<const int*>(p), base, 1);
      v = _mm256_and_si256(_mm256_srlv_epi32(v, shift), ff);
      v = _mm256_andnot_si256(neg, v);
      __m128i lo = _mm256_castsi256_si128(v), hi = _mm256_extracti128_si256(v, 1);
      __m128i w = _mm_packus_epi32(lo, hi);
      __m128i b = _mm_packus_epi16(w, w);
      _mm_storel_epi64(reinterpret_cast<__m128i*>(o + x), b);
    }
  }
  gather_row_scalar(p, idx + x, o + x, n - x);
}
#endif

void gather_row(const uint8_t* p, int64_t plane, const int32_t* idx, uint8_t* o, int n) {
#if defined(__GNUC__) && defined(__x86_64__)
  static const bool avx2 = simd_allowed() && __builtin_cpu_supports("avx2");
  if (avx2) {
    gather_row_avx2(p, plane, idx, o, n);
    return;
  }
#endif
  (void)plane;
  gather_row_scalar(p, idx, o, n);
}

void lut_row_scalar(const uint8_t* FASTORALS_RESTRICT in, const uint8_t* FASTORALS_RESTRICT lut,
                    uint8_t* FASTORALS_RESTRICT out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = lut[in[i]];
}


#if defined(__GNUC__) && defined(__x86_64__)
// 256-entry byte table with AVX-512 VBMI: two 128-entry permutes, bit 7 picks the half.
__attribute__((target("avx512f,avx512bw,avx512vbmi"))) void lut_row_vbmi(const uint8_t* in, const uint8_t* lut,
                                                                        uint8_t* out, int64_t n) {
  const __m512i t[4] = {_mm512_loadu_si512(lut), _mm512_loadu_si512(lut + 64), _mm512_loadu_si512(lut + 128),
                        _mm512_loadu_si512(lut + 192)};
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) _mm512_storeu_si512(out + i, lut64_vbmi(_mm512_loadu_si512(in + i), t));
  if (i < n) {
    const __mmask64 k = lanes64(n - i);
    _mm512_mask_storeu_epi8(out + i, k, lut64_vbmi(_mm512_maskz_loadu_epi8(k, in + i), t));
  }
}
#endif

bool has_vbmi() {
#if defined(__GNUC__) && defined(__x86_64__)
  static const bool v = simd_allowed() && __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512bw");
  return v;
#else
  return false;
#endif
}

void lut_row(const uint8_t* in, const uint8_t* lut, uint8_t* out, int64_t n) {
#if defined(__GNUC__) && defined(__x86_64__)
  if (has_vbmi()) {
    lut_row_vbmi(in, lut, out, n);
    return;
  }
#endif
  lut_row_scalar(in, lut, out, n);
}

// out[i] = table[in[i]] for a 256-entry float table, bit for bit: the table's four byte planes
// are looked up with VBMI byte permutes (64 pixels per step) and interleaved back into floats
// with two more rounds of two-source byte permutes. No gathers, no arithmetic: exact for any table.
// ``stream``: non-temporal stores (from the first 64-byte aligned output on), for outputs too big
// to stay in cache: no read-for-ownership, and the caller's working set is not evicted.
void f32_lut_row_scalar(const uint8_t* FASTORALS_RESTRICT in, const float* FASTORALS_RESTRICT table,
                        float* FASTORALS_RESTRICT out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = table[in[i]];
}

#if defined(__GNUC__) && defined(__x86_64__)
__attribute__((target("avx512f,avx512bw,avx512vbmi"))) void f32_lut_row_vbmi(const uint8_t* in, const float* table,
                                                                            float* out, int64_t n, bool stream) {
  alignas(64) uint8_t planes[4][256];
  for (int v = 0; v < 256; ++v) {
    uint32_t u;
    std::memcpy(&u, table + v, 4);
    for (int k = 0; k < 4; ++k) planes[k][v] = static_cast<uint8_t>(u >> (8 * k));
  }
  __m512i t[4][4];
  for (int k = 0; k < 4; ++k)
    for (int j = 0; j < 4; ++j) t[k][j] = _mm512_load_si512(planes[k] + 64 * j);
  // pair[h]: bytes (B0[i], B1[i]) of units 32h + i -> one 16-bit pair per unit; quad[q]: floats 16q..16q+15
  alignas(64) uint8_t pair_idx[2][64], quad_idx[2][64];
  for (int h = 0; h < 2; ++h)
    for (int i = 0; i < 32; ++i) {
      pair_idx[h][2 * i] = static_cast<uint8_t>(32 * h + i);
      pair_idx[h][2 * i + 1] = static_cast<uint8_t>(64 + 32 * h + i);
    }
  for (int o = 0; o < 2; ++o)
    for (int i = 0; i < 16; ++i)
      for (int k = 0; k < 4; ++k) quad_idx[o][4 * i + k] = static_cast<uint8_t>((k < 2 ? 0 : 64) + 32 * o + 2 * i + (k & 1));
  const __m512i p0 = _mm512_load_si512(pair_idx[0]), p1 = _mm512_load_si512(pair_idx[1]);
  const __m512i q0 = _mm512_load_si512(quad_idx[0]), q1 = _mm512_load_si512(quad_idx[1]);
  int64_t i = 0;
  if (reinterpret_cast<uintptr_t>(out) % sizeof(float) != 0) stream = false;  // never 64-byte aligned
  if (stream) {  // scalar up to the first 64-byte aligned output
    const int64_t misaligned = int64_t(reinterpret_cast<uintptr_t>(out) & 63) / int64_t(sizeof(float));
    i = std::min(n, misaligned ? 16 - misaligned : int64_t(0));
    f32_lut_row_scalar(in, table, out, i);
  }
  for (; i + 64 <= n; i += 64) {
    const __m512i x = _mm512_loadu_si512(in + i);
    const __mmask64 hi = _mm512_movepi8_mask(x);
    __m512i b[4];
    for (int k = 0; k < 4; ++k)
      b[k] = _mm512_mask_blend_epi8(hi, _mm512_permutex2var_epi8(t[k][0], x, t[k][1]),
                                    _mm512_permutex2var_epi8(t[k][2], x, t[k][3]));
    const __m512i l01 = _mm512_permutex2var_epi8(b[0], p0, b[1]), h01 = _mm512_permutex2var_epi8(b[0], p1, b[1]);
    const __m512i l23 = _mm512_permutex2var_epi8(b[2], p0, b[3]), h23 = _mm512_permutex2var_epi8(b[2], p1, b[3]);
    const __m512i f[4] = {_mm512_permutex2var_epi8(l01, q0, l23), _mm512_permutex2var_epi8(l01, q1, l23),
                          _mm512_permutex2var_epi8(h01, q0, h23), _mm512_permutex2var_epi8(h01, q1, h23)};
    for (int q = 0; q < 4; ++q) {  // floats i + 16q .. i + 16q + 15
      if (stream)
        _mm512_stream_si512(reinterpret_cast<__m512i*>(out + i + 16 * q), f[q]);
      else
        _mm512_storeu_si512(out + i + 16 * q, f[q]);
    }
  }
  if (stream) _mm_sfence();
  f32_lut_row_scalar(in + i, table, out + i, n - i);
}
#endif

void f32_lut_row(const uint8_t* in, const float* table, float* out, int64_t n, bool stream) {
#if defined(__GNUC__) && defined(__x86_64__)
  if (n >= 256 && has_vbmi()) {
    f32_lut_row_vbmi(in, table, out, n, stream);
    return;
  }
#endif
  f32_lut_row_scalar(in, table, out, n);
}

bool has_avx512bw() {
#if defined(__GNUC__) && defined(__x86_64__)
  static const bool v = simd_allowed() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl");
  return v;
#else
  return false;
#endif
}

#if defined(__GNUC__) && defined(__x86_64__)

#define FASTORALS_AVX512BW __attribute__((target("avx512f,avx512bw,avx512vl")))

FASTORALS_AVX512BW inline __m512i clip8_epi32(__m512 v) {  // clamp255(int(v)) per lane
  return _mm512_min_epi32(_mm512_max_epi32(_mm512_cvttps_epi32(v), _mm512_setzero_si512()), _mm512_set1_epi32(255));
}


// (r[x-1] a + r[x] b) + r[x+1] c for the lanes of m
FASTORALS_AVX512BW inline __m512 tap3(const float* r, int x, __mmask16 m, __m512 a, __m512 b, __m512 c) {
  const __m512 l = _mm512_maskz_loadu_ps(m, r + x - 1), ce = _mm512_maskz_loadu_ps(m, r + x);
  const __m512 ri = _mm512_maskz_loadu_ps(m, r + x + 1);
  return _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(l, a), _mm512_mul_ps(ce, b)), _mm512_mul_ps(ri, c));
}

FASTORALS_AVX512BW void u8_to_f32_row_avx512(const uint8_t* r, float* dst, int W) {
  for (int x = 0; x < W; x += 16) {
    const __mmask16 m = lanes16(W - x);
    _mm512_mask_storeu_ps(dst + x, m, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, r + x))));
  }
}

// box_pass for r <= 63 with 32 columns per step in 16-bit lanes: the window sum then fits int16
// ((2r + 1) 255 < 2^15) and stays in a register down the whole column strip. Pillow's uint32
// acc ww + (sub + far) fw is formed exactly from two vpmaddwd of the (acc, sub + far) word pairs
// with the 15-bit halves of ww and fw: (acc wh + sf fh) 2^15 + (acc wl + sf fl), < 2^32.
constexpr int kBoxWordMaxR = 63;
FASTORALS_AVX512BW void box_pass_avx512(const uint8_t* src, uint8_t* dst, int n, int m, int r, uint32_t ww,
                                        uint32_t fw) {
  const int64_t M = m;
  const __m512i wlo = _mm512_set1_epi32(int32_t((ww & 0x7FFF) | ((fw & 0x7FFF) << 16)));
  const __m512i whi = _mm512_set1_epi32(int32_t((ww >> 15) | ((fw >> 15) << 16)));
  const __m512i round = _mm512_set1_epi32(1 << 23);
  auto row = [&](int i, int j, __mmask32 k) {
    return _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(k, src + i * M + j));
  };
  for (int j = 0; j < m; j += 32) {
    const __mmask32 k = lanes32(m - j);
    __m512i acc = _mm512_setzero_si512();
    if (r > 0) {
      acc = _mm512_mullo_epi16(row(0, j, k), _mm512_set1_epi16(int16_t(r + 1)));
      const int direct = std::min(r, n);  // rows 0 .. r-1, clamped
      for (int i = 0; i < direct; ++i) acc = _mm512_add_epi16(acc, row(i, j, k));
      if (r > n) acc = _mm512_add_epi16(acc, _mm512_mullo_epi16(row(n - 1, j, k), _mm512_set1_epi16(int16_t(r - n))));
    }
    for (int i = 0; i < n; ++i) {
      const __m512i sub = row(std::max(i - r - 1, 0), j, k), far = row(std::min(i + r + 1, n - 1), j, k);
      if (r > 0)
        acc = _mm512_sub_epi16(_mm512_add_epi16(acc, row(std::min(i + r, n - 1), j, k)), sub);
      else
        acc = row(i, j, k);  // the window is the pixel
      const __m512i sf = _mm512_add_epi16(sub, far);
      const __m512i plo = _mm512_unpacklo_epi16(acc, sf), phi = _mm512_unpackhi_epi16(acc, sf);
      __m512i lo = _mm512_add_epi32(_mm512_slli_epi32(_mm512_madd_epi16(plo, whi), 15), _mm512_madd_epi16(plo, wlo));
      __m512i hi = _mm512_add_epi32(_mm512_slli_epi32(_mm512_madd_epi16(phi, whi), 15), _mm512_madd_epi16(phi, wlo));
      lo = _mm512_srli_epi32(_mm512_add_epi32(lo, round), 24);
      hi = _mm512_srli_epi32(_mm512_add_epi32(hi, round), 24);
      _mm256_mask_storeu_epi8(dst + i * M + j, k, _mm512_cvtepi16_epi8(_mm512_packus_epi32(lo, hi)));
    }
  }
}

// resample_vrow for columns [x0, x1), 64 columns per step with the four int32 sums in registers
// across the taps (the same exact integer sums).
FASTORALS_AVX512BW void resample_vrow_avx512(const uint8_t* src, int64_t stride, int ymin, int taps, const int32_t* k,
                                             uint8_t* out, int x0, int x1) {
  const __m512i init = _mm512_set1_epi32(1 << (kPrecisionBits - 1));
  const __m512i zero = _mm512_setzero_si512(), v255 = _mm512_set1_epi32(255);
  for (int x = x0; x < x1; x += 64) {
    __mmask16 m[4];
    for (int q = 0; q < 4; ++q) m[q] = lanes16(std::max(x1 - x - 16 * q, 0));
    __m512i a0 = init, a1 = init, a2 = init, a3 = init;
    const uint8_t* row = src + int64_t(ymin) * stride + x;
    for (int t = 0; t < taps; ++t, row += stride) {
      const __m512i kt = _mm512_set1_epi32(k[t]);
      a0 = _mm512_add_epi32(a0, _mm512_mullo_epi32(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m[0], row)), kt));
      a1 = _mm512_add_epi32(a1, _mm512_mullo_epi32(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m[1], row + 16)), kt));
      a2 = _mm512_add_epi32(a2, _mm512_mullo_epi32(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m[2], row + 32)), kt));
      a3 = _mm512_add_epi32(a3, _mm512_mullo_epi32(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m[3], row + 48)), kt));
    }
    const __m512i acc[4] = {a0, a1, a2, a3};
    for (int q = 0; q < 4; ++q) {
      const __m512i v = _mm512_min_epi32(_mm512_max_epi32(_mm512_srai_epi32(acc[q], kPrecisionBits), zero), v255);
      _mm_mask_storeu_epi8(out + x + 16 * q, m[q], _mm512_cvtepi32_epi8(v));
    }
  }
}

// Smallest and largest value of table[p[i]] (p[i] without a table) over n >= 1 pixels, 64 per
// step (VBMI table lookups as lut_row_vbmi).
__attribute__((target("avx512f,avx512bw,avx512vbmi"))) void minmax_u8_avx512(const uint8_t* p, int64_t n,
                                                                            const uint8_t* lut, int* lo, int* hi) {
  __m512i t[4] = {};
  if (lut)
    for (int j = 0; j < 4; ++j) t[j] = _mm512_loadu_si512(lut + 64 * j);
  __m512i mn = _mm512_set1_epi8(char(0xFF)), mx = _mm512_setzero_si512();
  for (int64_t i = 0; i < n; i += 64) {
    const __mmask64 k = lanes64(n - i);
    __m512i x = _mm512_maskz_loadu_epi8(k, p + i);
    if (lut) x = lut64_vbmi(x, t);
    mn = _mm512_mask_min_epu8(mn, k, mn, x);
    mx = _mm512_mask_max_epu8(mx, k, mx, x);
  }
  alignas(64) uint8_t a[64], b[64];
  _mm512_store_si512(a, mn);
  _mm512_store_si512(b, mx);
  int l = 255, h = 0;
  for (int j = 0; j < 64; ++j) {
    l = std::min(l, int(a[j]));
    h = std::max(h, int(b[j]));
  }
  *lo = l;
  *hi = h;
}

// One output row of Pillow's affine_fixed (16.16 fixed point, NEAREST) for all C planes at once:
// xin = (xx0 + x a0) >> 16, yin = (yy0 + x a3) >> 16, 0 outside the image. The coordinates are
// carried in registers (16 pixels per step, no index buffer) and each plane is read with one
// 32-bit gather per step; a source index within the last 3 bytes of a plane is moved back and
// the byte shifted out, so no read leaves [src, src + C*HW). x a0 equals Pillow's repeated
// += a0 (integers, no overflow within affine_fixed's range).
FASTORALS_AVX512BW void affine_fixed_row_avx512(const uint8_t* src, int64_t HW, int C, int W, int H, int xx0, int yy0,
                                                int a0, int a3, uint8_t* out) {
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512i xv = _mm512_add_epi32(_mm512_set1_epi32(xx0), _mm512_mullo_epi32(iota, _mm512_set1_epi32(a0)));
  __m512i yv = _mm512_add_epi32(_mm512_set1_epi32(yy0), _mm512_mullo_epi32(iota, _mm512_set1_epi32(a3)));
  const __m512i dx = _mm512_set1_epi32(a0 * 16), dy = _mm512_set1_epi32(a3 * 16);
  const __m512i vw = _mm512_set1_epi32(W), vh = _mm512_set1_epi32(H), lim = _mm512_set1_epi32(int(HW - 4));
  const __m512i zero = _mm512_setzero_si512();
  for (int x = 0; x < W; x += 16) {
    const __mmask16 m = lanes16(W - x);
    const __m512i xi = _mm512_srai_epi32(xv, 16), yi = _mm512_srai_epi32(yv, 16);
    const __mmask16 ok = _mm512_mask_cmplt_epu32_mask(_mm512_cmplt_epu32_mask(xi, vw), yi, vh) & m;
    const __m512i idx = _mm512_maskz_add_epi32(ok, _mm512_mullo_epi32(yi, vw), xi);
    const __m512i base = _mm512_min_epi32(idx, lim);
    const __m512i shift = _mm512_slli_epi32(_mm512_sub_epi32(idx, base), 3);
    for (int c = 0; c < C; ++c) {
      __m512i v = _mm512_mask_i32gather_epi32(zero, ok, base, src + c * HW, 1);
      v = _mm512_srlv_epi32(v, shift);
      _mm_mask_storeu_epi8(out + c * HW + x, m, _mm512_cvtepi32_epi8(v));
    }
    xv = _mm512_add_epi32(xv, dx);
    yv = _mm512_add_epi32(yv, dy);
  }
}

// Rows 1 .. H-2 of a 3x3 filter over one plane (columns 1 .. W-2; the caller writes the border),
// for kernels whose first and last rows are equal, as in every kernel ImageFilter ships. Pillow
// computes ss = ((0.5 + T(y+1)) + M(y)) + T(y-1) with T = (f[x-1] k0 + f[x] k1) + f[x+1] k2 and M
// the same with k3..k5; each row's T is therefore computed once and used by the two output rows
// it borders, in the same float operations (6 products and 7 sums per pixel instead of 9 and 9).
// ``sharpen``: the result is ImageEnhance.Sharpness's degenerate pixel d = clip8(ss), blended as
// clip8(d + alpha (f - d)). ``rows`` holds the converted rows of y and y+1 (2 x Wp floats) and three
// T rows (3 x Wp), Wp = W rounded up to 16; ``lut`` (nullable) is applied while converting.
FASTORALS_AVX512BW void filter3x3_plane_avx512(const uint8_t* p, const uint8_t* lut, uint8_t* o, int H, int W,
                                               const float* k, bool sharpen, float alpha, float* rows,
                                               uint8_t* rowbuf) {
  const int64_t Wp = (int64_t(W) + 15) / 16 * 16;
  float* f[2] = {rows, rows + Wp};
  float* T[3] = {rows + 2 * Wp, rows + 3 * Wp, rows + 4 * Wp};
  const __m512 k0 = _mm512_set1_ps(k[0]), k1 = _mm512_set1_ps(k[1]), k2 = _mm512_set1_ps(k[2]);
  const __m512 k3 = _mm512_set1_ps(k[3]), k4 = _mm512_set1_ps(k[4]), k5 = _mm512_set1_ps(k[5]);
  const __m512 half = _mm512_set1_ps(0.5f), va = _mm512_set1_ps(alpha);
  auto convert = [&](int y, float* dst) {
    const uint8_t* r = p + int64_t(y) * W;
    if (lut) {
      lut_row(r, lut, rowbuf, W);
      r = rowbuf;
    }
    u8_to_f32_row_avx512(r, dst, W);
  };
  const int n = W - 2;  // interior columns 1 .. W-2
  for (int y = 0; y < 2; ++y) {  // rows 0 and 1 and their T; each later row's T comes with its output row
    convert(y, f[y]);
    for (int x = 1; x <= n; x += 16) {
      const __mmask16 m = lanes16(n - x + 1);
      _mm512_mask_storeu_ps(T[y] + x, m, tap3(f[y], x, m, k0, k1, k2));
    }
  }
  for (int y = 1; y < H - 1; ++y) {
    const float* cur = f[y & 1];   // row y
    float* nxt = f[(y + 1) & 1];   // row y + 1 (over row y - 1)
    convert(y + 1, nxt);
    const float* Tprev = T[(y - 1) % 3];
    float* Tnext = T[(y + 1) % 3];
    uint8_t* d = o + int64_t(y) * W;
    for (int x = 1; x <= n; x += 16) {
      const __mmask16 m = lanes16(n - x + 1);
      const __m512 tn = tap3(nxt, x, m, k0, k1, k2);
      _mm512_mask_storeu_ps(Tnext + x, m, tn);
      const __m512 mid = tap3(cur, x, m, k3, k4, k5);
      const __m512 ss = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(half, tn), mid), _mm512_maskz_loadu_ps(m, Tprev + x));
      __m512i q = clip8_epi32(ss);
      if (sharpen) {
        const __m512 dg = _mm512_cvtepi32_ps(q);
        q = clip8_epi32(_mm512_add_ps(dg, _mm512_mul_ps(va, _mm512_sub_ps(_mm512_maskz_loadu_ps(m, cur + x), dg))));
      }
      _mm_mask_storeu_epi8(d + x, m, _mm512_cvtepi32_epi8(q));
    }
    d[0] = static_cast<uint8_t>(cur[0]);
    d[W - 1] = static_cast<uint8_t>(cur[W - 1]);
  }
}
#endif

FASTORALS_CLONES void u8_to_f32_row(const uint8_t* FASTORALS_RESTRICT in, float* FASTORALS_RESTRICT out, int n) {
  for (int i = 0; i < n; ++i) out[i] = static_cast<float>(in[i]);
}

}  // namespace

// ---------------------------------------------------------------- scratch

void Scratch::reserve(int C, int H, int W) {
  size_t n = size_t(C) * H * W, p = size_t(H) * W;
  for (auto& b : img)
    if (b.size() < n) b.resize(n);
  for (auto& b : plane)
    if (b.size() < p) b.resize(p);
  size_t side = size_t(std::max(H, W));
  const size_t padded = (side + 15) / 16 * 16;  // 5 rows of floats for the wide 3x3 filter
  if (frows.size() < 5 * padded + 16) frows.resize(5 * padded + 16);
  if (acc.size() < side) acc.resize(side);
  if (idx.size() < side) idx.resize(side);
}

const Coeffs& Scratch::lanczos(int in_size, int out_size, int o0, int count, const Coeffs* keep) {
  for (const Coeffs& c : coeffs)
    if (c.in_size == in_size && c.out_size == out_size && c.o0 == o0 && c.count == count) return c;
  constexpr size_t kCap = 64;
  if (coeffs.capacity() < kCap) coeffs.reserve(kCap);  // no reallocation: references stay valid
  Coeffs* slot;
  if (coeffs.size() < kCap) {
    coeffs.emplace_back();
    slot = &coeffs.back();
  } else {
    if (&coeffs[coeffs_next] == keep) coeffs_next = (coeffs_next + 1) % kCap;
    slot = &coeffs[coeffs_next];
    coeffs_next = (coeffs_next + 1) % kCap;
  }
  slot->ksize = lanczos_coeffs(in_size, out_size, o0, count, slot->bounds, slot->kk, kd);
  slot->in_size = in_size;
  slot->out_size = out_size;
  slot->o0 = o0;
  slot->count = count;
  return *slot;
}

// ---------------------------------------------------------------- state

uint8_t* Engine::next() { return s_.img[which_ == 0 ? 1 : 0].data(); }

void Engine::commit(uint8_t* buf, bool lut_applied) {
  cur_ = buf;
  which_ = buf == s_.img[0].data() ? 0 : 1;
  hist_ok_ = false;
  if (lut_applied) reset_lut();
}

void Engine::reset_lut() {
  for (int c = 0; c < C_; ++c)
    for (int v = 0; v < 256; ++v) lut_[c][v] = static_cast<uint8_t>(v);
  lut_id_ = true;
}

void Engine::flush() {
  if (lut_id_) return;
  uint8_t* out = next();
  for (int c = 0; c < C_; ++c) lut_row(plane(c), lut_[c], out + c * HW_, HW_);
  bool had = hist_ok_;
  uint32_t pushed[3][256];
  if (had) {
    for (int c = 0; c < C_; ++c) cur_hist(c, pushed[c]);
  }
  commit(out, true);
  if (had) {
    std::memcpy(hist_, pushed, sizeof(pushed));
    hist_ok_ = true;
  }
}

void Engine::base_hist() {
  if (hist_ok_) return;
  for (int c = 0; c < C_; ++c) {
    uint32_t h4[4][256];
    std::memset(h4, 0, sizeof(h4));
    const uint8_t* p = plane(c);
    int64_t i = 0;
    for (; i + 4 <= HW_; i += 4) {
      ++h4[0][p[i]];
      ++h4[1][p[i + 1]];
      ++h4[2][p[i + 2]];
      ++h4[3][p[i + 3]];
    }
    for (; i < HW_; ++i) ++h4[0][p[i]];
    for (int v = 0; v < 256; ++v) hist_[c][v] = h4[0][v] + h4[1][v] + h4[2][v] + h4[3][v];
  }
  hist_ok_ = true;
}

void Engine::cur_hist(int c, uint32_t* h) {
  base_hist();
  if (lut_id_) {
    std::memcpy(h, hist_[c], 256 * sizeof(uint32_t));
    return;
  }
  std::memset(h, 0, 256 * sizeof(uint32_t));
  for (int v = 0; v < 256; ++v) h[lut_[c][v]] += hist_[c][v];
}

void Engine::compose(int c, const uint8_t* f) {
  for (int v = 0; v < 256; ++v) lut_[c][v] = f[lut_[c][v]];
  lut_id_ = false;
}

void Engine::compose_all(const uint8_t* f) {
  for (int c = 0; c < C_; ++c) compose(c, f);
}

// ---------------------------------------------------------------- load / store

void Engine::load(const uint8_t* src, int dy, int dx, bool flip) {
  reset_lut();
  hist_ok_ = false;
  if (dy == 0 && dx == 0 && !flip) {
    cur_ = src;
    which_ = -1;
    return;
  }
  uint8_t* out = s_.img[0].data();
  for (int c = 0; c < C_; ++c) {
    for (int y = 0; y < H_; ++y) {
      uint8_t* o = out + c * HW_ + int64_t(y) * W_;
      int sy = y + dy;
      if (sy < 0 || sy >= H_) {
        std::memset(o, 0, size_t(W_));
        continue;
      }
      const uint8_t* r = src + c * HW_ + int64_t(sy) * W_;
      // crop: t[x] = r[x + dx] (0 outside); output o[x] = t[flip ? W-1-x : x]
      int x0 = std::max(0, -dx), x1 = std::min(W_, W_ - dx);  // valid range of x in t
      if (x1 <= x0) {
        std::memset(o, 0, size_t(W_));
        continue;
      }
      if (!flip) {
        std::memset(o, 0, size_t(x0));
        std::memcpy(o + x0, r + x0 + dx, size_t(x1 - x0));
        std::memset(o + x1, 0, size_t(W_ - x1));
      } else {  // o[x] = r[W-1-x+dx] for x in [W-x1, W-x0), zero elsewhere
        std::memset(o, 0, size_t(W_ - x1));
        reverse_row(r + x0 + dx, o + (W_ - x1), x1 - x0);
        std::memset(o + (W_ - x0), 0, size_t(x0));
      }
    }
  }
  which_ = 0;
  cur_ = out;
}

void Engine::store_u8(uint8_t* out, const int32_t* cut) {
  for (int c = 0; c < C_; ++c) {
    if (lut_id_)
      std::memcpy(out + c * HW_, plane(c), size_t(HW_));
    else
      lut_row(plane(c), lut_[c], out + c * HW_, HW_);
  }
  int y1 = std::max(cut[0], 0), y2 = std::min(cut[1], H_), x1 = std::max(cut[2], 0), x2 = std::min(cut[3], W_);
  if (y1 < y2 && x1 < x2) {
    for (int c = 0; c < C_; ++c)
      for (int y = y1; y < y2; ++y) std::memset(out + c * HW_ + int64_t(y) * W_ + x1, 0, size_t(x2 - x1));
  }
}

void Engine::store_f32(float* out, const int32_t* cut, const float* mean, const float* std, bool stream) {
  for (int c = 0; c < C_; ++c) {
    float table[256];
    const float m = mean[c], sd = std[c];
    for (int v = 0; v < 256; ++v) {
      float x = static_cast<float>(lut_[c][v]) / 255.0f;  // ToTensor
      table[v] = (x - m) / sd;                              // Normalize
    }
    f32_lut_row(plane(c), table, out + c * HW_, HW_, stream);
  }
  int y1 = std::max(cut[0], 0), y2 = std::min(cut[1], H_), x1 = std::max(cut[2], 0), x2 = std::min(cut[3], W_);
  if (y1 < y2 && x1 < x2) {
    for (int c = 0; c < C_; ++c) {
      const float fill = (0.0f - mean[c]) / std[c];
      for (int y = y1; y < y2; ++y) {
        float* o = out + c * HW_ + int64_t(y) * W_;
        for (int x = x1; x < x2; ++x) o[x] = fill;
      }
    }
  }
}

// ---------------------------------------------------------------- dispatch

void Engine::apply(int op, double v) {
  switch (op) {
    case kFlip:
      flip_ud();
      return;
    case kMirror:
      mirror();
      return;
    case kEdgeEnhance: {
      const float d = 2.0f;
      const float k[9] = {-1 / d, -1 / d, -1 / d, -1 / d, 10 / d, -1 / d, -1 / d, -1 / d, -1 / d};
      filter3x3(k, false, 0.0f);
      return;
    }
    case kDetail: {
      const float d = 6.0f;
      const float k[9] = {0 / d, -1 / d, 0 / d, -1 / d, 10 / d, -1 / d, 0 / d, -1 / d, 0 / d};
      filter3x3(k, false, 0.0f);
      return;
    }
    case kSmooth: {
      const float d = 13.0f;
      const float k[9] = {1 / d, 1 / d, 1 / d, 1 / d, 5 / d, 1 / d, 1 / d, 1 / d, 1 / d};
      filter3x3(k, false, 0.0f);
      return;
    }
    case kAutoContrast:
      autocontrast();
      return;
    case kEqualize:
      equalize();
      return;
    case kInvert: {
      uint8_t f[256];
      for (int i = 0; i < 256; ++i) f[i] = static_cast<uint8_t>(255 - i);
      compose_all(f);
      return;
    }
    case kGaussianBlur:
      gaussian_blur(static_cast<float>(v));
      return;
    case kResizeCrop:
      resize_crop(v);
      return;
    case kRotate:
      rotate(v);
      return;
    case kPosterize: {
      double fb = std::floor(v);
      int bits = fb < 1.0 ? 1 : (fb > 8.0 ? 8 : static_cast<int>(fb));
      int mask = ~((1 << (8 - bits)) - 1) & 0xFF;
      uint8_t f[256];
      for (int i = 0; i < 256; ++i) f[i] = static_cast<uint8_t>(i & mask);
      compose_all(f);
      return;
    }
    case kSolarize: {
      uint8_t f[256];
      for (int i = 0; i < 256; ++i) f[i] = static_cast<uint8_t>(static_cast<double>(i) < v ? i : 255 - i);
      compose_all(f);
      return;
    }
    case kSolarizeAdd: {
      uint8_t f[256];
      for (int i = 0; i < 256; ++i) {
        double t = static_cast<double>(i) + v;
        t = t < 0.0 ? 0.0 : (t > 255.0 ? 255.0 : t);
        int w = static_cast<int>(t);
        f[i] = static_cast<uint8_t>(w < 128 ? w : 255 - w);
      }
      compose_all(f);
      return;
    }
    case kColor:
      color(static_cast<float>(v));
      return;
    case kContrast:
      contrast(static_cast<float>(v));
      return;
    case kBrightness: {
      const float a = static_cast<float>(v);
      uint8_t f[256];
      for (int i = 0; i < 256; ++i) f[i] = blend_px(0, i, a);
      compose_all(f);
      return;
    }
    case kSharpness: {
      const float d = 13.0f;  // the degenerate image is SMOOTH's
      const float k[9] = {1 / d, 1 / d, 1 / d, 1 / d, 5 / d, 1 / d, 1 / d, 1 / d, 1 / d};
      filter3x3(k, true, static_cast<float>(v));
      return;
    }
    case kShearX: {
      const double a[6] = {1, v, 0, 0, 1, 0};
      affine(a);
      return;
    }
    case kShearY: {
      const double a[6] = {1, 0, 0, v, 1, 0};
      affine(a);
      return;
    }
    case kTranslateX: {
      const double a[6] = {1, 0, v, 0, 1, 0};
      affine(a);
      return;
    }
    case kTranslateY: {
      const double a[6] = {1, 0, 0, 0, 1, v};
      affine(a);
      return;
    }
    default:
      return;  // -1 (none); unknown ids are rejected before the kernel runs
  }
}

// ---------------------------------------------------------------- geometric

void Engine::flip_ud() {
  uint8_t* out = next();
  for (int c = 0; c < C_; ++c)
    for (int y = 0; y < H_; ++y) {
      const uint8_t* r = plane(c) + int64_t(H_ - 1 - y) * W_;
      uint8_t* o = out + c * HW_ + int64_t(y) * W_;
      if (lut_id_)
        std::memcpy(o, r, size_t(W_));
      else
        lut_row(r, lut_[c], o, W_);
    }
  commit(out, true);
}

void Engine::mirror() {
  uint8_t* out = next();
  uint8_t* rowbuf = s_.plane[0].data();
  for (int c = 0; c < C_; ++c) {
    const uint8_t* L = lut_[c];
    for (int y = 0; y < H_; ++y) {
      const uint8_t* r = plane(c) + int64_t(y) * W_;
      uint8_t* o = out + c * HW_ + int64_t(y) * W_;
      if (lut_id_) {
        reverse_row(r, o, W_);
      } else {
        reverse_row(r, rowbuf, W_);
        lut_row(rowbuf, L, o, W_);
      }
    }
  }
  commit(out, true);
}

void Engine::transpose_op(int kind) {  // 180, 90 (square), 270 (square)
  uint8_t* out = next();
  for (int c = 0; c < C_; ++c) {
    const uint8_t* p = plane(c);
    const uint8_t* L = lut_[c];
    uint8_t* o = out + c * HW_;
    for (int y = 0; y < H_; ++y)
      for (int x = 0; x < W_; ++x) {
        int sy, sx;
        if (kind == 180) {
          sy = H_ - 1 - y;
          sx = W_ - 1 - x;
        } else if (kind == 90) {
          sy = x;
          sx = W_ - 1 - y;
        } else {
          sy = H_ - 1 - x;
          sx = y;
        }
        o[int64_t(y) * W_ + x] = L[p[int64_t(sy) * W_ + sx]];
      }
  }
  commit(out, true);
}

void Engine::rotate(double angle) {
  angle = py_mod360(angle);
  if (angle == 0.0) return;
  if (angle == 180.0) {
    transpose_op(180);
    return;
  }
  if ((angle == 90.0 || angle == 270.0) && W_ == H_) {
    transpose_op(angle == 90.0 ? 90 : 270);
    return;
  }
  const double cx = W_ / 2.0, cy = H_ / 2.0;
  const double rad = -(angle * (kPi / 180.0));
  double m[6] = {py_round15(std::cos(rad)), py_round15(std::sin(rad)), 0.0,
                 py_round15(-std::sin(rad)), py_round15(std::cos(rad)), 0.0};
  const double x = -cx - 0, y = -cy - 0;
  double t2 = m[0] * x + m[1] * y + m[2];
  double t5 = m[3] * x + m[4] * y + m[5];
  m[2] = t2 + cx;
  m[5] = t5 + cy;
  affine(m);
}

void Engine::affine(const double* a) {
  // gathers read the mapped image (one VBMI table pass) rather than a table per gathered pixel
  if (!lut_id_ && (has_vbmi() || has_avx512bw()) && !(a[1] == 0 && a[3] == 0)) flush();
  uint8_t* out = next();
  int32_t* idx = s_.idx.data();
  const int W = W_, H = H_;
  // output row y: zeros, then the source run [off, off + xb - xa) at [xa, xb), then zeros
  auto copy_run = [&](int y, int xa, int xb, int64_t off) {
    for (int c = 0; c < C_; ++c) {
      uint8_t* o = out + c * HW_ + int64_t(y) * W;
      std::memset(o, 0, size_t(xa));
      if (xb > xa) {
        if (lut_id_)
          std::memcpy(o + xa, plane(c) + off, size_t(xb - xa));
        else
          lut_row(plane(c) + off, lut_[c], o + xa, xb - xa);
      }
      std::memset(o + xb, 0, size_t(W - xb));
    }
  };
  auto emit_row = [&](int y) {
    // Rows whose valid sources are one contiguous run (translations, ShearX) are copies.
    int xa = 0;
    while (xa < W && idx[xa] < 0) ++xa;
    int xb = W;
    while (xb > xa && idx[xb - 1] < 0) --xb;
    bool run = true;
    for (int x = xa + 1; x < xb; ++x)
      if (idx[x] != idx[x - 1] + 1) {
        run = false;
        break;
      }
    if (run) {
      copy_run(y, xa, xb, xb > xa ? idx[xa] : 0);
      return;
    }
    for (int c = 0; c < C_; ++c) {
      const uint8_t* p = plane(c);
      const uint8_t* L = lut_[c];
      uint8_t* o = out + c * HW_ + int64_t(y) * W;
      if (lut_id_) {
        gather_row(p, HW_, idx, o, W);
      } else {
        for (int x = 0; x < W; ++x) o[x] = idx[x] >= 0 ? L[p[idx[x]]] : 0;
      }
    }
  };
  if (a[1] == 0 && a[3] == 0) {
    // ImagingScaleAffine: pretabulated x positions, double accumulation
    std::vector<int32_t>& xintab = s_.bounds;
    xintab.assign(size_t(W), 0);
    double xo = a[2] + a[0] * 0.5;
    double yo = a[5] + a[4] * 0.5;
    int xmin = W, xmax = 0;
    for (int x = 0; x < W; ++x) {
      int xin = pil_coord(xo);
      if (xin >= 0 && xin < W) {
        xmax = x + 1;
        if (x < xmin) xmin = x;
        xintab[x] = xin;
      }
      xo += a[0];
    }
    bool run = true;  // contiguous sources (translations): every row is a shifted copy
    for (int x = xmin + 1; x < xmax; ++x) run &= xintab[x] == xintab[x - 1] + 1;
    for (int y = 0; y < H; ++y) {
      int yi = pil_coord(yo);
      yo += a[4];
      if (run) {
        if (yi < 0 || yi >= H || xmax <= xmin)
          copy_run(y, W, W, 0);
        else
          copy_run(y, xmin, xmax, int64_t(yi) * W + xintab[xmin]);
        continue;
      }
      for (int x = 0; x < W; ++x) idx[x] = -1;
      if (yi >= 0 && yi < H) {
        for (int x = xmin; x < xmax; ++x) idx[x] = yi * W + xintab[x];
      }
      emit_row(y);
    }
    commit(out, true);
    return;
  }
  auto check_fixed = [&](int x, int y) {
    return std::fabs(x * a[0] + y * a[1] + a[2]) < 32768.0 && std::fabs(x * a[3] + y * a[4] + a[5]) < 32768.0;
  };
  if (check_fixed(0, 0) && check_fixed(W, H) && check_fixed(0, H) && check_fixed(W, 0)) {
    // affine_fixed: 16.16 fixed point
    auto fix = [](double v) { return pil_floor(v * 65536.0 + 0.5); };
    int a0 = fix(a[0]), a1 = fix(a[1]), a3 = fix(a[3]), a4 = fix(a[4]);
    int a2 = fix(a[2] + a[0] * 0.5 + a[1] * 0.5);
    int a5 = fix(a[5] + a[3] * 0.5 + a[4] * 0.5);
#if defined(__GNUC__) && defined(__x86_64__)
    const bool wide = HW_ >= 4 && lut_id_ && has_avx512bw();
#else
    [[maybe_unused]] const bool wide = false;
#endif
    for (int y = 0; y < H; ++y) {
      if (a0 == 65536 && a3 == 0) {
        // ShearX rows: xin = x + (a2 >> 16) and yin = a5 >> 16 (x * 65536 leaves the low bits alone),
        // so each row is a shifted copy of one source row
        const int shift = a2 >> 16, yin = a5 >> 16;
        if (yin < 0 || yin >= H) {
          copy_run(y, W, W, 0);
        } else {
          const int xa = std::clamp(-shift, 0, W), xb = std::clamp(W - shift, xa, W);
          copy_run(y, xa, xb, int64_t(yin) * W + xa + shift);
        }
#if defined(__GNUC__) && defined(__x86_64__)
      } else if (wide) {
        uint8_t* o = out + int64_t(y) * W;
        affine_fixed_row_avx512(cur_, HW_, C_, W, H, a2, a5, a0, a3, o);
#endif
      } else {
        // x * a0 equals Pillow's repeated += a0 (integers, no overflow within check_fixed's range)
        fixed_row(a2, a5, a0, a3, W, H, idx);
        emit_row(y);
      }
      a2 += a1;
      a5 += a4;
    }
    commit(out, true);
    return;
  }
  // floating point fallback (coordinates beyond the fixed point range)
  double xo = a[2] + a[1] * 0.5 + a[0] * 0.5;
  double yo = a[5] + a[4] * 0.5 + a[3] * 0.5;
  for (int y = 0; y < H; ++y) {
    double xx = xo, yy = yo;
    for (int x = 0; x < W; ++x) {
      int xin = pil_coord(xx);
      int yin = (xin >= 0 && xin < W) ? pil_coord(yy) : -1;
      idx[x] = (xin >= 0 && xin < W && yin >= 0 && yin < H) ? yin * W + xin : -1;
      xx += a[0];
      yy += a[3];
    }
    emit_row(y);
    xo += a[1];
    yo += a[4];
  }
  commit(out, true);
}

void Engine::resize_crop(double zoom) {
  const int W = W_, H = H_;
  auto side = [](int s, double z) {
    double t = s * z;
    long long v = static_cast<long long>(t);
    return static_cast<int>(v < 1 ? 1 : v);
  };
  const int W2 = side(W, zoom), H2 = side(H, zoom);
  const bool need_h = W2 != W, need_v = H2 != H;
  if (!need_h && !need_v) return;  // Image.resize returns a copy; the crop box is the image
  flush();
  // Crop box (left, top, left + W, top + H) of the W2 x H2 resized image; with W2 == W the
  // crop starts at column 0, with H2 == H at row 0. Pillow resizes horizontally first (it only
  // goes vertical-first when the height shrinks, which zoom >= 1 never does).
  const int left = W2 / 2 - W / 2, top = H2 / 2 - H / 2;
  static const std::vector<int32_t> kEmpty;
  const Coeffs* hc = need_h ? &s_.lanczos(W, W2, left, W, nullptr) : nullptr;
  const Coeffs* vc = need_v ? &s_.lanczos(H, H2, top, H, hc) : nullptr;  // never evicts hc
  const std::vector<int32_t>& hb = hc ? hc->bounds : kEmpty;
  const std::vector<int32_t>& hk = hc ? hc->kk : kEmpty;
  const std::vector<int32_t>& vb = vc ? vc->bounds : kEmpty;
  const std::vector<int32_t>& vk = vc ? vc->kk : kEmpty;
  const int hks = hc ? hc->ksize : 0, vks = vc ? vc->ksize : 0;
  uint8_t* out = next();
  uint8_t* P0 = s_.plane[0].data();
  uint8_t* P1 = s_.plane[1].data();
  int32_t* acc = s_.idx.data();
  // vertical-pass rows: only input rows [y0, y1) of the horizontal pass are ever read (Pillow
  // resamples the same band)
  int y0 = 0, y1 = H;
  if (need_v) {
    y0 = H;
    y1 = 0;
    for (int y = 0; y < H; ++y)
      if (vb[2 * y + 1] > 0) {
        y0 = std::min(y0, vb[2 * y]);
        y1 = std::max(y1, vb[2 * y] + vb[2 * y + 1]);
      }
    if (y1 <= y0) y0 = y1 = 0;
  }
#if defined(__GNUC__) && defined(__x86_64__)
  const bool wide = has_avx512bw();
#endif
  // out[x0 .. x1) = clip8 of the taps of src rows ymin .. ymin + taps - 1
  auto vrow = [&](const uint8_t* src, int64_t stride, int ymin, int taps, const int32_t* k, uint8_t* o, int x0, int x1) {
#if defined(__GNUC__) && defined(__x86_64__)
    if (wide) {
      resample_vrow_avx512(src, stride, ymin, taps, k, o, x0, x1);
      return;
    }
#endif
    resample_vrow(src + x0, stride, ymin, taps, k, o + x0, x1 - x0, acc);
  };
  for (int c = 0; c < C_; ++c) {
    const uint8_t* src = plane(c);
    if (need_h) {
      // horizontal pass as a pass along the rows of the transposed plane (W rows of H)
      transpose_u8(src, P0, H, W);
      for (int x = 0; x < W; ++x) {
        uint8_t* row = P1 + int64_t(x) * H;
        int taps = hb[2 * x + 1];
        if (taps < 0)
          std::memset(row, 0, size_t(H));
        else
          vrow(P0, H, hb[2 * x], taps, &hk[size_t(x) * hks], row, y0, y1);
      }
      transpose_u8(P1, P0, W, H);
      src = P0;
    }
    uint8_t* o = out + c * HW_;
    if (need_v) {
      for (int y = 0; y < H; ++y) {
        uint8_t* orow = o + int64_t(y) * W;
        int taps = vb[2 * y + 1];
        if (taps < 0)
          std::memset(orow, 0, size_t(W));
        else
          vrow(src, W, vb[2 * y], taps, &vk[size_t(y) * vks], orow, 0, W);
      }
    } else {
      std::memcpy(o, src, size_t(HW_));
    }
  }
  commit(out, true);
}

// ---------------------------------------------------------------- filters

// ImageFilter's 3x3 kernels, and (sharpen) ImageEnhance.Sharpness: the SMOOTH image as the
// degenerate, blended with the image by alpha. Border rows and columns are copied (Pillow).
void Engine::filter3x3(const float* k, bool sharpen, float alpha) {
  const int W = W_, H = H_;
  if (W < 3 || H < 3) return;  // a copy (and for Sharpness blend(x, x, a) = x)
  uint8_t* out = next();
  float* fr = s_.frows.data();
  uint8_t* rowbuf = s_.plane[1].data();
#if defined(__GNUC__) && defined(__x86_64__)
  const bool wide = has_avx512bw() && k[0] == k[6] && k[1] == k[7] && k[2] == k[8];
#else
  [[maybe_unused]] const bool wide = false;
#endif
  for (int c = 0; c < C_; ++c) {
    const uint8_t* p = plane(c);
    const uint8_t* L = lut_[c];
    uint8_t* o = out + c * HW_;
    auto copy_row = [&](int y) {
      const uint8_t* r = p + int64_t(y) * W;
      uint8_t* d = o + int64_t(y) * W;
      if (lut_id_)
        std::memcpy(d, r, size_t(W));
      else
        lut_row(r, L, d, W);
    };
    copy_row(0);
    copy_row(H - 1);
#if defined(__GNUC__) && defined(__x86_64__)
    if (wide) {
      filter3x3_plane_avx512(p, lut_id_ ? nullptr : L, o, H, W, k, sharpen, alpha, fr, rowbuf);
      continue;
    }
#endif
    float* rows[3] = {fr, fr + W, fr + 2 * W};
    auto load = [&](int y, float* dst) {
      const uint8_t* r = p + int64_t(y) * W;
      if (lut_id_) {
        u8_to_f32_row(r, dst, W);
      } else {
        lut_row(r, L, rowbuf, W);
        u8_to_f32_row(rowbuf, dst, W);
      }
    };
    load(0, rows[0]);
    load(1, rows[1]);
    for (int y = 1; y < H - 1; ++y) {
      load(y + 1, rows[2]);
      uint8_t* d = o + int64_t(y) * W;
      filter_row(rows[2], rows[1], rows[0], k, sharpen, alpha, d, W);
      d[0] = static_cast<uint8_t>(rows[1][0]);
      d[W - 1] = static_cast<uint8_t>(rows[1][W - 1]);
      float* t = rows[0];
      rows[0] = rows[1];
      rows[1] = rows[2];
      rows[2] = t;
    }
  }
  commit(out, true);
}

void Engine::gaussian_blur(float radius) {
  // 0, negative or NaN: nothing to blur. The API admits [0, 1024]; unchecked values are pulled
  // into it here too, so no radius can index outside the planes.
  if (!(radius > 0.0f)) return;
  if (radius > 1024.0f) radius = 1024.0f;
  const float rf = gaussian_box_radius(radius, 3);
  if (rf == 0.0f) return;
  flush();
  const int r = static_cast<int>(rf);
  const uint32_t ww = static_cast<uint32_t>(static_cast<float>(1 << 24) / (rf * 2 + 1));
  const uint32_t fw = ((1u << 24) - uint32_t(r * 2 + 1) * ww) / 2;
  const int W = W_, H = H_;
  uint8_t* out = next();
  uint8_t* A = s_.plane[0].data();
  uint8_t* B = s_.plane[1].data();
  uint32_t* acc = s_.acc.data();
#if defined(__GNUC__) && defined(__x86_64__)
  const bool words = r <= kBoxWordMaxR && has_avx512bw();
#endif
  auto pass = [&](const uint8_t* src, uint8_t* dst, int n, int m) {
#if defined(__GNUC__) && defined(__x86_64__)
    if (words) {
      box_pass_avx512(src, dst, n, m, r, ww, fw);
      return;
    }
#endif
    box_pass(src, dst, n, m, r, ww, fw, acc);
  };
  for (int c = 0; c < C_; ++c) {
    const uint8_t* p = plane(c);
    uint8_t* o = out + c * HW_;
    // three horizontal passes: on the transposed plane (W rows of H), blurring along its rows
    transpose_u8(p, A, H, W);
    pass(A, B, W, H);
    pass(B, A, W, H);
    pass(A, B, W, H);
    transpose_u8(B, A, W, H);
    // three vertical passes
    pass(A, B, H, W);
    pass(B, A, H, W);
    pass(A, o, H, W);
  }
  commit(out, true);
}

// ---------------------------------------------------------------- colour

void Engine::color(float a) {
  if (C_ != 3) return;  // L images: the degenerate image is the image itself
  flush();
  uint8_t* out = next();
  color_rows(plane(0), plane(1), plane(2), out, HW_, a);
  commit(out, true);
}

void Engine::contrast(float a) {
  uint64_t sum = 0;
  if (C_ == 3) {
    const uint8_t *R = plane(0), *G = plane(1), *Bp = plane(2);
    if (lut_id_) {
      for (int64_t i = 0; i < HW_; ++i) sum += uint32_t(gray_l(R[i], G[i], Bp[i]));
    } else {
      for (int64_t i = 0; i < HW_; ++i) sum += uint32_t(gray_l(lut_[0][R[i]], lut_[1][G[i]], lut_[2][Bp[i]]));
    }
  } else {
    uint32_t h[256];
    cur_hist(0, h);
    for (int v = 0; v < 256; ++v) sum += uint64_t(v) * h[v];
  }
  double mean = static_cast<double>(sum) / static_cast<double>(HW_);
  int m = static_cast<int>(mean + 0.5);
  uint8_t f[256];
  for (int i = 0; i < 256; ++i) f[i] = blend_px(m, i, a);
  compose_all(f);
}

void Engine::autocontrast() {
  // only the extremes of each channel matter: from the cached histogram when there is one, else
  // from one min/max pass through the pending table (no histogram pass)
#if defined(__GNUC__) && defined(__x86_64__)
  const bool fast = !hist_ok_ && HW_ > 0 && has_vbmi();
#else
  const bool fast = false;
#endif
  for (int c = 0; c < C_; ++c) {
    int lo = 0, hi = 255;
#if defined(__GNUC__) && defined(__x86_64__)
    if (fast) minmax_u8_avx512(plane(c), HW_, lut_id_ ? nullptr : lut_[c], &lo, &hi);
#endif
    if (!fast) {
      uint32_t h[256];
      cur_hist(c, h);
      while (lo < 256 && !h[lo]) ++lo;
      while (hi >= 0 && !h[hi]) --hi;
      if (lo == 256) lo = 255;  // empty histogram: Python leaves lo = 255, hi = 0
      if (hi < 0) hi = 0;
    }
    if (hi <= lo) continue;
    double scale = 255.0 / (hi - lo);
    double offset = static_cast<double>(-lo) * scale;
    uint8_t f[256];
    for (int ix = 0; ix < 256; ++ix) {
      int v = static_cast<int>(ix * scale + offset);
      f[ix] = static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
    }
    compose(c, f);
  }
}

void Engine::equalize() {
  for (int c = 0; c < C_; ++c) {
    uint32_t h[256];
    cur_hist(c, h);
    int nonzero = 0, last = -1;
    uint64_t total = 0;
    for (int v = 0; v < 256; ++v) {
      if (h[v]) {
        ++nonzero;
        last = v;
        total += h[v];
      }
    }
    if (nonzero <= 1) continue;
    uint64_t step = (total - h[last]) / 255;
    if (!step) continue;
    uint64_t n = step / 2;
    uint8_t f[256];
    for (int i = 0; i < 256; ++i) {
      uint64_t q = n / step;
      f[i] = static_cast<uint8_t>(q > 255 ? 255 : q);
      n += h[i];
    }
    compose(c, f);
  }
}

}  // namespace fastorals::augment
