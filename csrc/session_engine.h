/// session_engine.h — session windows per key (Flink's merging event-time windows).
///
/// Each event opens [t, t + gap); sessions that intersect inclusively (a.start <= b.end and
/// a.end >= b.start) merge and their aggregates merge, so an out-of-order event can bridge two
/// sessions. A session's window is [first event time, last event time + gap); it fires when
/// the watermark reaches end - 1 and is dropped once the watermark reaches end - 1 +
/// allowed_lateness. An event is late only when it joins no live session and its own window
/// is past cleanup. Events merging into a session that has already passed the watermark
/// re-fire it with update=True (coalesced per batch); a session that was emitted and later
/// grew fires again with update=True.
///
/// Layout: sessions live in a pool (start, last, key slot, flags) with one state row each
/// (the policy structs of agg_column.h at fixed offsets); a key's live sessions are a small
/// vector sorted by start; on-time firing and cleanup are two min-heaps with lazy deletion
/// (a version per session). Events are handled one at a time (merging decides where each goes),
/// with the watermark advancing per event exactly as for time windows.
/// Complexity: O(live sessions of the key + aggregations) per event, O(log sessions) per firing.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <queue>
#include <string>
#include <vector>

#include "agg_layout.h"
#include "common.h"
#include "key_index.h"
#include "timer_queue.h"
#include "watermark.h"
#include "window_engine.h"

namespace pystream {

class SessionEngine {
 public:
  SessionEngine(int64_t gap, int64_t ooo, int64_t lateness, int64_t max_future, bool keyed, const std::vector<AggSpec>& aggs,
                int64_t out_div)
      : gap_(gap), ooo_(ooo), lateness_(lateness), max_future_(max_future), keyed_(keyed), out_div_(out_div), wm_(ooo),
        layout_(aggs, 0) {
    if (gap <= 0 || gap > kMaxDuration) fail("session gap must be > 0 and <= 2^60 ns, got " + std::to_string(gap));
    if (ooo < 0 || ooo > kMaxDuration) fail("max_out_of_orderness must be >= 0 and <= 2^60 ns");
    if (lateness < 0 || lateness > kMaxDuration) fail("allowed_lateness must be >= 0 and <= 2^60 ns");
    if (out_div < 1) fail("out_div must be >= 1");
  }

  bool has_watermark() const { return wm_.has(); }
  int64_t watermark() const { return wm_.value(); }
  int64_t num_keys() const { return keyed_ ? keys_.size() : 0; }
  /// All state rows (rows not in use hold init state), for scans such as live handles.
  const uint8_t* state_data() const { return rows_.data(); }
  int64_t state_rows() const { return static_cast<int64_t>(rows_.size()) / row_bytes_; }
  const RowLayout& layout() const { return layout_; }
  /// Whether key k has state here (for queries; never adds it).
  bool has_key(int64_t k) const { return keys_.contains(k); }
  int64_t live_sessions() const { return live_; }

  /// `floor`: as WindowEngine::process's (the partition's events before each one that went to
  /// other engines), or null.
  void process(const int64_t* keys, const int64_t* ts, int64_t unit_ns, const std::vector<const double*>& values, int64_t n,
               EmitBuffer& out, int64_t partition = 0, const int64_t* floor = nullptr) {
    check_batch(layout_, flushed_, values, ts, n, unit_ns);
    prepare(out);
    slots_.resize(static_cast<size_t>(n));
    if (keyed_) {
      keys_.intern(keys, n, slots_.data());
    } else {
      std::fill(slots_.begin(), slots_.end(), 0);
    }
    by_slot_.resize(static_cast<size_t>(keyed_ ? keys_.size() : 1));
    // This batch's partition rejoins if idle; the other active partitions cap the watermark.
    int64_t cap, pmax;
    const size_t p = parts_.begin_batch(partition, wm_, cap, pmax);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t t = ts[i] * unit_ns;
      if (floor && floor[i] > pmax) {
        pmax = floor[i];
        const int64_t cand = std::min(wm_.candidate(pmax), cap);
        if (cand > kNoWatermark && (!wm_.has() || cand > wm_.value())) advance(cand, out);
      }
      if (wm_.has() && max_future_ >= 0 && t > wm_.value() + max_future_) {
        out.invalid_rows.push_back(i);
        continue;
      }
      if (!add(slots_[i], t, values, i)) out.late_rows.push_back(i);
      pmax = std::max(pmax, t);
      const int64_t cand = std::min(wm_.candidate(pmax), cap);
      if (cand > kNoWatermark && (!wm_.has() || cand > wm_.value())) advance(cand, out);
    }
    parts_.end_batch(p, pmax);
    emit_dirty(out);
  }

