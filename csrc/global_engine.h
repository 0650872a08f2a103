/// global_engine.h — one global window per key, fired by a trigger (Flink's GlobalWindows with
/// CountTrigger, ContinuousEventTimeTrigger, ContinuousProcessingTimeTrigger; PurgingTrigger).
///
/// Triggers: kCount fires a key when `count` events arrived for it since its last firing;
/// kEventTime fires every key that received events since its last firing whenever the
/// watermark passes a multiple of `interval` (the first watermark passes nothing, unless
/// first_watermark says where it began); kProcessing
/// fires them when the runtime calls `fire` (its wall clock passed a multiple of the interval).
/// Accumulating mode emits the key's whole window so far; purging mode clears it after each
/// firing. Rows carry the first and last event time of the window contents (by arrival, in
/// the input's units) and its event count. Nothing is ever late for a global window; the
/// watermark (per partition, as for time windows) only drives the event-time trigger, and the
/// max_future guard still refuses poison timestamps. End of input fires the time triggers
/// once more; a count trigger's trailing group never fires (as count windows).
/// Layout: one state row per key (count, first ts, last ts, aggregations).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "agg_layout.h"
#include "common.h"
#include "key_index.h"
#include "watermark.h"
#include "window_engine.h"

namespace pystream {

struct GlobalSpec {
  enum Trigger : int { kCount = 0, kEventTime = 1, kProcessing = 2 };
  int trigger = kCount;
  int64_t count = 0, interval = 0;
  bool purge = false;
  int64_t ooo = 0, max_future = -1;
  bool keyed = true;
};

class GlobalEngine {
 public:
  GlobalEngine(const GlobalSpec& spec, const std::vector<AggSpec>& aggs)
      : spec_(spec), wm_(spec.ooo), layout_(aggs, 2 * static_cast<int64_t>(sizeof(int64_t))) {
    if (spec.trigger < GlobalSpec::kCount || spec.trigger > GlobalSpec::kProcessing) fail("unknown trigger kind");
    if (spec.trigger == GlobalSpec::kCount && spec.count <= 0) fail("count trigger needs a count > 0, got " + std::to_string(spec.count));
    if (spec.trigger != GlobalSpec::kCount && (spec.interval <= 0 || spec.interval > kMaxDuration)) {
      fail("trigger interval must be > 0 and <= 2^60 ns, got " + std::to_string(spec.interval));
    }
    if (spec.ooo < 0 || spec.ooo > kMaxDuration) fail("max_out_of_orderness must be >= 0 and <= 2^60 ns");
    if (spec.max_future > kMaxDuration) fail("max_future must be <= 2^60 ns");
    grow(spec.keyed ? 1024 : 1);
  }

  bool has_watermark() const { return wm_.has(); }
  int64_t watermark() const { return wm_.value(); }
  int64_t num_keys() const { return spec_.keyed ? keys_.size() : 0; }
  /// All state rows (rows not in use hold init state), for scans such as live handles.
  const uint8_t* state_data() const { return rows_.data(); }
  int64_t state_rows() const { return static_cast<int64_t>(rows_.size()) / row_bytes_; }
  const RowLayout& layout() const { return layout_; }
  /// Whether key k has state here (for queries; never adds it).
  bool has_key(int64_t k) const { return keys_.contains(k); }
  const std::vector<PartitionState>& partitions() const { return parts_.all(); }

  /// `floor`: as WindowEngine::process's (the partition's events before each one that went to
  /// other engines), or null.
  void process(const int64_t* keys, const int64_t* ts, int64_t unit_ns, const std::vector<const double*>& values, int64_t n,
               EmitBuffer& out, int64_t partition = 0, const int64_t* floor = nullptr) {
    check_batch(layout_, flushed_, values, ts, n, unit_ns);
    prepare(out);
    slots_.resize(static_cast<size_t>(n));
    if (spec_.keyed) {
      keys_.intern(keys, n, slots_.data());
      if (keys_.size() > slot_cap_) grow(std::max<int64_t>(keys_.size(), 2 * slot_cap_));
    } else {
      std::fill(slots_.begin(), slots_.end(), 0);
    }
    int64_t cap, pmax;
    const size_t p = parts_.begin_batch(partition, wm_, cap, pmax);
    constexpr int64_t kAhead = 8;
    for (int64_t i = 0; i < n; ++i) {
      if (i + kAhead < n) __builtin_prefetch(row(slots_[i + kAhead]), 1);
      const int64_t t = ts[i] * unit_ns;
      if (floor && floor[i] > pmax) {
        pmax = floor[i];
        const int64_t cand = std::min(wm_.candidate(pmax), cap);
        if (cand > kNoWatermark) move_watermark(cand, out);
      }
      if (wm_.has() && spec_.max_future >= 0 && t > wm_.value() + spec_.max_future) {
        out.invalid_rows.push_back(i);
        continue;
      }
      const int32_t slot = slots_[i];
      uint8_t* r = row(slot);
      int64_t* head = reinterpret_cast<int64_t*>(r);
      if (head[0]++ == 0) head[1] = ts[i];  // first event time of the window contents
      head[2] = ts[i];
      for (size_t s = 0; s < col_of_spec_.size(); ++s) {
        if (col_of_spec_[s] >= 0) cols_[col_of_spec_[s]]->update_one(r, values[s][i], t);
      }
      if (pending_[slot]++ == 0 && spec_.trigger != GlobalSpec::kCount) dirty_.push_back(slot);
      if (spec_.trigger == GlobalSpec::kCount && pending_[slot] == spec_.count) fire_key(slot, out);
      pmax = std::max(pmax, t);
      const int64_t cand = std::min(wm_.candidate(pmax), cap);
      if (cand > kNoWatermark) move_watermark(cand, out);
    }
    parts_.end_batch(p, pmax);
  }

