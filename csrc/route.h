// Routing rows to window actors by key group (the Ray runtime's shuffle).
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"

namespace pystream {

/// Key groups and a stable counting sort of rows by owning actor.
///
/// words[c][i] is key column c of row i as 64 bits (pystream/runtimes.py: _key_words). A row's
/// hash is h = mix64(h * 0x9E3779B97F4A7C15 + word) over its columns from h = 0; its group is
/// ((h >> 32) * n_groups) >> 32 (the high half: key indexes probe by the low bits of mix64); its owner
/// is group * parallelism / n_groups. Output: `order` lists the rows owner by owner, in arrival
/// order within each owner; `groups` holds their groups in that order; `bounds[j]..bounds[j+1]`
/// is owner j's range. Callers check lengths and ranges.
struct Routed {
  std::vector<int64_t> order;
  std::vector<uint16_t> groups;
  std::vector<int64_t> bounds;
  std::vector<int64_t> dest;  // dest[i]: row i's place in that order (when asked for)
};

inline Routed route_rows(const std::vector<const uint64_t*>& words, int64_t n, int64_t n_groups, int64_t parallelism,
                         bool with_dest = false) {
  Routed r;
  if (with_dest) r.dest.resize(static_cast<size_t>(n));
  r.order.resize(static_cast<size_t>(n));
  r.groups.resize(static_cast<size_t>(n));
  r.bounds.assign(static_cast<size_t>(parallelism) + 1, 0);
  std::vector<uint16_t> group(static_cast<size_t>(n));
  std::vector<uint32_t> owner(static_cast<size_t>(n));
  const uint64_t g_count = static_cast<uint64_t>(n_groups);
  std::vector<uint32_t> owner_of(static_cast<size_t>(n_groups));
  for (int64_t g = 0; g < n_groups; ++g) owner_of[g] = static_cast<uint32_t>(g * parallelism / n_groups);
  for (int64_t i = 0; i < n; ++i) {
    uint64_t h = 0;
    for (const uint64_t* w : words) h = mix64(h * 0x9E3779B97F4A7C15ULL + w[i]);
    const uint64_t g = ((h >> 32) * g_count) >> 32;  // the high half scaled to [0, n_groups): no division
    group[i] = static_cast<uint16_t>(g);
    owner[i] = owner_of[g];
    ++r.bounds[owner[i] + 1];
  }
  for (int64_t j = 0; j < parallelism; ++j) r.bounds[j + 1] += r.bounds[j];
  std::vector<int64_t> next(r.bounds.begin(), r.bounds.end() - 1);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t at = next[owner[i]]++;
    r.order[at] = i;
    r.groups[at] = group[i];
    if (with_dest) r.dest[i] = at;
  }
  return r;
}

/// out[dest[i]] = in[i] for n items of `size` bytes (a column put into routed order: reads
/// in row order, writes one stream per owner).
inline void scatter_rows(const uint8_t* in, uint8_t* out, const int64_t* dest, int64_t n, size_t size) {
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const T* src = reinterpret_cast<const T*>(in);
    T* dst = reinterpret_cast<T*>(out);
    for (int64_t i = 0; i < n; ++i) dst[dest[i]] = src[i];
  };
  // Typed copies where both columns are aligned for them (NumPy's own arrays are); else bytes.
  const bool aligned = (reinterpret_cast<uintptr_t>(in) | reinterpret_cast<uintptr_t>(out)) % size == 0;
  switch (aligned ? size : 0) {
    case 1: run(uint8_t{}); break;
    case 2: run(uint16_t{}); break;
    case 4: run(uint32_t{}); break;
    case 8: run(uint64_t{}); break;
    default:
      for (int64_t i = 0; i < n; ++i) std::memcpy(out + static_cast<size_t>(dest[i]) * size, in + static_cast<size_t>(i) * size, size);
  }
}

}  // namespace pystream
