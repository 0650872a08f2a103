// Routing rows to window actors by key group (the Ray runtime's shuffle).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"

namespace pystream {

/// Key groups and a stable counting sort of rows by owning actor.
///
/// words[c][i] is key column c of row i as 64 bits (pystream/runtimes.py: _key_words). A row's
/// hash is h = mix64(h * 0x9E3779B97F4A7C15 + word) over its columns from h = 0; its group is
/// ((h >> 32) * n_groups) >> 32 (the high half: key indexes probe by the low bits of mix64); its
/// owner is group * parallelism / n_groups. The routed order lists the rows owner by owner, in
/// arrival order within each owner; owner j's range of it is bounds[j]..bounds[j+1].
///
/// The rows may come as several chunks (a source's batches, routed as one without joining
/// them first): row numbers, groups and places run on across chunks as if they were one.
/// `group_rows` takes one pass over the keys; then, a block of rows at a time, `place_rows`
/// gives every row of the block its place in the routed order (the owners' running counters
/// are a dependency chain through memory, so it runs once per row) and writes the order and
/// the groups there, and each column is one independent pass over the block, out[dest[i]] =
/// in[i]. Blocks of kPlaceBlock rows keep the places in L1 for the column passes: a whole
/// read's places (2 MiB for 512k rows) were written once and read back once per column from
/// L2. Scratch and outputs are not zeroed first. Callers check lengths and ranges and give
/// outputs of n items.
class Router {
 public:
  Router(int64_t n_groups, int64_t parallelism) : n_groups_(n_groups), parallelism_(parallelism) {
    owner_of_.resize(static_cast<size_t>(n_groups));
    for (int64_t g = 0; g < n_groups; ++g) owner_of_[static_cast<size_t>(g)] = static_cast<uint32_t>(g * parallelism / n_groups);
  }

  /// group[i] for every row of one chunk, counted into counts[owner + 1]: a caller zeroes
  /// counts (parallelism + 1 entries) once, counts every chunk of the routed rows, then turns
  /// the counts into bounds with `bounds_from_counts`.
  void group_rows(const std::vector<const uint64_t*>& words, int64_t n, uint16_t* group, int64_t* counts) const {
    const uint64_t g_count = static_cast<uint64_t>(n_groups_);
    for (int64_t i = 0; i < n; ++i) {
      uint64_t h = 0;
      for (const uint64_t* w : words) h = mix64(h * 0x9E3779B97F4A7C15ULL + w[i]);
      const uint64_t g = ((h >> 32) * g_count) >> 32;  // the high half scaled to [0, n_groups): no division
      group[i] = static_cast<uint16_t>(g);
      ++counts[owner_of_[g] + 1];
    }
  }

  void bounds_from_counts(int64_t* counts) const {
    for (int64_t j = 0; j < parallelism_; ++j) counts[j + 1] += counts[j];
  }

  /// Rows placed per block: their places (4 or 8 bytes each) stay in L1 for the column passes.
  static constexpr int64_t kPlaceBlock = 2048;

  /// For rows first..first + n - 1 of the routed rows (group[i]: row first + i's group):
  /// dest[i], the row's place in the routed order; groups[place] = its group, and order[place]
  /// = first + i unless order is null. `next` holds each owner's next free place (start it at
  /// the bounds; it runs on from block to block).
  template <typename Index>
  void place_rows(const uint16_t* group, int64_t first, int64_t n, int64_t* next, Index* dest, int64_t* order,
                  uint16_t* groups) const {
    for (int64_t i = 0; i < n; ++i) {
      const int64_t at = next[owner_of_[group[i]]]++;
      dest[i] = static_cast<Index>(at);
      if (order) order[at] = first + i;
      groups[at] = group[i];
    }
  }

  /// out[dest[i]] = in[i] for n items of `size` bytes (typed copies where both columns are
  /// aligned for them, as NumPy's own arrays are; else bytes).
  template <typename Index>
  static void place_column(const Index* dest, int64_t n, const uint8_t* in, uint8_t* out, size_t size) {
    auto typed = [&](auto tag) {
      using T = decltype(tag);
      const T* src = reinterpret_cast<const T*>(in);
      T* dst = reinterpret_cast<T*>(out);
      for (int64_t i = 0; i < n; ++i) dst[dest[i]] = src[i];
    };
    const bool aligned = size != 0 && (reinterpret_cast<uintptr_t>(in) | reinterpret_cast<uintptr_t>(out)) % size == 0;
    switch (aligned ? size : 0) {
      case 1: typed(uint8_t{}); break;
      case 2: typed(uint16_t{}); break;
      case 4: typed(uint32_t{}); break;
      case 8: typed(uint64_t{}); break;
      default:
        for (int64_t i = 0; i < n; ++i)
          std::memcpy(out + static_cast<size_t>(dest[i]) * size, in + static_cast<size_t>(i) * size, size);
    }
  }

 private:
  int64_t n_groups_, parallelism_;
  std::vector<uint32_t> owner_of_;
};

}  // namespace pystream