  /// Rows of `partition` up to time t (ns) went to other engines (the Ray runtime's window
  /// actors tell each other their partitions' maxima): its max rises to t and it is active,
  /// as if those rows had come here, which may advance the watermark and fire.
  void raise_partition(int64_t partition, int64_t t, EmitBuffer& out) {
    parts_.raise(partition, t);
    set_partition_idle(partition, false, out);
  }

  void set_partition_idle(int64_t partition, bool idle, EmitBuffer& out) {
    prepare(out);
    parts_[parts_.index(partition)].idle = idle;
    int64_t w;
    if (parts_.active_min(wm_, w) && w > kNoWatermark && !flushed_ && (!wm_.has() || w > wm_.value())) advance(w, out);
  }

  const std::vector<PartitionState>& partitions() const { return parts_.all(); }

  /// Partial results for queries: the live sessions that have not fired on time yet (the
  /// watermark is before their end - 1), of one key (`one`) or of every key, by key slot and
  /// start. update=True marks a session that fired before and has grown past the watermark
  /// since (its next firing is an update). These are the rows a flush would emit now.
  /// Changes nothing but scratch buffers.
  void peek(bool one, int64_t key, EmitBuffer& out) {
    prepare(out);
    size_t lo = 0, hi = by_slot_.size();
    if (one && keyed_) {
      const int32_t slot = keys_.find(key);
      if (slot < 0 || static_cast<size_t>(slot) >= hi) return;
      lo = static_cast<size_t>(slot);
      hi = lo + 1;
    }
    for (size_t slot = lo; slot < hi; ++slot) {
      peek_ids_ = by_slot_[slot];
      std::sort(peek_ids_.begin(), peek_ids_.end(), [&](int32_t a, int32_t b) { return pool_[a].start < pool_[b].start; });
      for (int32_t id : peek_ids_) {
        const Sess& s = pool_[id];
        if (!wm_.has() || end_of(s) - 1 > wm_.value()) emit(id, s.emitted, out);
      }
    }
  }

  void flush(EmitBuffer& out) {
    prepare(out);
    if (!flushed_) {
      advance(kEndWatermark, out);
      flushed_ = true;
    }
  }

  void advance_watermark(int64_t w, EmitBuffer& out) {
    prepare(out);
    if (!flushed_ && (!wm_.has() || w > wm_.value())) advance(w, out);
  }

  struct State {
    std::vector<PartitionState> partitions;
    std::vector<int64_t> keys, start, last;
    std::vector<int32_t> slot;
    std::vector<uint8_t> emitted;
    std::vector<uint8_t> rows;
    int64_t row_bytes = 0;
    bool has_wm = false, flushed = false;
    int64_t wm = 0;
  };

  State snapshot() const {
    State s;
    s.partitions = parts_.all();
    s.keys = keys_.keys();
    s.row_bytes = row_bytes_;
    s.has_wm = wm_.has();
    s.wm = wm_.value();
    s.flushed = flushed_;
    for (size_t slot = 0; slot < by_slot_.size(); ++slot) {
      for (int32_t id : by_slot_[slot]) {
        const Sess& x = pool_[id];
        s.start.push_back(x.start);
        s.last.push_back(x.last);
        s.slot.push_back(static_cast<int32_t>(slot));
        s.emitted.push_back(x.emitted);
        s.rows.insert(s.rows.end(), row(id), row(id) + row_bytes_);
      }
    }
    return s;
  }

