/// calendar_engine.h — keyed tumbling windows with calendar bounds (local days, weeks,
/// months) in IANA time zones, one zone per key.
///
/// A zone is a sorted table of window bounds in UTC ns, precomputed in Python from the IANA
/// database (windows.Calendar): window j = [bounds[j], bounds[j+1]), so a local day is 23 h
/// or 25 h across DST and a month has its real length. Looking a timestamp up is O(1): time
/// is cut into buckets of 2^45 ns (9.77 h), shorter than any calendar window, so each bucket
/// holds at most one bound and stores the window of its start plus that bound.
///
/// Semantics are the time windows' (window_engine.h): per-event watermark W = max_ts - ooo - 1
/// over active partitions; a window fires when W >= end - 1; an event is late when
/// end - 1 + lateness <= W (judged before the event); updates within allowed lateness fire
/// again with update=True; max_future guard; early firings. Events are processed in segments
/// between watermark boundaries exactly as there, so results do not depend on batch size.
/// Firings come in order of window end; rows of one end (even from different zones) in the
/// order in which their keys first appeared.
///
/// Layout: each key belongs to one zone (its first event's). Its state rows are key-major:
/// row(slot, pos) = (slot * C + pos) * row_bytes with pos = window & (C - 1), and each zone
/// keeps its own live window range [base, top) and next window to fire; C (a power of two)
/// covers the widest live range of any zone and grows by doubling. An event whose zone
/// differs from its key's goes to the invalid output (reason code 1); its time still moves
/// the watermark, as every event the max_future guard accepts does.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "agg_layout.h"
#include "common.h"
#include "key_index.h"
#include "watermark.h"
#include "window_engine.h"

namespace pystream {

/// Window bounds of one time zone with O(1) lookup (see the header note).
class ZoneBounds {
 public:
  static constexpr int kShift = 45;

  explicit ZoneBounds(std::vector<int64_t> bounds) : b_(std::move(bounds)) {
    if (b_.size() < 2) fail("calendar bounds: need at least two bounds");
    for (size_t j = 1; j < b_.size(); ++j) {
      if (b_[j] - b_[j - 1] <= (int64_t{1} << kShift)) {
        fail("calendar bounds must increase by more than 2^45 ns (9.77 h); bounds " + std::to_string(j - 1) + " and " +
             std::to_string(j) + " are " + std::to_string(b_[j - 1]) + " and " + std::to_string(b_[j]));
      }
    }
    if (b_.front() < -kMaxAbsTime || b_.back() > kMaxAbsTime) fail("calendar bounds outside the supported time range");
    lo_ = b_.front();
    const int64_t nb = ((b_.back() - lo_) >> kShift) + 1;
    first_.resize(static_cast<size_t>(nb));
    next_.resize(static_cast<size_t>(nb));
    size_t j = 0;
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t start = lo_ + (b << kShift);
      while (j + 1 < b_.size() && b_[j + 1] <= start) ++j;
      first_[static_cast<size_t>(b)] = static_cast<int32_t>(j);
      next_[static_cast<size_t>(b)] = j + 1 < b_.size() ? b_[j + 1] : std::numeric_limits<int64_t>::max();
    }
  }

  bool covers(int64_t t) const { return t >= b_.front() && t < b_.back(); }
  /// Window of a covered t.
  int64_t window_of(int64_t t) const {
    const size_t b = static_cast<size_t>((t - lo_) >> kShift);
    return first_[b] + (t >= next_[b]);
  }
  int64_t windows() const { return static_cast<int64_t>(b_.size()) - 1; }
  int64_t start(int64_t j) const { return b_[static_cast<size_t>(j)]; }
  /// End of window j; windows past the table never end.
  int64_t end(int64_t j) const { return j < windows() ? b_[static_cast<size_t>(j) + 1] : kEndWatermark + 1; }
  /// First window whose end - 1 is above w.
  int64_t first_window_after(int64_t w) const {
    const int64_t k = std::upper_bound(b_.begin() + 1, b_.end(), w + 1) - b_.begin();
    return k - 1;
  }
  int64_t first() const { return b_.front(); }
  int64_t last() const { return b_.back(); }

 private:
  std::vector<int64_t> b_;
  int64_t lo_ = 0;
  std::vector<int32_t> first_;
  std::vector<int64_t> next_;
};

struct CalendarSpec {
  int64_t ooo = 0, lateness = 0, max_future = -1, out_div = 1, early_every = 0;
  bool keyed = true;
};

class CalendarEngine {
 public:
  static constexpr uint8_t kReasonFuture = 0, kReasonZone = 1;

