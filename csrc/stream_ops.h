/// stream_ops.h — small native helpers for the per-row decisions of Python-level operators
/// (pystream/meters.py), so that no operator loops over events in Python.
///
/// EventClock: the per-event watermark of the window engines (max over a partition's events,
/// minus out-of-orderness, capped by the other active partitions; never regressing), with the
/// max_future guard; classifies each event against the watermark *before* it.
/// PairSet: a set of (key, time) pairs with expiry by time, for de-duplication of re-sent
/// readings within a horizon (open addressing; expired pairs are dropped on rehash).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "common.h"
#include "watermark.h"

namespace pystream {

class EventClock {
 public:
  enum : uint8_t { kOnTime = 0, kBehind = 1, kFuture = 2 };

  EventClock(int64_t ooo, int64_t max_future) : wm_(ooo), ooo_(ooo), max_future_(max_future) {
    if (ooo < 0 || ooo > kMaxDuration) fail("max_out_of_orderness must be >= 0 and <= 2^60 ns");
    if (max_future > kMaxDuration) fail("max_future must be <= 2^60 ns");
  }

  /// status[i]: kOnTime (t > W before it), kBehind (t <= W) or kFuture (beyond max_future;
  /// does not move the watermark); before[i]: that W (kNoWatermark before the first). Times
  /// are in units of unit_ns.
  void classify(const int64_t* ts, int64_t unit_ns, int64_t n, int64_t partition, uint8_t* status, int64_t* before) {
    if (unit_ns < 1) fail("unit_ns must be >= 1");
    const int64_t limit = kMaxAbsTime / unit_ns;
    for (int64_t i = 0; i < n; ++i) {
      if (ts[i] < -limit || ts[i] > limit) {
        fail("timestamp " + std::to_string(ts[i]) + " at row " + std::to_string(i) + " is outside the supported range");
      }
    }
    int64_t cap, pmax;
    const size_t p = parts_.begin_batch(partition, wm_, cap, pmax);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t t = ts[i] * unit_ns;
      before[i] = wm_.value();
      if (wm_.has() && max_future_ >= 0 && t > wm_.value() + max_future_) {
        status[i] = kFuture;
        continue;
      }
      status[i] = wm_.has() && t <= wm_.value() ? kBehind : kOnTime;
      pmax = std::max(pmax, t);
      const int64_t cand = std::min(wm_.candidate(pmax), cap);
      if (cand > kNoWatermark) wm_.set(cand);
    }
    parts_.end_batch(p, pmax);
  }

  void set_partition_idle(int64_t partition, bool idle) {
    parts_[parts_.index(partition)].idle = idle;
    int64_t w;
    if (parts_.active_min(wm_, w) && w > kNoWatermark) wm_.set(w);
  }
  /// Events of `partition` up to time t (ns) have been seen elsewhere (an upstream operator's
  /// watermark, passed on as a partition of its own): its max rises to t and it is active.
  void raise_partition(int64_t partition, int64_t t) {
    parts_.raise(partition, t);
    set_partition_idle(partition, false);
  }
  void advance(int64_t w) { wm_.set(w); }
  bool has_watermark() const { return wm_.has(); }
  int64_t watermark() const { return wm_.value(); }
  const std::vector<PartitionState>& partitions() const { return parts_.all(); }
  void restore(bool has_wm, int64_t wm, const std::vector<PartitionState>& parts) {
    wm_ = Watermark(ooo_);
    if (has_wm) wm_.set(wm);
    parts_.assign(parts);
  }

 private:
  Watermark wm_;
  int64_t ooo_, max_future_;
  PartitionSet parts_;
};

class PairSet {
 public:
  PairSet() { rehash(kNoWatermark); }

