/// tuple_interner.h — composite keys: rows of several int64 columns -> dense int64 ids.
///
/// Each key column is first made int64 (string columns through the Cython interner); this
/// table then gives every distinct row an id in first-seen order, so a composite key is one
/// int64 for the window engine and is mapped back column by column on output.
/// Layout: rows stored flat (`rows_[id * width + c]`), open addressing over ids.
#pragma once

#include <cstdint>
#include <vector>

#include "common.h"

namespace pystream {

class TupleInterner {
 public:
  explicit TupleInterner(int width) : width_(width) {
    if (width < 1) fail("a composite key needs at least one column");
    rehash(1024);
  }
  int width() const { return width_; }
  int64_t size() const { return static_cast<int64_t>(rows_.size()) / width_; }
  const std::vector<int64_t>& rows() const { return rows_; }

  void intern(const std::vector<const int64_t*>& cols, int64_t n, int64_t* out) {
    std::vector<int64_t> row(static_cast<size_t>(width_));
    for (int64_t i = 0; i < n; ++i) {
      for (int c = 0; c < width_; ++c) row[c] = cols[c][i];
      out[i] = find_or_insert(row.data());
    }
  }

  void assign(const std::vector<int64_t>& rows) {
    if (rows.size() % static_cast<size_t>(width_) != 0) fail("corrupt snapshot: composite key rows");
    rows_.clear();
    int64_t cap = 1024;
    while (cap < 2 * static_cast<int64_t>(rows.size() / width_) + 2) cap <<= 1;
    rehash(static_cast<uint64_t>(cap));
    for (size_t r = 0; r < rows.size(); r += static_cast<size_t>(width_)) find_or_insert(rows.data() + r);
  }

  /// The id of a row of width() values, or -1 (never inserts: for queries).
  int64_t find(const int64_t* row) const {
    if (ids_.empty()) return -1;
    for (uint64_t b = hash(row) & mask_; ids_[b] >= 0; b = (b + 1) & mask_) {
      if (equal(ids_[b], row)) return ids_[b];
    }
    return -1;
  }

 private:
  uint64_t hash(const int64_t* row) const {
    uint64_t h = 0x9e3779b97f4a7c15ULL;
    for (int c = 0; c < width_; ++c) {
      h ^= static_cast<uint64_t>(row[c]) + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
      h *= 0xbf58476d1ce4e5b9ULL;
      h ^= h >> 31;
    }
    return h;
  }

  bool equal(int64_t id, const int64_t* row) const {
    const int64_t* r = rows_.data() + id * width_;
    for (int c = 0; c < width_; ++c) {
      if (r[c] != row[c]) return false;
    }
    return true;
  }

  int64_t find_or_insert(const int64_t* row) {
    uint64_t b = hash(row) & mask_;
    while (ids_[b] >= 0) {
      if (equal(ids_[b], row)) return ids_[b];
      b = (b + 1) & mask_;
    }
    const int64_t id = size();
    rows_.insert(rows_.end(), row, row + width_);
    ids_[b] = id;
    if (2 * static_cast<uint64_t>(size()) > mask_ + 1) rehash(2 * (mask_ + 1));
    return id;
  }

  void rehash(uint64_t cap) {
    ids_.assign(cap, -1);
    mask_ = cap - 1;
    for (int64_t id = 0; id < size(); ++id) {
      uint64_t b = hash(rows_.data() + id * width_) & mask_;
      while (ids_[b] >= 0) b = (b + 1) & mask_;
      ids_[b] = id;
    }
  }

  int width_;
  std::vector<int64_t> rows_;
  std::vector<int64_t> ids_;
  uint64_t mask_ = 0;
};

}  // namespace pystream
