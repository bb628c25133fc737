// Registration of extension functions without a central list.
//
// Each topic file (csrc/<topic>/*.cpp) writes
//
//   FASTORALS_REGISTER(onepixel, m) { m.def("class_sums", &class_sums, ...); }
//
// and its functions appear as fastorals._C.<topic>.<name>. bindings.cpp owns the one
// PYBIND11_MODULE and calls every registrar when the module is imported.
#pragma once

#include <pybind11/pybind11.h>

#include <utility>
#include <vector>

namespace py = pybind11;

namespace fastorals {

using Registrar = void (*)(pybind11::module_&);

// Function-local static: safe against static-initialization order across translation units.
std::vector<std::pair<const char*, Registrar>>& registry();

struct RegisterTopic {
  RegisterTopic(const char* topic, Registrar fn) { registry().emplace_back(topic, fn); }
};

}  // namespace fastorals

#define FASTORALS_REGISTER(topic, module_var)                                              \
  static void fastorals_register_##topic(pybind11::module_& module_var);                    \
  static ::fastorals::RegisterTopic fastorals_register_instance_##topic(                     \
      #topic, &fastorals_register_##topic);                                                  \
  static void fastorals_register_##topic(pybind11::module_& module_var)
