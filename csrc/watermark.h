/// watermark.h — bounded out-of-orderness watermark (Flink's convention).
///
/// After seeing max event time M the watermark is W = M - ooo - 1: every event still to come
/// is assumed to have t > W. It is monotone by construction (`set` ignores regressions), so
/// a caller may offer any candidate. `has()` is false until the first event; the first event
/// is judged against no watermark at all.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common.h"

namespace pystream {

class Watermark {
 public:
  explicit Watermark(int64_t ooo) : ooo_(ooo) {}
  bool has() const { return has_; }
  int64_t value() const { return has_ ? w_ : kNoWatermark; }
  /// The watermark an event at t would imply on its own.
  int64_t candidate(int64_t t) const { return t - ooo_ - 1; }
  void set(int64_t w) {
    if (!has_ || w > w_) {
      w_ = w;
      has_ = true;
    }
  }

 private:
  int64_t ooo_;
  int64_t w_ = kNoWatermark;
  bool has_ = false;
};

/// One input partition (a source split, a Kafka partition): its own max event time.
struct PartitionState {
  int64_t id = 0;
  int64_t max_ts = 0;
  bool has_max = false;
  bool idle = false;
};

/// The operator's input partitions; its watermark is the minimum over the active ones of
/// max_ts - ooo - 1 (Flink's rule). An idle partition stops holding the watermark back and
/// rejoins, without regressing it, when it sends again. Partitions are few: linear scans.
class PartitionSet {
 public:
  size_t index(int64_t id) {
    for (size_t p = 0; p < parts_.size(); ++p) {
      if (parts_[p].id == id) return p;
    }
    parts_.push_back(PartitionState{id, 0, false, false});
    return parts_.size() - 1;
  }
  PartitionState& operator[](size_t p) { return parts_[p]; }
  const std::vector<PartitionState>& all() const { return parts_; }
  void assign(const std::vector<PartitionState>& parts) { parts_ = parts; }

  /// Min over the active partitions other than `self` of the watermark each allows
  /// (kEndWatermark if there are none; kNoWatermark if one has no data yet).
  int64_t others_min(size_t self, const Watermark& wm) const {
    int64_t w = kEndWatermark;
    for (size_t p = 0; p < parts_.size(); ++p) {
      if (p == self || parts_[p].idle) continue;
      w = std::min(w, parts_[p].has_max ? wm.candidate(parts_[p].max_ts) : kNoWatermark);
    }
    return w;
  }

  /// A batch from partition `id` begins: the partition rejoins if it was idle. Returns its
  /// index; `cap` is the watermark the other active partitions allow, `pmax` its max event
  /// time so far (kNoWatermark if none). `end_batch` records the new max.
  size_t begin_batch(int64_t id, const Watermark& wm, int64_t& cap, int64_t& pmax) {
    const size_t p = index(id);
    parts_[p].idle = false;
    cap = others_min(p, wm);
    pmax = parts_[p].has_max ? parts_[p].max_ts : kNoWatermark;
    return p;
  }
  /// Rows of partition `id` up to time t went to other engines (the Ray runtime's window
  /// actors): its max rises to t.
  void raise(int64_t id, int64_t t) {
    const size_t p = index(id);
    if (!parts_[p].has_max || t > parts_[p].max_ts) {
      parts_[p].max_ts = t;
      parts_[p].has_max = true;
    }
  }
  void end_batch(size_t p, int64_t pmax) {
    if (pmax > kNoWatermark) {
      parts_[p].max_ts = pmax;
      parts_[p].has_max = true;
    }
  }

  /// The watermark all active partitions allow; false when none is active.
  bool active_min(const Watermark& wm, int64_t& w) const {
    bool any = false;
    w = kEndWatermark;
    for (const auto& q : parts_) {
      if (q.idle) continue;
      any = true;
      w = std::min(w, q.has_max ? wm.candidate(q.max_ts) : kNoWatermark);
    }
    return any;
  }

 private:
  std::vector<PartitionState> parts_;
};

/// Watermark floors for the events of one partition split among several engines (the Ray
/// runtime's window actors, each holding some keys): floor[i] is the largest event time (ns)
/// of the events before event i that an engine accepts, as one engine that saw them all
/// judges them: an event is refused when more than `max_future` (< 0: no guard) ahead of the
/// watermark before it, W = max(wm, min(max - ooo - 1, cap)), where `cap` is the watermark
/// the engine's other partitions allow (kEndWatermark: none holds it back; kNoWatermark: one
/// has no data yet) and `wm` the watermark before the batch (kNoWatermark: none). floor[i] is
/// kNoWatermark where there is no earlier event. `carry` is the largest accepted time over the
/// partition's earlier batches (kNoWatermark: none); returns it after this batch, and sets
/// `wm` to the watermark after it. ts are in units of `unit_ns`; a time out of range (which
/// the engine rejects with its batch) counts for nothing here.
inline int64_t watermark_floors(const int64_t* ts, int64_t unit_ns, int64_t n, int64_t ooo, int64_t max_future, int64_t carry,
                                int64_t cap, int64_t& wm, int64_t* floor) {
  int64_t hi = carry;
  int64_t w = wm;
  const int64_t limit = kMaxAbsTime / unit_ns;
  const auto allow = [&](int64_t top) {
    const int64_t c = std::min(top - ooo - 1, cap);
    if (top > kNoWatermark && c > w && c > kNoWatermark) w = c;
  };
  allow(hi);
  for (int64_t i = 0; i < n; ++i) {
    floor[i] = hi;
    const int64_t raw = ts[i];
    if (raw > limit || raw < -limit) continue;
    const int64_t t = raw * unit_ns;
    if (max_future >= 0 && w > kNoWatermark && t > w + max_future) continue;  // invalid: moves nothing
    if (t > hi) {
      hi = t;
      allow(hi);
    }
  }
  wm = w;
  return hi;
}

}  // namespace pystream