  CalendarEngine(const CalendarSpec& spec, const std::vector<AggSpec>& aggs) : spec_(spec), wm_(spec.ooo), layout_(aggs, 0) {
    if (spec.ooo < 0 || spec.ooo > kMaxDuration) fail("max_out_of_orderness must be >= 0 and <= 2^60 ns");
    if (spec.lateness < 0 || spec.lateness > kMaxDuration) fail("allowed_lateness must be >= 0 and <= 2^60 ns");
    if (spec.max_future > kMaxDuration) fail("max_future must be <= 2^60 ns");
    if (spec.out_div < 1) fail("out_div must be >= 1");
    if (spec.early_every < 0 || spec.early_every > kMaxDuration) fail("early_every must be >= 0 and <= 2^60 ns");
    if (!spec.keyed) nslots_ = 1;
    reshape(kInitialRing, spec.keyed ? 1024 : 1);
    if (!spec.keyed) zone_of_slot_.assign(1, -1);
  }

  /// Registers a zone's bounds; returns its id (zones are numbered in order of addition).
  int32_t add_zone(std::vector<int64_t> bounds) {
    zones_.emplace_back(std::move(bounds));
    Ring r;
    r.next_fire = wm_.has() ? zones_.back().first_window_after(wm_.value()) : 0;
    rings_.push_back(r);
    used_.emplace_back(static_cast<size_t>(ring_cap_), 0);
    zone_slots_.emplace_back();
    if (wm_.has()) recompute_boundary();
    return static_cast<int32_t>(zones_.size() - 1);
  }

  int64_t num_zones() const { return static_cast<int64_t>(zones_.size()); }
  bool has_watermark() const { return wm_.has(); }
  int64_t watermark() const { return wm_.value(); }
  int64_t num_keys() const { return spec_.keyed ? keys_.size() : 0; }
  /// Whether key k has state here (for queries; never adds it).
  bool has_key(int64_t k) const { return keys_.contains(k); }
  int64_t ring_capacity() const { return ring_cap_; }
  int64_t state_bytes() const { return row_bytes_ * ring_cap_ * slot_cap_; }
  /// All state rows (rows not in use hold init state), for scans such as live handles.
  const uint8_t* state_data() const { return storage_.data(); }
  int64_t state_rows() const { return ring_cap_ * slot_cap_; }
  const RowLayout& layout() const { return layout_; }
  /// Windows (per zone) that hold data and have not fired on time yet.
  int64_t open_windows() const {
    int64_t n = 0;
    for (const Ring& r : rings_) n += std::max<int64_t>(0, r.top - std::max(wm_.has() ? r.next_fire : r.base, r.base));
    return n;
  }
  const std::vector<PartitionState>& partitions() const { return parts_.all(); }

