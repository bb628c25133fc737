// The one PYBIND11_MODULE of fastorals._C. Topics register themselves (common/registry.h)
// and appear as submodules: fastorals._C.<topic>.<function>.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "common/parallel.h"
#include "common/registry.h"

namespace fastorals {

std::vector<std::pair<const char*, Registrar>>& registry() {
  static std::vector<std::pair<const char*, Registrar>> r;
  return r;
}

}  // namespace fastorals

namespace py = pybind11;

static std::string compiler_string() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return "gcc " + std::to_string(__GNUC__) + "." + std::to_string(__GNUC_MINOR__) + "." +
         std::to_string(__GNUC_PATCHLEVEL__);
#elif defined(_MSC_VER)
  return "msvc " + std::to_string(_MSC_VER);
#else
  return "unknown";
#endif
}

// Instruction sets the kernels use on this CPU: compiled in (-march) or picked at run time
// by the FASTORALS_CLONES dispatch (common/simd.h).
static std::vector<std::string> simd_flags() {
  std::vector<std::string> f;
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) f.push_back("avx512f");
  else if (__builtin_cpu_supports("avx2")) f.push_back("avx2");
#else
#ifdef __AVX512F__
  f.push_back("avx512f");
#elif defined(__AVX2__)
  f.push_back("avx2");
#endif
#ifdef __ARM_NEON
  f.push_back("neon");
#endif
#endif
  return f;
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastorals C++ kernels (pybind11, OpenMP). Topics are submodules.";
  m.def("has_openmp", &fastorals::has_openmp, "True when built with OpenMP.");
  m.def("max_threads", &fastorals::max_threads, "OpenMP's default number of threads (1 without OpenMP).");
  m.def("compiler", &compiler_string, "Compiler that built the extension.");
  m.def("simd", &simd_flags, "SIMD instruction sets enabled at compile time.");
  std::vector<std::string> topics;
  for (auto& [topic, fn] : fastorals::registry()) {
    py::module_ sub = m.def_submodule(topic);
    fn(sub);
    topics.emplace_back(topic);
  }
  m.attr("topics") = topics;
}