  void restore(const State& s) {
    if (s.row_bytes != row_bytes_) fail("snapshot does not match this operator: different aggregations");
    // Checked before anything changes: a refused snapshot leaves the engine as it was.
    if (s.rows.size() != s.start.size() * static_cast<size_t>(row_bytes_)) fail("corrupt snapshot: session state size");
    const size_t nslots = keyed_ ? s.keys.size() : 1;
    for (int32_t slot : s.slot) {
      if (slot < 0 || static_cast<size_t>(slot) >= nslots) fail("corrupt snapshot: session key slot out of range");
    }
    if (keyed_) keys_.assign(s.keys);
    by_slot_.assign(static_cast<size_t>(keyed_ ? keys_.size() : 1), {});
    pool_.clear();
    free_.clear();
    rows_.clear();
    fire_heap_.clear();
    clean_heap_.clear();
    live_ = 0;
    wm_ = Watermark(ooo_);
    if (s.has_wm) wm_.set(s.wm);
    flushed_ = s.flushed;
    parts_.assign(s.partitions);
    for (size_t i = 0; i < s.start.size(); ++i) {
      // Sessions the watermark has passed already fired: they wait only for cleanup.
      const bool due_later = !s.has_wm || s.last[i] + gap_ - 1 > s.wm;
      const int32_t id = new_session(s.slot[i], s.start[i], false);
      pool_[id].last = s.last[i];
      if (due_later) arm_fire(id);
      pool_[id].emitted = s.emitted[i] != 0;
      std::memcpy(row(id), s.rows.data() + i * static_cast<size_t>(row_bytes_), static_cast<size_t>(row_bytes_));
      by_slot_[static_cast<size_t>(s.slot[i])].push_back(id);
    }
  }

 private:
  struct Sess {
    int64_t start = 0, last = 0;
    int32_t slot = 0;
    uint32_t version = 0;
    bool alive = false, emitted = false, dirty = false;
    bool armed = false;  // has an entry in the firing heap
  };
  struct Due {
    int64_t time;
    int32_t slot, id;
    uint32_t version;
    bool operator>(const Due& o) const { return time != o.time ? time > o.time : (slot != o.slot ? slot > o.slot : id > o.id); }
  };
  using Heap = TimerQueue<Due>;

  int bucket_shift() const {
    int shift = 0;
    while (shift < 60 && (int64_t{1} << (shift + 1)) <= gap_ / 32) ++shift;
    return shift;
  }

  uint8_t* row(int32_t id) { return rows_.data() + static_cast<size_t>(id) * static_cast<size_t>(row_bytes_); }
  const uint8_t* row(int32_t id) const { return rows_.data() + static_cast<size_t>(id) * static_cast<size_t>(row_bytes_); }
  int64_t end_of(const Sess& s) const { return s.last + gap_; }

  void prepare(EmitBuffer& out) const {
    if (out.cols.size() != col_of_spec_.size()) out.cols.resize(col_of_spec_.size());
    for (size_t s = 0; s < col_of_spec_.size(); ++s) out.cols[s].is_int = col_of_spec_[s] < 0 || cols_[col_of_spec_[s]]->is_int();
  }

  int32_t new_session(int32_t slot, int64_t t, bool arm = true) {
    int32_t id;
    if (!free_.empty()) {
      id = free_.back();
      free_.pop_back();
    } else {
      id = static_cast<int32_t>(pool_.size());
      pool_.emplace_back();
      rows_.resize(rows_.size() + static_cast<size_t>(row_bytes_));
    }
    Sess& s = pool_[id];
    s.start = s.last = t;
    s.slot = slot;
    s.alive = true;
    s.emitted = s.dirty = s.armed = false;
    ++s.version;
    std::memcpy(row(id), init_row_.data(), static_cast<size_t>(row_bytes_));
    ++live_;
    schedule(id, arm);
    return id;
  }

  void kill(int32_t id) {
    // A freed row holds init state, like every row not in use (handle columns rely on it).
    std::memcpy(row(id), init_row_.data(), static_cast<size_t>(row_bytes_));
    pool_[id].alive = false;
    ++pool_[id].version;
    free_.push_back(id);
    --live_;
  }