  void advance_watermark(int64_t w, EmitBuffer& out) {
    prepare(out);
    if (flushed_) return;
    if (w < -kMaxAbsTime - kMaxDuration || w > kMaxAbsTime) fail("watermark " + std::to_string(w) + " ns is out of range");
    move_watermark(w, out);
  }

  /// Rows of `partition` up to time t (ns) went to other engines (the Ray runtime's window
  /// actors tell each other their partitions' maxima): its max rises to t and it is active,
  /// as if those rows had come here, which may advance the watermark and fire.
  void raise_partition(int64_t partition, int64_t t, EmitBuffer& out) {
    parts_.raise(partition, t);
    set_partition_idle(partition, false, out);
  }

  /// Where the watermark of one engine that saw every row of the input began (w, ns), for an
  /// engine that holds some keys (the Ray runtime's window actors): its own watermark may
  /// first appear later, past a multiple of the interval that the one engine's watermark
  /// passed on its way there, firing the keys that had events. While this engine has no
  /// watermark, its schedule starts at w, as the one engine's did.
  void first_watermark(int64_t w) {
    if (!wm_.has()) first_hint_ = w;
  }

  void set_partition_idle(int64_t partition, bool idle, EmitBuffer& out) {
    prepare(out);
    parts_[parts_.index(partition)].idle = idle;
    int64_t w;
    if (parts_.active_min(wm_, w) && w > kNoWatermark && !flushed_) move_watermark(w, out);
  }

  /// The processing-time trigger is due: every key with events since its last firing fires.
  void fire(EmitBuffer& out) {
    prepare(out);
    if (!flushed_ && spec_.trigger == GlobalSpec::kProcessing) fire_all(out);
  }

  /// Partial results for queries: the window of each key (one, or every key by slot) that
  /// received events since its last firing, as its next firing would emit it (the whole
  /// window when accumulating, what came since the last firing when purging). Changes nothing
  /// but scratch buffers.
  void peek(bool one, int64_t key, EmitBuffer& out) {
    prepare(out);
    int64_t lo = 0, hi = spec_.keyed ? keys_.size() : 1;
    if (one && spec_.keyed) {
      const int32_t slot = keys_.find(key);
      if (slot < 0) return;
      lo = slot;
      hi = lo + 1;
    }
    for (int64_t slot = lo; slot < hi; ++slot) {
      if (pending_[static_cast<size_t>(slot)] > 0) emit_row(static_cast<int32_t>(slot), out);
    }
  }

  void flush(EmitBuffer& out) {
    prepare(out);
    if (flushed_) return;
    if (spec_.trigger != GlobalSpec::kCount) fire_all(out);
    flushed_ = true;
  }

  struct State {
    std::vector<int64_t> keys, pending;
    std::vector<PartitionState> partitions;
    std::vector<uint8_t> rows;
    int64_t row_bytes = 0, wm = 0, next_fire = 0;
    bool has_wm = false, flushed = false;
  };

  State snapshot() const {
    State s;
    s.keys = keys_.keys();
    const int64_t nslots = spec_.keyed ? keys_.size() : 1;
    s.pending.assign(pending_.begin(), pending_.begin() + nslots);
    s.partitions = parts_.all();
    s.row_bytes = row_bytes_;
    s.rows.assign(rows_.begin(), rows_.begin() + static_cast<std::ptrdiff_t>(nslots * row_bytes_));
    s.wm = wm_.value();
    s.has_wm = wm_.has();
    s.next_fire = next_fire_;
    s.flushed = flushed_;
    return s;
  }

