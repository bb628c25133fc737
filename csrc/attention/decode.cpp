// KV-cache decode attention on the CPU: a few new query tokens per sequence against cached keys
// and values. Queries and outputs float32; the cache float32 or bfloat16 (half the bytes to
// stream, converted to float32 on load; decoding is bound by reading the cache).
//
// One work item per (sequence, head), scheduled dynamically (sequences have different lengths
// after independent resets). Query row t of sequence b sees keys
// j < limit_t = kv_len - q_len + t + 1 (lower-right causal alignment; kv_len when not causal).
// Only keys below the last row's limit are read, so a short sequence costs only its own length,
// and the keys and values are each streamed once for all rows of the step:
//   pass 1  s[t, j] = scale * q_t . k_j       (16 SIMD lanes, one tree reduction per dot)
//   pass 2  p[t, j] = exp(s[t, j] - m_t), l_t  (branch-free vectorizable exp; 0 past limit_t)
//   pass 3  o_t = sum_j p[t, j] v_j / l_t      (SIMD over the head dim)
// Rows t >= q_len (padding) and rows that see no key give 0, as in fastorals.transformer.reference.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/checks.h"
#include "common/parallel.h"
#include "common/registry.h"
#include "common/simd.h"

namespace fastorals::attention {

namespace {

// exp(x) for x <= 0 (flushes below -87 to exp(-87) ~ 1.6e-38, i.e. a weight of 0 next to the
// row maximum's 1). 2^t = 2^n * 2^f, |f| <= 1/2, degree-7 Taylor series of 2^f: relative error
// < 2e-8 before float rounding. No branches or calls, so it vectorizes inside the simd loop.
__attribute__((always_inline)) inline float exp_nonpos(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float t = x * 1.44269504088896341f;             // t in [-125.6, 0]
  const int32_t ni = -static_cast<int32_t>(0.5f - t);  // round(t) for t <= 0
  const float f = t - static_cast<float>(ni);           // [-0.5, 0.5]
  float p = 1.525273380405984e-05f;
  p = p * f + 1.5403530393381606e-04f;
  p = p * f + 1.3333558146428443e-03f;
  p = p * f + 9.6181291076284772e-03f;
  p = p * f + 5.5504108664821580e-02f;
  p = p * f + 2.4022650695910071e-01f;
  p = p * f + 6.9314718055994531e-01f;
  p = p * f + 1.0f;
  const int32_t bits = (ni + 127) << 23;  // 2^n, n >= -126: a normal float
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

__attribute__((always_inline)) inline float load_f(const float* p, int64_t i) { return p[i]; }

__attribute__((always_inline)) inline float load_f(const uint16_t* p, int64_t i) {
  const uint32_t u = static_cast<uint32_t>(p[i]) << 16;  // bfloat16 -> float32: the top 16 bits
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// q . k over the head dim with 16 independent lanes and a tree reduction (an ``omp simd``
// reduction ends in 16 dependent scalar adds per call, the bottleneck of a per-key dot).
template <int DD, typename KV>
__attribute__((always_inline)) inline float dot_row(const float* FASTORALS_RESTRICT a, const KV* FASTORALS_RESTRICT b,
                                                    int64_t D_rt) {
  constexpr int W = 16;
  const int64_t D = DD > 0 ? DD : D_rt;
  float acc[W];
  for (int l = 0; l < W; ++l) acc[l] = 0.0f;
  int64_t d = 0;
  for (; d + W <= D; d += W) {
#pragma omp simd
    for (int l = 0; l < W; ++l) acc[l] += a[d + l] * load_f(b, d + l);
  }
  float tail = 0.0f;
  for (; d < D; ++d) tail += a[d] * load_f(b, d);
#pragma omp simd
  for (int l = 0; l < 8; ++l) acc[l] += acc[l + 8];
#pragma omp simd
  for (int l = 0; l < 4; ++l) acc[l] += acc[l + 4];
  return ((acc[0] + acc[2]) + (acc[1] + acc[3])) + tail;
}

struct Scratch {
  float* s;    // (T, L) scores then probabilities
  float* acc;  // (T, D) output accumulators
  float* m;    // (T,) 1 / l per row
};

// DD > 0: the head dim as a compile-time constant (fully unrolled dot products, the single-row
// accumulator held in registers); DD == 0: any head dim.
template <int DD, typename KV>
__attribute__((always_inline)) inline void decode_head(const float* FASTORALS_RESTRICT q, const KV* FASTORALS_RESTRICT k,
                                                       const KV* FASTORALS_RESTRICT v, float* FASTORALS_RESTRICT out,
                                                       int64_t T, int64_t q_len, int64_t kv_len, int64_t L,
                                                       int64_t D_rt, float scale, bool causal, Scratch w) {
  const int64_t D = DD > 0 ? DD : D_rt;
  const int64_t rows = std::min(q_len, T);
  const int64_t shift = kv_len - q_len;
  const int64_t jmax = rows <= 0 ? 0 : (causal ? std::min(kv_len, shift + rows) : kv_len);
  std::fill(out, out + T * D, 0.0f);
  if (jmax <= 0) return;
  // pass 1: scores of every row, one read of each key
  for (int64_t j = 0; j < jmax; ++j) {
    const KV* kj = k + j * D;
    for (int64_t t = 0; t < rows; ++t) {
      w.s[t * L + j] = dot_row<DD>(q + t * D, kj, D) * scale;
    }
  }
  // pass 2: softmax numerators per row
  bool any = false;
  for (int64_t t = 0; t < rows; ++t) {
    float* st = w.s + t * L;
    const int64_t limit = causal ? std::min(kv_len, shift + t + 1) : kv_len;
    if (limit <= 0) {
      std::fill(st, st + jmax, 0.0f);
      w.m[t] = 0.0f;
      continue;
    }
    any = true;
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < limit; ++j) m = st[j] > m ? st[j] : m;
    float l = 0.0f;
#pragma omp simd reduction(+ : l)
    for (int64_t j = 0; j < limit; ++j) {
      const float p = exp_nonpos(st[j] - m);
      st[j] = p;
      l += p;
    }
    std::fill(st + limit, st + jmax, 0.0f);
    w.m[t] = 1.0f / l;
  }
  if (!any) return;
  // pass 3: weighted values, one read of each value row
  if constexpr (DD > 0) {
    if (rows == 1) {  // the common decode step: accumulator in registers
      float a[DD];
      for (int d = 0; d < DD; ++d) a[d] = 0.0f;
      for (int64_t j = 0; j < jmax; ++j) {
        const float p = w.s[j];
        const KV* vj = v + j * DD;
#pragma omp simd
        for (int d = 0; d < DD; ++d) a[d] += p * load_f(vj, d);
      }
      const float inv = w.m[0];
#pragma omp simd
      for (int d = 0; d < DD; ++d) out[d] = a[d] * inv;
      return;
    }
  }
  std::fill(w.acc, w.acc + rows * D, 0.0f);
  for (int64_t j = 0; j < jmax; ++j) {
    const KV* vj = v + j * D;
    for (int64_t t = 0; t < rows; ++t) {
      const float p = w.s[t * L + j];
      float* FASTORALS_RESTRICT a = w.acc + t * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) a[d] += p * load_f(vj, d);
    }
  }
  for (int64_t t = 0; t < rows; ++t) {
    const float inv = w.m[t];
    const float* a = w.acc + t * D;
    float* o = out + t * D;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) o[d] = a[d] * inv;
  }
}

using HeadFn = void (*)(const void*, const void*, const void*, float*, int64_t, int64_t, int64_t, int64_t, int64_t,
                        float, bool, Scratch);

// One target-cloned (AVX-512 / AVX2 / baseline) entry point per (head dim, cache dtype).
#define FASTORALS_DECODE_VARIANT(NAME, DD, KV)                                                                \
  FASTORALS_CLONES                                                                                         \
  void NAME(const void* q, const void* k, const void* v, float* out, int64_t T, int64_t q_len, int64_t kv_len, \
            int64_t L, int64_t D, float scale, bool causal, Scratch w) {                                   \
    decode_head<DD, KV>(static_cast<const float*>(q), static_cast<const KV*>(k), static_cast<const KV*>(v), out, \
                        T, q_len, kv_len, L, D, scale, causal, w);                                         \
  }

FASTORALS_DECODE_VARIANT(head_f32_any, 0, float)
FASTORALS_DECODE_VARIANT(head_f32_16, 16, float)
FASTORALS_DECODE_VARIANT(head_f32_32, 32, float)
FASTORALS_DECODE_VARIANT(head_f32_64, 64, float)
FASTORALS_DECODE_VARIANT(head_f32_128, 128, float)
FASTORALS_DECODE_VARIANT(head_bf16_any, 0, uint16_t)
FASTORALS_DECODE_VARIANT(head_bf16_16, 16, uint16_t)
FASTORALS_DECODE_VARIANT(head_bf16_32, 32, uint16_t)
FASTORALS_DECODE_VARIANT(head_bf16_64, 64, uint16_t)
FASTORALS_DECODE_VARIANT(head_bf16_128, 128, uint16_t)
#undef FASTORALS_DECODE_VARIANT

HeadFn pick(int64_t D, bool bf16) {
  switch (D) {
    case 16: return bf16 ? head_bf16_16 : head_f32_16;
    case 32: return bf16 ? head_bf16_32 : head_f32_32;
    case 64: return bf16 ? head_bf16_64 : head_f32_64;
    case 128: return bf16 ? head_bf16_128 : head_f32_128;
    default: return bf16 ? head_bf16_any : head_f32_any;
  }
}

template <typename KV>
void run(const float* qp, const KV* kp, const KV* vp, float* op, const int32_t* klp, const int32_t* qlp, int64_t B,
         int64_t H, int64_t T, int64_t L, int64_t D, float scale, bool causal, int num_threads, HeadFn head) {
  const int threads = clamp_threads(num_threads, B * H);
  const size_t per = static_cast<size_t>(T * L + T * D + D + T + 64);
  std::vector<float> scratch(static_cast<size_t>(threads) * per);
  parallel_for_dynamic(B * H, threads, [&](int64_t bh) {
    const int64_t b = bh / H;
    const int64_t kv_len = std::min<int64_t>(std::max<int32_t>(klp[b], 0), L);
    const int64_t q_len = std::min<int64_t>(std::max<int32_t>(qlp[b], 0), T);
    float* base = scratch.data() + static_cast<size_t>(thread_id()) * per;
    Scratch w{base, base + T * L, base + T * L + T * D};
    head(qp + bh * T * D, kp + bh * L * D, vp + bh * L * D, op + bh * T * D, T, q_len, kv_len, L, D, scale, causal,
         w);
  });
}

template <typename KV>
void check_args(const carray<float>& q, const carray<KV>& k, const carray<KV>& v, const carray<float>& out,
                const carray<int32_t>& kv_lens, const carray<int32_t>& q_lens) {
  check_ndim(q, 4, "q");
  check_ndim(k, 4, "k_cache");
  check_ndim(v, 4, "v_cache");
  check_ndim(out, 4, "out");
  check_ndim(kv_lens, 1, "kv_lens");
  check_ndim(q_lens, 1, "q_lens");
  for (int ax : {0, 1, 3}) check_dim(k, ax, q.shape(ax), "k_cache");
  for (int ax = 0; ax < 4; ++ax) check_dim(v, ax, k.shape(ax), "v_cache");
  for (int ax = 0; ax < 4; ++ax) check_dim(out, ax, q.shape(ax), "out");
  check_dim(kv_lens, 0, q.shape(0), "kv_lens");
  check_dim(q_lens, 0, q.shape(0), "q_lens");
  check_writeable(out, "out");
}

}  // namespace