  /// One entry per session in each heap (at creation). Ends only grow, so an entry popped
  /// before the session's current time is pushed again instead of acting: heaps stay at one
  /// entry per live session, not one per event.
  /// Without allowed lateness an armed session is dropped as it fires (its cleanup time is its
  /// firing time), so it needs no cleanup entry: half the timer traffic of short gaps.
  void schedule(int32_t id, bool arm = true) {
    Sess& s = pool_[id];
    if (arm) arm_fire(id);
    if (lateness_ > 0 || !arm) clean_heap_.push(Due{end_of(s) - 1 + lateness_, s.slot, id, s.version});
  }

  void drop(int32_t id) {
    std::vector<int32_t>& list = by_slot_[static_cast<size_t>(pool_[id].slot)];
    list.erase(std::find(list.begin(), list.end(), id));
    kill(id);
  }

  void arm_fire(int32_t id) {
    Sess& s = pool_[id];
    fire_heap_.push(Due{end_of(s) - 1, s.slot, id, s.version});
    s.armed = true;
  }

  /// One event; false when it is late (joins no live session and its own window is expired).
  bool add(int32_t slot, int64_t t, const std::vector<const double*>& values, int64_t i) {
    std::vector<int32_t>& list = by_slot_[static_cast<size_t>(slot)];
    const int64_t lo = t, hi = t + gap_;
    int32_t survivor = -1;
    size_t w = 0;
    for (size_t r = 0; r < list.size(); ++r) {
      const int32_t id = list[r];
      Sess& s = pool_[id];
      if (s.start <= hi && end_of(s) >= lo) {
        if (survivor < 0) {
          survivor = id;
          list[w++] = id;
        } else {
          merge_into(survivor, id);
        }
      } else {
        list[w++] = id;
      }
    }
    list.resize(w);
    if (survivor < 0) {
      if (wm_.has() && t + gap_ - 1 + lateness_ <= wm_.value()) return false;
      // A session born behind the watermark fires once, as a late update, not on time too.
      survivor = new_session(slot, t, !wm_.has() || t + gap_ - 1 > wm_.value());
      list.insert(std::lower_bound(list.begin(), list.end(), survivor,
                                   [&](int32_t a, int32_t b) { return pool_[a].start < pool_[b].start; }),
                  survivor);
    }
    Sess& s = pool_[survivor];
    s.start = std::min(s.start, t);
    s.last = std::max(s.last, t);  // its heap entries are re-pushed lazily if the end grew
    // A session that fired (or merged with one that did) and now ends after the watermark
    // must fire again when the watermark gets there.
    if (!s.armed && (!wm_.has() || end_of(s) - 1 > wm_.value())) arm_fire(survivor);
    uint8_t* r = row(survivor);
    ++*reinterpret_cast<int64_t*>(r);
    for (size_t k = 0; k < col_of_spec_.size(); ++k) {
      if (col_of_spec_[k] >= 0) cols_[col_of_spec_[k]]->update_one(r, values[k][i], t);
    }
    if (wm_.has() && end_of(s) - 1 <= wm_.value() && !s.dirty) {
      s.dirty = true;  // a late update of a session the watermark has passed
      dirty_.push_back(survivor);
    }
    return true;
  }

  /// Merges session `b` into `a` (both of one key): bounds, flags and aggregates.
  void merge_into(int32_t a, int32_t b) {
    Sess& x = pool_[a];
    Sess& y = pool_[b];
    x.start = std::min(x.start, y.start);
    x.last = std::max(x.last, y.last);
    x.emitted = x.emitted || y.emitted;
    if (y.dirty && !x.dirty) {
      x.dirty = true;
      dirty_.push_back(a);
    }
    uint8_t* ra = row(a);
    const uint8_t* rb = row(b);
    *reinterpret_cast<int64_t*>(ra) += *reinterpret_cast<const int64_t*>(rb);
    for (const auto& c : cols_) c->combine_rows(ra, rb);
    kill(b);
  }