  void restore(const State& s) {
    if (s.row_bytes != row_bytes_) fail("snapshot does not match this operator: different aggregations");
    // Checked before anything changes: a refused snapshot leaves the engine as it was.
    if (!spec_.keyed && !s.keys.empty()) fail("snapshot does not match this operator: keyed state restored into a non-keyed operator");
    const int64_t nslots = spec_.keyed ? static_cast<int64_t>(s.keys.size()) : 1;
    if (static_cast<int64_t>(s.pending.size()) != nslots || s.rows.size() != static_cast<size_t>(nslots * row_bytes_)) {
      fail("corrupt snapshot: global window state has the wrong size");
    }
    if (spec_.keyed) keys_.assign(s.keys);  // refuses duplicate keys, changing nothing
    slot_cap_ = 0;
    rows_.clear();
    pending_.clear();
    grow(std::max<int64_t>(nslots, spec_.keyed ? 1024 : 1));
    std::copy(s.pending.begin(), s.pending.end(), pending_.begin());
    std::memcpy(rows_.data(), s.rows.data(), s.rows.size());
    dirty_.clear();
    for (int64_t slot = 0; slot < nslots; ++slot) {
      if (pending_[slot] > 0 && spec_.trigger != GlobalSpec::kCount) dirty_.push_back(static_cast<int32_t>(slot));
    }
    wm_ = Watermark(spec_.ooo);
    if (s.has_wm) wm_.set(s.wm);
    next_fire_ = s.next_fire;
    flushed_ = s.flushed;
    parts_.assign(s.partitions);
  }

 private:
  uint8_t* row(int32_t slot) { return rows_.data() + static_cast<size_t>(slot) * static_cast<size_t>(row_bytes_); }

  void prepare(EmitBuffer& out) const {
    if (out.cols.size() != col_of_spec_.size()) out.cols.resize(col_of_spec_.size());
    for (size_t s = 0; s < col_of_spec_.size(); ++s) out.cols[s].is_int = col_of_spec_[s] < 0 || cols_[col_of_spec_[s]]->is_int();
  }

  void grow(int64_t slot_cap) {
    rows_.resize(static_cast<size_t>(slot_cap * row_bytes_));
    layout_.fill_init(row(static_cast<int32_t>(slot_cap_)), slot_cap - slot_cap_);
    pending_.resize(static_cast<size_t>(slot_cap), 0);
    slot_cap_ = slot_cap;
  }

  /// The watermark moves to w (never back); the event-time trigger fires when it passes a
  /// multiple of the interval.
  void move_watermark(int64_t w, EmitBuffer& out) {
    if (wm_.has() && w <= wm_.value()) return;
    bool first = !wm_.has();
    if (first && first_hint_ > kNoWatermark && first_hint_ < w && spec_.trigger == GlobalSpec::kEventTime) {
      // The one engine that saw every partition began at the hint: the schedule starts there.
      next_fire_ = (floor_div(first_hint_, spec_.interval) + 1) * spec_.interval;
      first = false;
    }
    wm_.set(w);
    if (spec_.trigger != GlobalSpec::kEventTime) return;
    if (!first && w >= next_fire_) fire_all(out);
    next_fire_ = (floor_div(w, spec_.interval) + 1) * spec_.interval;
  }

  void fire_all(EmitBuffer& out) {
    std::sort(dirty_.begin(), dirty_.end());
    for (int32_t slot : dirty_) {
      if (pending_[slot] > 0) fire_key(slot, out);
    }
    dirty_.clear();
  }

  void fire_key(int32_t slot, EmitBuffer& out) {
    emit_row(slot, out);
    pending_[slot] = 0;
    if (spec_.purge) std::memcpy(row(slot), init_row_.data(), static_cast<size_t>(row_bytes_));
  }

  void emit_row(int32_t slot, EmitBuffer& out) {
    const int64_t* head = reinterpret_cast<const int64_t*>(row(slot));
    if (spec_.keyed) out.key.push_back(keys_.keys()[static_cast<size_t>(slot)]);
    out.start.push_back(head[1]);
    out.end.push_back(head[2]);
    out.update.push_back(0);
    out.early.push_back(0);
    const StateTable t = StateTable::key_major(rows_.data(), row_bytes_, slot_cap_, 1);
    const int64_t pos = 0;
    for (size_t s = 0; s < col_of_spec_.size(); ++s) layout_.column_of_spec(s).emit(t, &pos, 1, &slot, 1, out.cols[s]);
  }

  GlobalSpec spec_;
  Watermark wm_;
  KeyIndex keys_;
  RowLayout layout_;
  std::vector<std::unique_ptr<AggColumn>>& cols_ = layout_.cols;
  std::vector<int>& col_of_spec_ = layout_.col_of_spec;
  const int64_t& row_bytes_ = layout_.row_bytes;
  const std::vector<uint8_t>& init_row_ = layout_.init_row;
  std::vector<uint8_t> rows_;
  std::vector<int64_t> pending_;  // events per key since its last firing
  std::vector<int32_t> dirty_;    // keys with pending events (unsorted; may hold fired keys)
  std::vector<int32_t> slots_;
  int64_t slot_cap_ = 0;
  int64_t next_fire_ = 0;
  int64_t first_hint_ = kNoWatermark;  // first_watermark
  bool flushed_ = false;
  PartitionSet parts_;
};

}  // namespace pystream