  /// One batch in arrival order. zone[i] is the zone of row i (null: every row in zone 0).
  /// The batch is validated before any state changes. `floor`: as WindowEngine::process's
  /// (the partition's events before each one that went to other engines), or null.
  void process(const int64_t* keys, const int64_t* ts, int64_t unit_ns, const int32_t* zone,
               const std::vector<const double*>& values, int64_t n, EmitBuffer& out, int64_t partition = 0,
               const int64_t* floor = nullptr) {
    if (zones_.empty()) fail("calendar engine has no time zone");
    check_batch(layout_, flushed_, values, ts, n, unit_ns);
    const int64_t nz = num_zones();
    for (int64_t i = 0; i < n; ++i) {
      const int32_t z = zone ? zone[i] : 0;
      if (z < 0 || z >= nz) fail("zone id " + std::to_string(z) + " at row " + std::to_string(i) + " is not registered");
      if (!zones_[static_cast<size_t>(z)].covers(ts[i] * unit_ns)) {
        fail("timestamp " + std::to_string(ts[i]) + " at row " + std::to_string(i) + " is outside the calendar table (" +
             std::to_string(zones_[static_cast<size_t>(z)].first()) + " .. " + std::to_string(zones_[static_cast<size_t>(z)].last()) +
             " ns)");
      }
    }
    prepare_out(out);
    slots_.resize(static_cast<size_t>(n));
    status_.resize(static_cast<size_t>(n));
    rows_idx_.resize(static_cast<size_t>(n));
    if (spec_.keyed) {
      keys_.intern(keys, n, slots_.data());
      const int64_t before = nslots_;
      nslots_ = keys_.size();
      zone_of_slot_.resize(static_cast<size_t>(nslots_), -1);
      if (nslots_ > slot_cap_) reshape(ring_cap_, std::max<int64_t>({nslots_, slot_cap_ + slot_cap_ / 2, 1024}));
      if (nslots_ > before) {
        // A key's zone is that of its first row.
        for (int64_t i = 0; i < n; ++i) {
          const int32_t s = slots_[i];
          if (s >= before && zone_of_slot_[s] < 0) {
            zone_of_slot_[s] = zone ? zone[i] : 0;
            zone_slots_[static_cast<size_t>(zone_of_slot_[s])].push_back(s);
          }
        }
      }
    } else {
      std::fill(slots_.begin(), slots_.end(), 0);
      if (zone_of_slot_[0] < 0) {
        zone_of_slot_[0] = 0;
        zone_slots_[0].push_back(0);
      }
    }
    values_ = &values;
    ts_ = ts;
    part_ = parts_.index(partition);
    parts_[part_].idle = false;
    cap_ = parts_.others_min(part_, wm_);
    int64_t pmax = parts_[part_].has_max ? parts_[part_].max_ts : kNoWatermark;

    int64_t a = 0;  // start of the current segment
    int64_t rejected = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t t = ts[i] * unit_ns;
      if (floor && floor[i] > pmax) {
        // Events of this partition before this one went to other engines: the watermark
        // they allow comes first.
        pmax = floor[i];
        watermark_before(i, std::min(wm_.candidate(pmax), cap_), a, rejected, out);
      }
      if (wm_.has() && spec_.max_future >= 0 && t > wm_.value() + spec_.max_future) {
        reject(i, kReasonFuture, out);
        ++rejected;
        continue;
      }
      // Every event the future guard accepts moves the watermark, its zone right or wrong:
      // the watermark is the partition's progress in event time (made at the source, as in
      // Flink), so it does not hang on which rows a window takes.
      pmax = std::max(pmax, t);
      watermark_before(i, std::min(wm_.candidate(pmax), cap_), a, rejected, out);
      const int32_t slot = slots_[i];
      const int32_t z = zone_of_slot_[slot];
      if (zone && zone[i] != z) {
        reject(i, kReasonZone, out);
        ++rejected;
        continue;
      }
      // This event is on time for its window, which ends after the watermark it makes + 1.
      const ZoneBounds& zb = zones_[static_cast<size_t>(z)];
      const int64_t j = zb.window_of(t);
      const int64_t fire = zb.end(j) - 1;
      const int64_t W = wm_.value();
      if (wm_.has() && fire + spec_.lateness <= W) {
        status_[i] = kLate;
        out.late_rows.push_back(i);
        ++rejected;
        continue;
      }
      if (wm_.has() && fire <= W) {
        dirty_.push_back(Dirty{zb.end(j), slot, z, j});
        next_boundary_ = std::min(next_boundary_, fire + spec_.lateness);
      }
      Ring& r = rings_[static_cast<size_t>(z)];
      if (r.base == r.top || j < r.base || j >= r.top) {
        const int64_t nb = r.base == r.top ? j : std::min(r.base, j), nt = r.base == r.top ? j + 1 : std::max(r.top, j + 1);
        if (nt - nb > ring_cap_) {
          if (nt - nb > kMaxRingWindows) {
            fail("open calendar windows of one zone span " + std::to_string(nt - nb) + " windows; at most " +
                 std::to_string(kMaxRingWindows) + " are supported (is a partition holding the watermark back?)");
          }
          close_segment(i, a, rejected);  // pending row indices assume the current layout
          int64_t cap = ring_cap_;
          while (cap < nt - nb) cap <<= 1;
          reshape(cap, slot_cap_);
        }
        r.base = nb;
        r.top = nt;
        next_boundary_ = std::min(next_boundary_, cleanup(z, r.base));
      }
      const int64_t pos = j & (ring_cap_ - 1);
      used_[static_cast<size_t>(z)][static_cast<size_t>(pos)] = 1;
      rows_idx_[i] = static_cast<int64_t>(slot) * ring_cap_ + pos;
      status_[i] = kAccepted;
      if (early_pending_) {
        close_segment(i + 1, a, rejected);
        emit_early(out);
      }
    }
    aggregate(a, n, rejected == 0);
    emit_dirty(out);
    if (pmax > kNoWatermark) {
      parts_[part_].max_ts = pmax;
      parts_[part_].has_max = true;
    }
    values_ = nullptr;
    ts_ = nullptr;
  }

  /// The pending events [a, end) are aggregated (all accepted where none was rejected), and
  /// the next segment starts at end.
  void close_segment(int64_t end, int64_t& a, int64_t& rejected) {
    aggregate(a, end, rejected == 0);
    a = end;
    rejected = 0;
  }

  /// The watermark moves to `cand` before event i: the first watermark begins, or windows
  /// fire where it crosses the next boundary, after the pending events [a, i) are aggregated.
  void watermark_before(int64_t i, int64_t cand, int64_t& a, int64_t& rejected, EmitBuffer& out) {
    if (!wm_.has()) {
      if (cand <= kNoWatermark) return;
      close_segment(i, a, rejected);
      begin_watermark(cand, out);
    } else if (cand > wm_.value()) {
      if (cand >= next_boundary_) {
        close_segment(i, a, rejected);
        step(cand, out);
      } else {
        wm_.set(cand);
      }
    }
  }

  void advance_watermark(int64_t w, EmitBuffer& out) {
    prepare_out(out);
    if (flushed_) return;
    if (w < -kMaxAbsTime - kMaxDuration || w > kMaxAbsTime) fail("watermark " + std::to_string(w) + " ns is out of range");
    if (!wm_.has()) {
      begin_watermark(w, out);
    } else if (w > wm_.value()) {
      if (w >= next_boundary_) {
        step(w, out);
      } else {
        wm_.set(w);
      }
    }
    if (early_pending_) emit_early(out);
  }

  /// Rows of `partition` up to time t (ns) went to other engines (the Ray runtime's window
  /// actors tell each other their partitions' maxima): its max rises to t and it is active,
  /// as if those rows had come here, which may advance the watermark and fire.
  void raise_partition(int64_t partition, int64_t t, EmitBuffer& out) {
    parts_.raise(partition, t);
    set_partition_idle(partition, false, out);
  }

  void set_partition_idle(int64_t partition, bool idle, EmitBuffer& out) {
    prepare_out(out);
    parts_[parts_.index(partition)].idle = idle;
    int64_t w;
    if (parts_.active_min(wm_, w) && w > kNoWatermark) advance_watermark(w, out);
  }

  /// Partial results of open windows holding data (of one key, or of all keys), marked early;
  /// for queries. Changes nothing but scratch buffers.
  void peek(bool one, int64_t key, EmitBuffer& out) {
    prepare_out(out);
    int32_t slot = 0;
    if (one && spec_.keyed) {
      slot = keys_.find(key);
      if (slot < 0) return;
    }
    if (!one) {
      emit_open(true, out);
      return;
    }
    const int32_t z = zone_of_slot_[static_cast<size_t>(slot)];
    if (z < 0) return;
    const Ring& r = rings_[static_cast<size_t>(z)];
    rows_.clear();
    for (int64_t j = std::max(wm_.has() ? r.next_fire : std::numeric_limits<int64_t>::min(), r.base); j < r.top; ++j) {
      const int64_t flat = static_cast<int64_t>(slot) * ring_cap_ + (j & (ring_cap_ - 1));
      if (count_at(flat) > 0) rows_.push_back(OutRow{static_cast<int32_t>(flat), z, j});
    }
    emit_rows(false, true, out);
  }

  void flush(EmitBuffer& out) {
    prepare_out(out);
    if (flushed_) return;
    if (!wm_.has()) {
      begin_watermark(kEndWatermark, out);
    } else {
      step(kEndWatermark, out);
    }
    flushed_ = true;
  }

  struct State {
    std::vector<int64_t> keys;
    std::vector<int32_t> zone_of_slot;
    std::vector<PartitionState> partitions;
    bool has_wm = false, flushed = false;
    int64_t wm = 0, ring_cap = 0, row_bytes = 0, zones = 0;
    std::vector<int64_t> base, top, next_fire;  // per zone
    std::vector<uint8_t> used;                  // per zone x ring position
    std::vector<uint8_t> rows;                  // slots x ring positions, key-major
  };

  State snapshot() const {
    State s;
    s.keys = keys_.keys();
    s.zone_of_slot.assign(zone_of_slot_.begin(), zone_of_slot_.begin() + nslots_);
    s.partitions = parts_.all();
    s.has_wm = wm_.has();
    s.flushed = flushed_;
    s.wm = wm_.value();
    s.ring_cap = ring_cap_;
    s.row_bytes = row_bytes_;
    s.zones = num_zones();
    for (size_t z = 0; z < zones_.size(); ++z) {
      s.base.push_back(rings_[z].base);
      s.top.push_back(rings_[z].top);
      s.next_fire.push_back(rings_[z].next_fire);
      s.used.insert(s.used.end(), used_[z].begin(), used_[z].end());
    }
    const size_t bytes = static_cast<size_t>(nslots_ * ring_cap_ * row_bytes_);
    s.rows.assign(storage_.data(), storage_.data() + bytes);
    return s;
  }

  /// Restores into an engine with the same spec and the same zones added in the same order.
  void restore(const State& s) {
    if (s.row_bytes != row_bytes_) fail("snapshot does not match this operator: different aggregations (state row size)");
    if (s.zones != num_zones()) fail("snapshot does not match this operator: different time zones");
    if (s.ring_cap < 1 || s.ring_cap > 2 * kMaxRingWindows || (s.ring_cap & (s.ring_cap - 1)) != 0) {
      fail("corrupt snapshot: ring capacity");
    }
    const size_t nz = zones_.size();
    if (s.base.size() != nz || s.top.size() != nz || s.next_fire.size() != nz ||
        s.used.size() != nz * static_cast<size_t>(s.ring_cap)) {
      fail("corrupt snapshot: per-zone arrays");
    }
    // Checked before anything changes: a refused snapshot leaves the engine as it was.
    if (!spec_.keyed && !s.keys.empty()) fail("snapshot does not match this operator: keyed state restored into a non-keyed operator");
    const int64_t nslots = spec_.keyed ? static_cast<int64_t>(s.keys.size()) : nslots_;
    if (s.zone_of_slot.size() != static_cast<size_t>(nslots)) fail("corrupt snapshot: key zones");
    if (s.rows.size() != static_cast<size_t>(nslots * s.ring_cap * row_bytes_)) fail("corrupt snapshot: state rows have the wrong size");
    for (int32_t z : s.zone_of_slot) {
      if (z < -1 || z >= static_cast<int32_t>(nz)) fail("corrupt snapshot: key zone out of range");
    }
    for (size_t z = 0; z < nz; ++z) {
      // top >= base, so the unsigned difference is exact (a signed one could overflow)
      if (s.top[z] < s.base[z] || static_cast<uint64_t>(s.top[z]) - static_cast<uint64_t>(s.base[z]) > static_cast<uint64_t>(s.ring_cap)) {
        fail("corrupt snapshot: window range");
      }
    }
    if (spec_.keyed) {
      keys_.assign(s.keys);  // refuses duplicate keys, changing nothing
      nslots_ = keys_.size();
    }
    reshape_empty(s.ring_cap, std::max<int64_t>(nslots_, spec_.keyed ? 1024 : 1));
    if (!s.rows.empty()) std::memcpy(storage_.data(), s.rows.data(), s.rows.size());
    zone_of_slot_ = s.zone_of_slot;
    zone_of_slot_.resize(static_cast<size_t>(std::max<int64_t>(nslots_, 1)), -1);
    for (auto& l : zone_slots_) l.clear();
    for (int64_t slot = 0; slot < nslots_; ++slot) {
      if (zone_of_slot_[slot] >= 0) zone_slots_[static_cast<size_t>(zone_of_slot_[slot])].push_back(static_cast<int32_t>(slot));
    }
    for (size_t z = 0; z < nz; ++z) {
      rings_[z] = Ring{s.base[z], s.top[z], s.next_fire[z]};
      used_[z].assign(s.used.begin() + static_cast<std::ptrdiff_t>(z * s.ring_cap),
                      s.used.begin() + static_cast<std::ptrdiff_t>((z + 1) * s.ring_cap));
    }
    wm_ = Watermark(spec_.ooo);
    if (s.has_wm) wm_.set(s.wm);
    flushed_ = s.flushed;
    parts_.assign(s.partitions);
    next_early_ = s.has_wm ? next_early_after(s.wm) : kNever;
    next_boundary_ = kNever;
    if (s.has_wm) recompute_boundary();
  }

 private:
  static constexpr int64_t kInitialRing = 2;
  static constexpr int64_t kMaxRingWindows = int64_t{1} << 16;
  static constexpr int64_t kNever = std::numeric_limits<int64_t>::max();

  struct Ring {
    int64_t base = 0, top = 0;  // live windows [base, top)
    int64_t next_fire = 0;      // first window not yet fired on time
  };
  struct Dirty {
    int64_t end;
    int32_t slot, zone;
    int64_t window;
    bool operator<(const Dirty& o) const {
      return end != o.end ? end < o.end : (slot != o.slot ? slot < o.slot : window < o.window);
    }
    bool operator==(const Dirty& o) const { return end == o.end && slot == o.slot && window == o.window && zone == o.zone; }
  };
  /// One row to emit: its flat state row (slot * C + pos) and its window.
  struct OutRow {
    int32_t flat;
    int32_t zone;
    int64_t window;
  };

  int64_t cleanup(int32_t z, int64_t j) const { return zones_[static_cast<size_t>(z)].end(j) - 1 + spec_.lateness; }
  int64_t next_early_after(int64_t w) const {
    return spec_.early_every > 0 ? (floor_div(w, spec_.early_every) + 1) * spec_.early_every : kNever;
  }

  void reject(int64_t i, uint8_t reason, EmitBuffer& out) {
    status_[i] = kInvalid;
    out.invalid_rows.push_back(i);
    out.invalid_reason.push_back(reason);
  }

  void prepare_out(EmitBuffer& out) const {
    if (out.cols.size() != col_of_spec_.size()) out.cols.resize(col_of_spec_.size());
    for (size_t s = 0; s < col_of_spec_.size(); ++s) {
      out.cols[s].is_int = col_of_spec_[s] < 0 ? true : cols_[col_of_spec_[s]]->is_int();
    }
  }

  void begin_watermark(int64_t w, EmitBuffer& out) {
    bool any = false;
    for (size_t z = 0; z < zones_.size(); ++z) {
      Ring& r = rings_[z];
      r.next_fire = zones_[z].first_window_after(w);
      if (r.base != r.top) {
        r.next_fire = std::min(r.next_fire, r.base);  // data held back by another partition
        any = true;
      }
    }
    next_early_ = next_early_after(w);
    if (any) {
      step(w, out);
    } else {
      wm_.set(w);
      recompute_boundary();
    }
  }

  void recompute_boundary() {
    next_boundary_ = next_early_;
    for (size_t z = 0; z < zones_.size(); ++z) {
      const Ring& r = rings_[z];
      next_boundary_ = std::min(next_boundary_, zones_[z].end(r.next_fire) - 1);
      if (r.base != r.top) next_boundary_ = std::min(next_boundary_, cleanup(static_cast<int32_t>(z), r.base));
    }
  }

  /// Key-major rows; copies live windows of every key when the ring or the key capacity grows.
  void reshape(int64_t ring_cap, int64_t slot_cap) {
    if (ring_cap * slot_cap > std::numeric_limits<int32_t>::max()) {
      fail("calendar windows: " + std::to_string(slot_cap) + " keys x " + std::to_string(ring_cap) +
           " open windows exceed 2^31 state rows");
    }
    const size_t rb = static_cast<size_t>(row_bytes_);
    HugeBuffer fresh(static_cast<size_t>(ring_cap * slot_cap) * rb);
    uint8_t* data = fresh.data();
    layout_.fill_init(data, ring_cap * slot_cap);
    std::vector<std::vector<uint8_t>> used(zones_.size(), std::vector<uint8_t>(static_cast<size_t>(ring_cap), 0));
    for (size_t z = 0; z < zones_.size(); ++z) {
      const Ring& r = rings_[z];
      for (int64_t j = r.base; j < r.top; ++j) used[z][static_cast<size_t>(j & (ring_cap - 1))] = used_[z][static_cast<size_t>(j & (ring_cap_ - 1))];
      for (int32_t s : zone_slots_[z]) {
        for (int64_t j = r.base; j < r.top; ++j) {
          std::memcpy(data + static_cast<size_t>(s * ring_cap + (j & (ring_cap - 1))) * rb,
                      storage_.data() + static_cast<size_t>(s * ring_cap_ + (j & (ring_cap_ - 1))) * rb, rb);
        }
      }
    }
    storage_ = std::move(fresh);
    used_.swap(used);
    ring_cap_ = ring_cap;
    slot_cap_ = slot_cap;
  }

  void reshape_empty(int64_t ring_cap, int64_t slot_cap) {
    for (auto& r : rings_) r = Ring{};
    for (auto& l : zone_slots_) l.clear();
    ring_cap_ = 1;
    reshape(ring_cap, slot_cap);
  }

  void aggregate(int64_t begin, int64_t end, bool all_accepted) {
    constexpr int64_t kChunk = 4096;
    const StateTable flat = flat_table();
    for (int64_t c = begin; c < end; c += kChunk) {
      const int64_t ce = std::min(end, c + kChunk);
      const uint8_t* __restrict status = status_.data();
      const int64_t* __restrict rows = rows_idx_.data();
      uint8_t* __restrict d = storage_.data();
      const int64_t rb = row_bytes_;
      for (int64_t i = c; i < ce; ++i) {
        if (i + 16 < ce) __builtin_prefetch(d + rows[i + 16] * rb, 1);
        if (!all_accepted && status[i] != kAccepted) continue;
        ++*reinterpret_cast<int64_t*>(d + rows[i] * rb);
      }
      Segment seg{ts_, rows_idx_.data(), status_.data(), c, ce, all_accepted};
      for (size_t s = 0; s < col_of_spec_.size(); ++s) {
        if (col_of_spec_[s] >= 0) cols_[col_of_spec_[s]]->update(flat, seg, (*values_)[s], 0);
      }
    }
  }

  /// The state rows addressed by flat index slot * C + pos.
  StateTable flat_table() const { return StateTable{storage_.data(), row_bytes_, slot_cap_, 0, row_bytes_}; }
  int64_t count_at(int64_t flat) const {
    return *reinterpret_cast<const int64_t*>(storage_.data() + flat * row_bytes_);
  }

  /// The watermark moves to w: pending updates, then on-time firings in order of window end,
  /// then purges of windows past their cleanup time.
  void step(int64_t w, EmitBuffer& out) {
    wm_.set(w);
    emit_dirty(out);
    const size_t nz = zones_.size();
    for (;;) {
      // Each zone's next due window that holds data; empty stretches are skipped.
      int64_t due_end = kNever;
      for (size_t z = 0; z < nz; ++z) {
        Ring& r = rings_[z];
        if (r.base == r.top || r.next_fire >= r.top) {
          r.next_fire = std::max(r.next_fire, zones_[z].first_window_after(w));
          continue;
        }
        // Windows below the live range are empty, but never skip a window that is not due
        // yet: it may still receive on-time events.
        r.next_fire = std::max(r.next_fire, std::min(r.base, zones_[z].first_window_after(w)));
        const int64_t e = zones_[z].end(r.next_fire);
        if (e - 1 <= w) due_end = std::min(due_end, e);
      }
      if (due_end == kNever) break;
      fire_pos_.assign(nz, -1);
      for (size_t z = 0; z < nz; ++z) {
        Ring& r = rings_[z];
        if (r.base != r.top && r.next_fire < r.top && zones_[z].end(r.next_fire) == due_end) {
          fire_pos_[z] = r.next_fire;
          ++r.next_fire;
        }
      }
      emit_windows(fire_pos_, false, false, out);
    }
    if (w >= next_early_) {
      early_pending_ = true;
      next_early_ = next_early_after(w);
    }
    for (size_t z = 0; z < nz; ++z) {
      Ring& r = rings_[z];
      while (r.base < r.top && cleanup(static_cast<int32_t>(z), r.base) <= w) {
        const size_t pos = static_cast<size_t>(r.base & (ring_cap_ - 1));
        if (used_[z][pos] != 0) {
          const size_t rb = static_cast<size_t>(row_bytes_);
          for (int32_t s : zone_slots_[z]) {
            std::memcpy(storage_.data() + (static_cast<size_t>(s) * static_cast<size_t>(ring_cap_) + pos) * rb, init_row_.data(), rb);
          }
          used_[z][pos] = 0;
        }
        ++r.base;
      }
    }
    recompute_boundary();
  }

  /// Emits window win[z] of every zone z with win[z] >= 0 (all ending at the same time):
  /// one row per key holding data, in key first-appearance order.
  void emit_windows(const std::vector<int64_t>& win, bool update, bool early, EmitBuffer& out) {
    rows_.clear();
    int zones_in = 0, only = -1;
    for (size_t z = 0; z < win.size(); ++z) {
      if (win[z] >= 0 && used_[z][static_cast<size_t>(win[z] & (ring_cap_ - 1))] != 0) {
        ++zones_in;
        only = static_cast<int>(z);
      }
    }
    if (zones_in == 0) return;
    auto take = [&](int32_t s, int32_t z) {
      const int64_t flat = static_cast<int64_t>(s) * ring_cap_ + (win[static_cast<size_t>(z)] & (ring_cap_ - 1));
      if (count_at(flat) > 0) rows_.push_back(OutRow{static_cast<int32_t>(flat), z, win[static_cast<size_t>(z)]});
    };
    if (zones_in == 1) {
      for (int32_t s : zone_slots_[static_cast<size_t>(only)]) take(s, only);
    } else {
      for (int64_t s = 0; s < nslots_; ++s) {
        const int32_t z = zone_of_slot_[s];
        if (z >= 0 && win[static_cast<size_t>(z)] >= 0 && used_[z][static_cast<size_t>(win[z] & (ring_cap_ - 1))] != 0) {
          take(static_cast<int32_t>(s), z);
        }
      }
    }
    emit_rows(update, early, out);
  }

  void emit_rows(bool update, bool early, EmitBuffer& out) {
    const size_t nr = rows_.size();
    if (nr == 0) return;
    flat_.resize(nr);
    for (size_t r = 0; r < nr; ++r) {
      const OutRow& o = rows_[r];
      const ZoneBounds& zb = zones_[static_cast<size_t>(o.zone)];
      if (spec_.keyed) out.key.push_back(keys_.keys()[static_cast<size_t>(o.flat / ring_cap_)]);
      out.start.push_back(zb.start(o.window) / spec_.out_div);
      out.end.push_back(zb.end(o.window) / spec_.out_div);
      flat_[r] = o.flat;
    }
    out.update.append(nr, update ? 1 : 0);
    out.early.append(nr, early ? 1 : 0);
    const StateTable flat = flat_table();
    const int64_t zero = 0;
    for (size_t s = 0; s < col_of_spec_.size(); ++s) {
      layout_.column_of_spec(s).emit(flat, &zero, 1, flat_.data(), static_cast<int64_t>(nr), out.cols[s]);
    }
  }

  /// Late updates of fired windows: one row per (window, key), in order of window end.
  void emit_dirty(EmitBuffer& out) {
    if (dirty_.empty()) return;
    std::sort(dirty_.begin(), dirty_.end());
    dirty_.erase(std::unique(dirty_.begin(), dirty_.end()), dirty_.end());
    rows_.clear();
    for (const Dirty& d : dirty_) {
      const int64_t flat = static_cast<int64_t>(d.slot) * ring_cap_ + (d.window & (ring_cap_ - 1));
      rows_.push_back(OutRow{static_cast<int32_t>(flat), d.zone, d.window});
    }
    dirty_.clear();
    emit_rows(true, false, out);
  }

  void emit_early(EmitBuffer& out) {
    early_pending_ = false;
    emit_open(false, out);
  }

  /// Speculative results of every open window holding data, in order of window end.
  void emit_open(bool any_watermark, EmitBuffer& out) {
    std::vector<std::pair<int64_t, std::pair<int32_t, int64_t>>> open;  // (end, (zone, window))
    for (size_t z = 0; z < zones_.size(); ++z) {
      const Ring& r = rings_[z];
      const int64_t from = any_watermark && !wm_.has() ? r.base : std::max(r.next_fire, r.base);
      for (int64_t j = from; j < r.top; ++j) {
        if (used_[z][static_cast<size_t>(j & (ring_cap_ - 1))] != 0) open.push_back({zones_[z].end(j), {static_cast<int32_t>(z), j}});
      }
    }
    std::sort(open.begin(), open.end());
    size_t a = 0;
    while (a < open.size()) {
      fire_pos_.assign(zones_.size(), -1);
      size_t b = a;
      while (b < open.size() && open[b].first == open[a].first) {
        fire_pos_[static_cast<size_t>(open[b].second.first)] = open[b].second.second;
        ++b;
      }
      emit_windows(fire_pos_, false, true, out);
      a = b;
    }
  }

  CalendarSpec spec_;
  Watermark wm_;
  KeyIndex keys_;
  int64_t nslots_ = 0;
  std::vector<ZoneBounds> zones_;
  std::vector<Ring> rings_;
  std::vector<std::vector<uint8_t>> used_;       // per zone, per ring position: holds data
  std::vector<std::vector<int32_t>> zone_slots_;  // per zone, its keys in first-appearance order
  std::vector<int32_t> zone_of_slot_;

  RowLayout layout_;
  std::vector<std::unique_ptr<AggColumn>>& cols_ = layout_.cols;
  std::vector<int>& col_of_spec_ = layout_.col_of_spec;
  const int64_t& row_bytes_ = layout_.row_bytes;
  const std::vector<uint8_t>& init_row_ = layout_.init_row;

  HugeBuffer storage_;
  int64_t ring_cap_ = 1, slot_cap_ = 0;
  int64_t next_boundary_ = kNever;
  int64_t next_early_ = kNever;
  bool flushed_ = false;
  bool early_pending_ = false;
  PartitionSet parts_;
  size_t part_ = 0;
  int64_t cap_ = kEndWatermark;
  std::vector<Dirty> dirty_;

  std::vector<int32_t> slots_;
  std::vector<uint8_t> status_;
  std::vector<int64_t> rows_idx_;
  std::vector<OutRow> rows_;
  std::vector<int32_t> flat_;
  std::vector<int64_t> fire_pos_;
  const std::vector<const double*>* values_ = nullptr;
  const int64_t* ts_ = nullptr;
};

}  // namespace pystream
