// Thin OpenMP helpers. Every kernel takes an explicit thread count from Python
// (torch.get_num_threads() by default) so users control it in one place.
#pragma once

#include <cstdint>
#include <utility>

#ifdef FASTORALS_OPENMP
#include <omp.h>
#endif

namespace fastorals {

inline int max_threads() {
#ifdef FASTORALS_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

inline bool has_openmp() {
#ifdef FASTORALS_OPENMP
  return true;
#else
  return false;
#endif
}

inline int thread_id() {
#ifdef FASTORALS_OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

inline int clamp_threads(int64_t requested, int64_t work_items) {
  int64_t t = requested > 0 ? requested : max_threads();
  if (work_items < t) t = work_items;
  return t < 1 ? 1 : static_cast<int>(t);
}

// Calls fn(begin, end) on contiguous chunks of [0, n), statically scheduled, one chunk per thread.
template <typename F>
void parallel_chunks(int64_t n, int num_threads, F&& fn) {
  if (n <= 0) return;
  const int t = clamp_threads(num_threads, n);
  if (t == 1) {
    fn(int64_t{0}, n, 0);
    return;
  }
#ifdef FASTORALS_OPENMP
#pragma omp parallel num_threads(t)
  {
    const int id = omp_get_thread_num();
    const int nt = omp_get_num_threads();
    const int64_t chunk = (n + nt - 1) / nt;
    const int64_t b = id * chunk;
    const int64_t e = b + chunk < n ? b + chunk : n;
    if (b < e) fn(b, e, id);
  }
#else
  fn(int64_t{0}, n, 0);
#endif
}

// Calls fn(i) for i in [0, n) with dynamic scheduling (uneven work per item).
template <typename F>
void parallel_for_dynamic(int64_t n, int num_threads, F&& fn) {
  if (n <= 0) return;
  const int t = clamp_threads(num_threads, n);
#ifdef FASTORALS_OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(t)
  for (int64_t i = 0; i < n; ++i) fn(i);
#else
  (void)t;
  for (int64_t i = 0; i < n; ++i) fn(i);
#endif
}

}  // namespace fastorals