  /// The watermark moves to w: pending late updates, then on-time firings in order of
  /// (end, key's first appearance), then cleanup.
  void advance(int64_t w, EmitBuffer& out) {
    wm_.set(w);
    if (!fire_heap_.empty() && fire_heap_.top().time <= w) {
      emit_dirty(out);
      while (!fire_heap_.empty() && fire_heap_.top().time <= w) {
        const Due d = fire_heap_.top();
        fire_heap_.pop();
        Sess& s = pool_[d.id];
        if (!s.alive || s.version != d.version) continue;
        if (end_of(s) - 1 > d.time) {  // the session grew since: not due yet
          fire_heap_.push(Due{end_of(s) - 1, s.slot, d.id, d.version});
          continue;
        }
        emit(d.id, s.emitted, out);
        s.emitted = true;
        s.armed = false;
        if (lateness_ == 0) drop(d.id);
      }
    }
    while (!clean_heap_.empty() && clean_heap_.top().time <= w) {
      const Due d = clean_heap_.top();
      clean_heap_.pop();
      Sess& s = pool_[d.id];
      if (!s.alive || s.version != d.version) continue;
      if (end_of(s) - 1 + lateness_ > d.time) {
        clean_heap_.push(Due{end_of(s) - 1 + lateness_, s.slot, d.id, d.version});
        continue;
      }
      if (s.dirty) emit_dirty(out);
      drop(d.id);
    }
  }

  void emit_dirty(EmitBuffer& out) {
    if (dirty_.empty()) return;
    std::sort(dirty_.begin(), dirty_.end(), [&](int32_t a, int32_t b) {
      const int64_t ea = end_of(pool_[a]), eb = end_of(pool_[b]);
      return ea != eb ? ea < eb : pool_[a].slot < pool_[b].slot;
    });
    for (int32_t id : dirty_) {
      Sess& s = pool_[id];
      if (!s.alive || !s.dirty) continue;
      emit(id, true, out);
      s.dirty = false;
      s.emitted = true;
    }
    dirty_.clear();
  }

  void emit(int32_t id, bool update, EmitBuffer& out) {
    const Sess& s = pool_[id];
    if (keyed_) out.key.push_back(keys_.keys()[static_cast<size_t>(s.slot)]);
    out.start.push_back(s.start / out_div_);
    out.end.push_back(end_of(s) / out_div_);
    out.update.push_back(update ? 1 : 0);
    const StateTable t = StateTable::key_major(rows_.data(), row_bytes_, 1, 1);
    const int64_t pos = id;  // key-major table with one position per row: row(id, 0)
    const int32_t zero = 0;
    for (size_t k = 0; k < col_of_spec_.size(); ++k) {
      layout_.column_of_spec(k).emit(t, &pos, 1, &zero, 1, out.cols[k]);
    }
  }

  int64_t gap_, ooo_, lateness_, max_future_;
  bool keyed_;
  int64_t out_div_;
  Watermark wm_;
  KeyIndex keys_;
  RowLayout layout_;
  // Short names for the layout's parts.
  AggColumnImpl<CountAgg>& count_ = layout_.count;
  std::vector<std::unique_ptr<AggColumn>>& cols_ = layout_.cols;
  std::vector<int>& col_of_spec_ = layout_.col_of_spec;
  const int64_t& row_bytes_ = layout_.row_bytes;
  const std::vector<uint8_t>& init_row_ = layout_.init_row;
  std::vector<Sess> pool_;
  std::vector<uint8_t> rows_;
  std::vector<int32_t> free_;
  std::vector<std::vector<int32_t>> by_slot_;
  // Buckets of about gap/32: a live session's timers lie within gap + out-of-orderness of
  // the watermark, so they spread over a few dozen buckets.
  Heap fire_heap_{bucket_shift()}, clean_heap_{bucket_shift()};
  std::vector<int32_t> dirty_;
  std::vector<int32_t> slots_;
  std::vector<int32_t> peek_ids_;
  int64_t live_ = 0;
  bool flushed_ = false;
  PartitionSet parts_;
};

}  // namespace pystream
