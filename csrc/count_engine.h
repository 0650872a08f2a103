/// count_engine.h — count windows per key, by arrival order (independent of time).
///
/// CountTumbling(n) fires at a key's n-th, 2n-th, ... event over the n events since the last
/// firing; CountSliding(n, slide) fires at every slide-th event of a key over the last
/// min(seen, n) events (Flink's countWindow(n, slide)), so the first firings hold fewer than
/// n. A trailing group smaller than the trigger never fires, not even at end of input.
///
/// Panes (Li et al. 2005): a key's events are cut into panes of g = gcd(n, slide) events; a
/// ring of n/g panes per key
/// holds each pane's aggregates plus its first and last event time. Each event updates one
/// pane; a firing combines the last min(seen, n)/g panes, which lie side by side (rows are
/// key-major: slot * panes + position). A pane position is reset when a new
/// pane starts there, by which time no future window needs the pane it held.
/// Complexity: O(aggregations) per event, O(n/g) per firing; state O(keys * n/g).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "agg_layout.h"
#include "common.h"
#include "key_index.h"
#include "window_engine.h"

namespace pystream {

class CountWindowEngine {
 public:
  // Row header: the pane's first and last event time, after the count.
  CountWindowEngine(int64_t n, int64_t slide, bool keyed, const std::vector<AggSpec>& aggs)
      : n_(n), slide_(slide), keyed_(keyed), layout_(aggs, 2 * static_cast<int64_t>(sizeof(int64_t))) {
    if (n <= 0) fail("count window size must be > 0, got " + std::to_string(n));
    if (slide <= 0 || slide > n) fail("count slide must be > 0 and <= size, got slide=" + std::to_string(slide) + " size=" + std::to_string(n));
    g_ = gcd64(n, slide);
    panes_ = n / g_;
    grow(keyed ? 1024 : 1);
  }

  int64_t num_keys() const { return keyed_ ? keys_.size() : 0; }
  /// All state rows (rows not in use hold init state), for scans such as live handles.
  const uint8_t* state_data() const { return storage_.data(); }
  int64_t state_rows() const { return panes_ * slot_cap_; }
  const RowLayout& layout() const { return layout_; }
  /// Whether key k has state here (for queries; never adds it).
  bool has_key(int64_t k) const { return keys_.contains(k); }

  /// One batch in arrival order; firings are appended to `out` in the order they happen.
  /// start/end columns hold the window's first and last event time (in the input's units).
  void process(const int64_t* keys, const int64_t* ts, const std::vector<const double*>& values, int64_t n, EmitBuffer& out) {
    if (values.size() != col_of_spec_.size()) fail("expected one value column per aggregation");
    for (size_t s = 0; s < col_of_spec_.size(); ++s) {
      if (col_of_spec_[s] >= 0 && values[s] == nullptr && n > 0) fail("missing value column for an aggregation");
    }
    if (out.cols.size() != col_of_spec_.size()) out.cols.resize(col_of_spec_.size());
    slots_.resize(static_cast<size_t>(n));
    if (keyed_) {
      keys_.intern(keys, n, slots_.data());
      if (keys_.size() > slot_cap_) grow(std::max<int64_t>(keys_.size(), 2 * slot_cap_));
    } else {
      std::fill(slots_.begin(), slots_.end(), 0);
    }
    constexpr int64_t kAhead = 8;
    for (int64_t i = 0; i < n; ++i) {
      if (i + kAhead < n) {
        // The row the event kAhead on will update (stale if its key recurs before then: harmless).
        const int32_t sa = slots_[i + kAhead];
        __builtin_prefetch(row_at((seen_[sa] / g_) % panes_, sa), 1);
      }
      const int32_t slot = slots_[i];
      const int64_t c = ++seen_[slot];
      const int64_t pane = (c - 1) / g_;
      uint8_t* row = row_at(pane % panes_, slot);
      if ((c - 1) % g_ == 0) {
        std::memcpy(row, init_row_.data(), static_cast<size_t>(row_bytes_));
        reinterpret_cast<int64_t*>(row)[1] = ts[i];  // the pane's first event time
      }
      ++reinterpret_cast<int64_t*>(row)[0];
      reinterpret_cast<int64_t*>(row)[2] = ts[i];  // its last event time
      for (size_t s = 0; s < col_of_spec_.size(); ++s) {
        if (col_of_spec_[s] >= 0) cols_[col_of_spec_[s]]->update_one(row, values[s][i], ts[i]);
      }
      if (c % slide_ == 0) fire(slot, c, out);
    }
  }

  /// Partial results for queries: per key (one, or every key by slot) the window that fires
  /// next, over the events it holds so far; none for a key whose next window holds no event
  /// yet. start and end are its first and last event time so far. Changes nothing but
  /// scratch buffers.
  void peek(bool one, int64_t key, EmitBuffer& out) {
    if (out.cols.size() != col_of_spec_.size()) out.cols.resize(col_of_spec_.size());
    int64_t lo = 0, hi = keyed_ ? keys_.size() : 1;
    if (one && keyed_) {
      const int32_t slot = keys_.find(key);
      if (slot < 0) return;
      lo = slot;
      hi = lo + 1;
    }
    for (int64_t slot = lo; slot < hi; ++slot) {
      const int64_t c = seen_[static_cast<size_t>(slot)];
      const int64_t from = std::max<int64_t>(0, (c / slide_ + 1) * slide_ - n_);  // its first event's number
      if (c > from) emit_panes(static_cast<int32_t>(slot), from / g_, (c - 1) / g_, out);
    }
  }

