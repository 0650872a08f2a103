// Routing rows to window actors by key group (the Ray runtime's shuffle).
#pragma once

#include <cstdint>
#include <vector>

#include "common.h"

namespace pystream {

/// Key groups and a stable counting sort of rows by owning actor.
///
/// words[c][i] is key column c of row i as 64 bits (pystream/runtimes.py: _key_words). A row's
/// hash is h = mix64(h * 0x9E3779B97F4A7C15 + word) over its columns from h = 0; its group is
/// (h >> 32) % n_groups (the high half: key indexes probe by the low bits of mix64); its owner
/// is group * parallelism / n_groups. Output: `order` lists the rows owner by owner, in arrival
/// order within each owner; `groups` holds their groups in that order; `bounds[j]..bounds[j+1]`
/// is owner j's range. Callers check lengths and ranges.
struct Routed {
  std::vector<int64_t> order;
  std::vector<uint16_t> groups;
  std::vector<int64_t> bounds;
};

inline Routed route_rows(const std::vector<const uint64_t*>& words, int64_t n, int64_t n_groups, int64_t parallelism) {
  Routed r;
  r.order.resize(static_cast<size_t>(n));
  r.groups.resize(static_cast<size_t>(n));
  r.bounds.assign(static_cast<size_t>(parallelism) + 1, 0);
  std::vector<uint16_t> group(static_cast<size_t>(n));
  std::vector<uint32_t> owner(static_cast<size_t>(n));
  const uint64_t g_count = static_cast<uint64_t>(n_groups);
  const uint64_t p_count = static_cast<uint64_t>(parallelism);
  for (int64_t i = 0; i < n; ++i) {
    uint64_t h = 0;
    for (const uint64_t* w : words) h = mix64(h * 0x9E3779B97F4A7C15ULL + w[i]);
    const uint64_t g = (h >> 32) % g_count;
    group[i] = static_cast<uint16_t>(g);
    owner[i] = static_cast<uint32_t>(g * p_count / g_count);
    ++r.bounds[owner[i] + 1];
  }
  for (int64_t j = 0; j < parallelism; ++j) r.bounds[j + 1] += r.bounds[j];
  std::vector<int64_t> next(r.bounds.begin(), r.bounds.end() - 1);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t at = next[owner[i]]++;
    r.order[at] = i;
    r.groups[at] = group[i];
  }
  return r;
}

}  // namespace pystream