  /// dup[i] = 1 when (a[i], b[i]) is in the set or earlier in this batch; the others are added.
  /// Pairs with b < keep_from are not added (already expired). A pair is one 16-byte slot (an
  /// empty slot holds b = kEmpty, never a stored time: pairs below the expiry bound, which is
  /// far above it, are not stored), and the slot of the pair kAhead rows on is prefetched:
  /// the live pairs of a 2-hour horizon over 100k meters fill tens of MB, so each probe is
  /// a cache miss that the prefetch overlaps with the rows before it.
  void insert(const int64_t* a, const int64_t* b, int64_t n, uint8_t* dup) {
    constexpr int64_t kAhead = 8;
    for (int64_t i = 0; i < n; ++i) {
      if (2 * (size_ + 1) > static_cast<int64_t>(mask_ + 1)) rehash(expired_before_);
      if (i + kAhead < n) __builtin_prefetch(&slots_[hash(a[i + kAhead], b[i + kAhead]) & mask_]);
      uint64_t h = hash(a[i], b[i]) & mask_;
      dup[i] = 0;
      while (slots_[h].b != kEmpty) {
        if (slots_[h].a == a[i] && slots_[h].b == b[i]) {
          dup[i] = 1;
          break;
        }
        h = (h + 1) & mask_;
      }
      if (!dup[i] && b[i] >= expired_before_) {
        slots_[h] = Slot{a[i], b[i]};
        ++size_;
      }
    }
  }

  /// Forgets pairs with b < cutoff, lazily: they stay in the table until it is rebuilt (when
  /// it fills up), which is harmless because callers never ask for a pair below the cutoff.
  void expire(int64_t cutoff) { expired_before_ = std::max(expired_before_, cutoff); }

  /// Live pairs (a scan: for metrics and tests, not per batch).
  int64_t size() const {
    int64_t live = 0;
    for (const Slot& x : slots_) live += x.b != kEmpty && x.b >= expired_before_;
    return live;
  }
  int64_t expired_before() const { return expired_before_; }
  int64_t capacity() const { return static_cast<int64_t>(mask_ + 1); }

  void items(std::vector<int64_t>& a, std::vector<int64_t>& b) const {
    for (const Slot& x : slots_) {
      if (x.b != kEmpty && x.b >= expired_before_) {
        a.push_back(x.a);
        b.push_back(x.b);
      }
    }
  }

  void assign(const std::vector<int64_t>& a, const std::vector<int64_t>& b, int64_t expired_before) {
    if (a.size() != b.size()) fail("corrupt snapshot: pair arrays differ in length");
    uint64_t cap = 1024;
    while (cap < 2 * a.size() + 2) cap <<= 1;
    size_ = 0;
    mask_ = cap - 1;
    slots_.assign(cap, Slot{0, kEmpty});
    expired_before_ = expired_before;
    std::vector<uint8_t> dup(a.size());
    insert(a.data(), b.data(), static_cast<int64_t>(a.size()), dup.data());
  }

 private:
  struct Slot {
    int64_t a, b;
  };
  static constexpr int64_t kEmpty = std::numeric_limits<int64_t>::min();
  static_assert(kEmpty < kNoWatermark, "an empty slot's marker must lie below every expiry bound");

  static uint64_t hash(int64_t a, int64_t b) {
    uint64_t h = static_cast<uint64_t>(a) * 0x9e3779b97f4a7c15ULL ^ (static_cast<uint64_t>(b) + 0x632be59bd9b4e019ULL);
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ULL;
    return h ^ (h >> 32);
  }

  /// Rebuilds the table without the pairs below keep_from, sized to 4x the live pairs (so it
  /// grows with the live set and shrinks again when pairs expire, never with time alone).
  void rehash(int64_t keep_from) {
    std::vector<Slot> old = std::move(slots_);
    int64_t live = 0;
    for (const Slot& x : old) live += x.b != kEmpty && x.b >= keep_from;
    uint64_t cap = 1024;
    while (cap < 4 * static_cast<uint64_t>(live + 1)) cap <<= 1;
    slots_.assign(cap, Slot{0, kEmpty});
    mask_ = cap - 1;
    size_ = 0;
    for (const Slot& x : old) {
      if (x.b == kEmpty || x.b < keep_from) continue;
      uint64_t g = hash(x.a, x.b) & mask_;
      while (slots_[g].b != kEmpty) g = (g + 1) & mask_;
      slots_[g] = x;
      ++size_;
    }
  }

  std::vector<Slot> slots_;
  uint64_t mask_ = 0;
  int64_t size_ = 0;
  int64_t expired_before_ = kNoWatermark;
};

}  // namespace pystream