  struct State {
    std::vector<int64_t> keys, seen;
    std::vector<uint8_t> rows;  // panes x slots rows
    int64_t row_bytes = 0;
  };

  State snapshot() const {
    State s;
    s.keys = keys_.keys();
    const int64_t nslots = keyed_ ? keys_.size() : 1;
    s.seen.assign(seen_.begin(), seen_.begin() + nslots);
    s.row_bytes = row_bytes_;
    const size_t bytes = static_cast<size_t>(nslots * row_bytes_);
    s.rows.resize(bytes * static_cast<size_t>(panes_));
    // Key-major, as in memory: slot 0's panes, then slot 1's, ...
    if (bytes) std::memcpy(s.rows.data(), row_at(0, 0), bytes * static_cast<size_t>(panes_));
    return s;
  }

  void restore(const State& s) {
    if (s.row_bytes != row_bytes_) fail("snapshot does not match this operator: different aggregations");
    // Checked before anything changes: a refused snapshot leaves the engine as it was.
    const int64_t nslots = keyed_ ? static_cast<int64_t>(s.keys.size()) : 1;
    if (static_cast<int64_t>(s.seen.size()) != nslots || s.rows.size() != static_cast<size_t>(nslots * row_bytes_ * panes_)) {
      fail("corrupt snapshot: count window state has the wrong size");
    }
    if (keyed_) keys_.assign(s.keys);  // refuses duplicate keys, changing nothing
    grow(std::max<int64_t>(nslots, keyed_ ? 1024 : 1));
    std::copy(s.seen.begin(), s.seen.end(), seen_.begin());
    const size_t bytes = static_cast<size_t>(nslots * row_bytes_);
    if (bytes) std::memcpy(row_at(0, 0), s.rows.data(), bytes * static_cast<size_t>(panes_));
  }

 private:
  uint8_t* row_at(int64_t pos, int64_t slot) const { return table_.row(pos, slot); }

  void fire(int32_t slot, int64_t c, EmitBuffer& out) {
    const int64_t events = c < n_ ? c : n_;
    emit_panes(slot, (c - events) / g_, (c - 1) / g_, out);
  }

  /// One row over a key's panes first..last (pane numbers; at most panes_ of them, so all
  /// still in the ring).
  void emit_panes(int32_t slot, int64_t first_pane, int64_t last_pane, EmitBuffer& out) {
    pos_.clear();
    for (int64_t p = first_pane; p <= last_pane; ++p) pos_.push_back(p % panes_);
    const int64_t* first = reinterpret_cast<const int64_t*>(row_at(pos_.front(), slot));
    const int64_t* last = reinterpret_cast<const int64_t*>(row_at(pos_.back(), slot));
    if (keyed_) out.key.push_back(keys_.keys()[slot]);
    out.start.push_back(first[1]);
    out.end.push_back(last[2]);
    out.update.push_back(0);
    for (size_t s = 0; s < col_of_spec_.size(); ++s) {
      layout_.column_of_spec(s).emit(table_, pos_.data(), static_cast<int64_t>(pos_.size()), &slot, 1, out.cols[s]);
    }
  }

  void grow(int64_t slot_cap) {
    HugeBuffer fresh(static_cast<size_t>(panes_ * slot_cap * row_bytes_));
    StateTable t = StateTable::key_major(fresh.data(), row_bytes_, slot_cap, panes_);
    for (int64_t p = 0; p < panes_; ++p) {
      for (int64_t s = 0; s < slot_cap; ++s) {
        if (s < slot_cap_) {
          std::memcpy(t.row(p, s), table_.row(p, s), static_cast<size_t>(row_bytes_));
        } else {
          std::memcpy(t.row(p, s), init_row_.data(), static_cast<size_t>(row_bytes_));
        }
      }
    }
    storage_ = std::move(fresh);
    table_ = t;
    seen_.resize(static_cast<size_t>(slot_cap), 0);
    slot_cap_ = slot_cap;
  }

  int64_t n_, slide_, g_ = 1, panes_ = 1;
  bool keyed_;
  KeyIndex keys_;
  RowLayout layout_;
  // Short names for the layout's parts.
  AggColumnImpl<CountAgg>& count_ = layout_.count;
  std::vector<std::unique_ptr<AggColumn>>& cols_ = layout_.cols;
  std::vector<int>& col_of_spec_ = layout_.col_of_spec;
  const int64_t& row_bytes_ = layout_.row_bytes;
  const std::vector<uint8_t>& init_row_ = layout_.init_row;
  HugeBuffer storage_;
  StateTable table_;
  int64_t slot_cap_ = 0;
  std::vector<int64_t> seen_;
  std::vector<int32_t> slots_;
  std::vector<int64_t> pos_;
};

}  // namespace pystream