// q (B, H, T, D) float32; k/v (B, H, L, D) float32 (or bfloat16 bits as int16); out (B, H, T, D)
// float32; kv_lens, q_lens (B,) int32. All C-contiguous.
void decode_f32(carray<float> q, carray<float> k, carray<float> v, carray<float> out, carray<int32_t> kv_lens,
                carray<int32_t> q_lens, bool causal, double scale, int num_threads) {
  check_args(q, k, v, out, kv_lens, q_lens);
  const float* qp = q.data();
  const float* kp = k.data();
  const float* vp = v.data();
  float* op = out.mutable_data();
  const int32_t* klp = kv_lens.data();
  const int32_t* qlp = q_lens.data();
  const int64_t B = q.shape(0), H = q.shape(1), T = q.shape(2), D = q.shape(3), L = k.shape(2);
  py::gil_scoped_release nogil;
  run(qp, kp, vp, op, klp, qlp, B, H, T, L, D, static_cast<float>(scale), causal, num_threads, pick(D, false));
}

void decode_bf16(carray<float> q, carray<int16_t> k, carray<int16_t> v, carray<float> out, carray<int32_t> kv_lens,
                 carray<int32_t> q_lens, bool causal, double scale, int num_threads) {
  check_args(q, k, v, out, kv_lens, q_lens);
  const float* qp = q.data();
  const uint16_t* kp = reinterpret_cast<const uint16_t*>(k.data());
  const uint16_t* vp = reinterpret_cast<const uint16_t*>(v.data());
  float* op = out.mutable_data();
  const int32_t* klp = kv_lens.data();
  const int32_t* qlp = q_lens.data();
  const int64_t B = q.shape(0), H = q.shape(1), T = q.shape(2), D = q.shape(3), L = k.shape(2);
  py::gil_scoped_release nogil;
  run(qp, kp, vp, op, klp, qlp, B, H, T, L, D, static_cast<float>(scale), causal, num_threads, pick(D, true));
}

}  // namespace fastorals::attention

FASTORALS_REGISTER(attention, m) {
  m.def("decode_f32", &fastorals::attention::decode_f32,
        "KV-cache decode attention, float32 cache: out[b,h,t] = softmax(scale q k^T) v over the visible keys",
        py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("out"), py::arg("kv_lens"), py::arg("q_lens"),
        py::arg("causal"), py::arg("scale"), py::arg("num_threads"));
  m.def("decode_bf16", &fastorals::attention::decode_bf16,
        "KV-cache decode attention, bfloat16 cache (int16 bit views), float32 queries and output",
        py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("out"), py::arg("kv_lens"), py::arg("q_lens"),
        py::arg("causal"), py::arg("scale"), py::arg("num_threads"));
}
