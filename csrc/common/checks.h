// Argument checks for arrays crossing from Python (NumPy views of CPU tensors).
// Messages name the argument and what was expected; Python launchers check first,
// these are the last line of defence.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace fastorals {

namespace py = pybind11;

template <typename T>
using carray = py::array_t<T, py::array::c_style>;  // no forcecast: never copies silently

inline std::string shape_str(const py::array& a) {
  std::ostringstream s;
  s << "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s << (i ? ", " : "") << a.shape(i);
  s << (a.ndim() == 1 ? ",)" : ")");
  return s.str();
}

inline void check_ndim(const py::array& a, py::ssize_t ndim, const char* name) {
  if (a.ndim() != ndim) {
    std::ostringstream s;
    s << name << ": expected " << ndim << " dimensions, got shape " << shape_str(a);
    throw std::invalid_argument(s.str());
  }
}

inline void check_dim(const py::array& a, py::ssize_t axis, py::ssize_t size, const char* name) {
  if (a.shape(axis) != size) {
    std::ostringstream s;
    s << name << ": expected size " << size << " at dim " << axis << ", got shape " << shape_str(a);
    throw std::invalid_argument(s.str());
  }
}

inline void check_contiguous(const py::array& a, const char* name) {
  if (!(a.flags() & py::array::c_style)) {
    throw std::invalid_argument(std::string(name) + ": expected a C-contiguous array");
  }
}

inline void check_writeable(const py::array& a, const char* name) {
  if (!a.writeable()) throw std::invalid_argument(std::string(name) + ": expected a writeable array");
}

// A writeable output vector of ``size`` elements.
inline void check_out_vector(const py::array& a, py::ssize_t size, const char* name) {
  check_ndim(a, 1, name);
  check_dim(a, 0, size, name);
  check_writeable(a, name);
}

}  // namespace fastorals
