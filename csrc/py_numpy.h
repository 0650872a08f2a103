// Handing C++ vectors to NumPy without a copy (shared by the pybind11 modules).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <utility>
#include <vector>

namespace pystream {

/// A 1-d array that owns the vector's buffer (a capsule frees it with the array).
template <class T>
pybind11::array_t<T> to_numpy(std::vector<T>&& v) {
  auto* heap = new std::vector<T>(std::move(v));
  pybind11::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return pybind11::array_t<T>({static_cast<pybind11::ssize_t>(heap->size())}, {sizeof(T)}, heap->data(), owner);
}

}  // namespace pystream
