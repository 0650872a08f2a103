/// window_engine.h — keyed event-time window operator over slices (tumbling and sliding).
///
/// Semantics (DESIGN.md, Flink's): windows [s, e) aligned to `offset`, size `size`, every
/// `slide`; watermark W = max_ts - ooo - 1, never regressing; window fires when W >= e - 1;
/// an event is late for a window when e - 1 + lateness <= W, judged against the watermark
/// *before* that event; late-for-all-windows events go to the late output; a window's
/// state is purged once W >= e - 1 + lateness. Events more than `max_future` ahead of the
/// watermark go to the invalid output and do not move it.
///
/// Slicing (Li et al. 2005 "No pane, no gain"; Flink's SliceAssigners): time is cut into
/// slices of g = gcd(size, slide); window j covers slices [j*r, j*r + m) with r = slide/g,
/// m = size/g. Each event updates exactly one slice accumulator of its key; a window
/// combines its m slices when it fires, so overlap costs nothing per event.
///
/// Batch processing is a sequence of segments. A classification pass walks events in arrival
/// order, maintaining W per event, and stops where the watermark crosses the next boundary
/// (the next window end - 1, or the next slice cleanup time). The segment before it is then
/// aggregated (one kernel pass per aggregation) and `step` fires and purges exactly as a
/// per-event engine would at that point. The event that crossed the boundary is never late
/// and never in a window that fires at that point (its windows end after it), so firing
/// before inserting it is exact. Hence on-time firings do not depend on batch size at all;
/// late updates within one batch coalesce into one emission per (key, window).
///
/// Ring span: live slices run from the oldest not-yet-purged (cleanup > W) to the newest
/// accepted event (<= W + ooo + 1), so the ring holds at most (ooo + lateness + size)/g + 2
/// slices, whatever the disorder; it grows by doubling when that span grows.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "agg_layout.h"
#include "common.h"
#include "key_index.h"
#include "watermark.h"

namespace pystream {

struct WindowSpec {
  int64_t size = 0, slide = 0, offset = 0;
  int64_t ooo = 0;          // bounded out-of-orderness
  int64_t lateness = 0;     // allowed lateness
  int64_t max_future = -1;  // < 0: no guard
  bool keyed = true;
  int64_t out_div = 1;  // window bounds are output as ns / out_div (the input's time unit)
  int64_t early_every = 0;  // > 0: speculative firings of open windows at this event-time interval
};

/// What one call produced: fired rows (columnar) and the batch rows that went to side outputs.
struct EmitBuffer {
  OutBuf<int64_t> key, start, end;
  OutBuf<uint8_t> update;
  OutBuf<uint8_t> early;  // speculative (final=False) rows; only filled with early_every
  std::vector<OutColumn> cols;  // one per aggregation spec, in spec order
  OutBuf<int64_t> late_rows, invalid_rows;
  OutBuf<uint8_t> invalid_reason;  // per invalid row, where an engine has several reasons
};

struct EngineState {
  std::vector<int64_t> keys;
  std::vector<PartitionState> partitions;
  bool has_wm = false, flushed = false;
  int64_t wm = 0, next_fire = 0, next_boundary = 0, base = 0, top = 0;
  std::vector<uint8_t> slice_used;
  int64_t row_bytes = 0;
  std::vector<uint8_t> rows;  // state rows of slices [base, top) x slots [0, keys), slice-major
};

enum : uint8_t { kAccepted = 0, kLate = 1, kInvalid = 2 };

class WindowEngine {
 public:
  WindowEngine(const WindowSpec& spec, const std::vector<AggSpec>& aggs)
      : spec_(spec), wm_(spec.ooo), layout_(aggs, 0) {
    if (spec.size <= 0 || spec.size > kMaxDuration) fail("window size must be > 0 and <= 2^60 ns, got " + std::to_string(spec.size));
    if (spec.slide <= 0 || spec.slide > spec.size) {
      fail("slide must be > 0 and <= size, got slide=" + std::to_string(spec.slide) + " size=" + std::to_string(spec.size));
    }
    if (spec.ooo < 0 || spec.ooo > kMaxDuration) fail("max_out_of_orderness must be >= 0 and <= 2^60 ns, got " + std::to_string(spec.ooo));
    if (spec.lateness < 0 || spec.lateness > kMaxDuration) fail("allowed_lateness must be >= 0 and <= 2^60 ns, got " + std::to_string(spec.lateness));
    if (spec.out_div < 1) fail("out_div must be >= 1");
    if (spec.early_every < 0 || spec.early_every > kMaxDuration) fail("early_every must be >= 0 and <= 2^60 ns");
    if (spec.max_future > kMaxDuration) fail("max_future must be <= 2^60 ns, got " + std::to_string(spec.max_future));
    spec_.offset = floor_mod(spec.offset, spec.slide);
    g_ = gcd64(spec.size, spec.slide);
    r_ = spec.slide / g_;
    m_ = spec.size / g_;
    // Each window combines m slices when it fires and each event may touch size/slide windows:
    // refuse geometries whose per-window work could not finish, instead of hanging.
    if (m_ > kMaxSlicesPerWindow) {
      fail("window size / gcd(size, slide) = " + std::to_string(m_) + " slices per window; at most " +
           std::to_string(kMaxSlicesPerWindow) + " are supported (size=" + std::to_string(spec.size) +
           " ns, slide=" + std::to_string(spec.slide) + " ns); choose a slide that divides the size more evenly");
    }
    if ((spec.ooo + spec.lateness) / g_ > kMaxRingSlices) {
      fail("max_out_of_orderness + allowed_lateness span " + std::to_string((spec.ooo + spec.lateness) / g_) +
           " slices of " + std::to_string(g_) + " ns; at most " + std::to_string(kMaxRingSlices) +
           " open slices are supported: use a coarser window slide or less lateness");
    }
    slicer_ = SliceIndexer(g_, spec_.offset);
    windower_ = SliceIndexer(spec.slide, spec_.offset);
    nslots_ = spec.keyed ? 0 : 1;
    reshape(kInitialRing, spec.keyed ? 0 : 1);
  }

  const WindowSpec& spec() const { return spec_; }
  int64_t slice_width() const { return g_; }
  bool has_watermark() const { return wm_.has(); }
  int64_t watermark() const { return wm_.value(); }
  int64_t num_keys() const { return spec_.keyed ? keys_.size() : 0; }
  /// Whether key k has state here (for queries; never adds it).
  bool has_key(int64_t k) const { return keys_.contains(k); }
  int64_t ring_capacity() const { return ring_cap_; }
  int64_t live_slices() const { return top_ - base_; }
  /// Windows that hold data and have not fired on time yet.
  int64_t open_windows() const {
    if (base_ >= top_) return 0;
    const int64_t first = std::max(wm_.has() ? next_fire_ : std::numeric_limits<int64_t>::min(), floor_div(base_ - m_, r_) + 1);
    return std::max<int64_t>(0, floor_div(top_ - 1, r_) - first + 1);
  }
  bool flushed() const { return flushed_; }
  /// Bytes of window state currently allocated (all aggregations, including the count).
  int64_t state_bytes() const { return row_bytes_ * ring_cap_ * slot_cap_; }
  /// All state rows (rows not in use hold init state), for scans such as live handles.
  const uint8_t* state_data() const { return storage_.data(); }
  int64_t state_rows() const { return ring_cap_ * slot_cap_; }
  const RowLayout& layout() const { return layout_; }
  /// Bytes of state per key per slice (all aggregations in one row).
  int64_t row_bytes() const { return row_bytes_; }

  /// Processes one batch in arrival order. `keys` is ignored when not keyed. `ts` holds event
  /// times in units of `unit_ns` nanoseconds (1 for ns, 1e6 for ms); they are scaled in the
  /// classification pass, so no converted copy is ever made. values[i] is the value column of
  /// aggregation spec i (may be null for count). The whole batch is validated before any state
  /// changes, so a rejected batch leaves the engine as it was.
  ///
  /// `floor` (may be null): per event, the largest event time (ns) of the events of this
  /// partition that came before it but went to other engines (kNoWatermark: none), for an
  /// engine that holds some of a partition's keys (the Ray runtime's window actors). Before
  /// each event the watermark moves to what that floor allows, so every event is judged
  /// against the watermark an engine that saw the whole partition would hold (DESIGN.md:
  /// watermarks per event). Checked by the caller: kNoWatermark or |floor| <= kMaxAbsTime.
  void process(const int64_t* keys, const int64_t* ts, int64_t unit_ns, const std::vector<const double*>& values, int64_t n,
               EmitBuffer& out, int64_t partition = 0, const int64_t* floor = nullptr, int64_t floor_max = kNoWatermark) {
    process_checked(keys, ts, unit_ns, values, n, out, check_batch(layout_, flushed_, values, ts, n, unit_ns), partition,
                    floor, floor_max);
  }

  /// `process` of a batch that check_batch has passed (against this engine, not flushed since):
  /// `batch_max` is what it returned, or more (it only sizes the output). For a caller that
  /// checks several batches before any changes state (the Ray runtime's turns).
  void process_checked(const int64_t* keys, const int64_t* ts, int64_t unit_ns, const std::vector<const double*>& values,
                       int64_t n, EmitBuffer& out, int64_t batch_max, int64_t partition = 0,
                       const int64_t* floor = nullptr, int64_t floor_max = kNoWatermark) {
    prepare_out(out);
    reserve_out(out, n);
    slots_.resize(static_cast<size_t>(n));
    status_.resize(static_cast<size_t>(n));
    rows_idx_.resize(static_cast<size_t>(n));  // stale entries stay within the table, which only grows
    if (spec_.keyed) {
      keys_.intern(keys, n, slots_.data());
      nslots_ = keys_.size();
      if (nslots_ > slot_cap_) reshape(ring_cap_, std::max<int64_t>({nslots_, slot_cap_ + slot_cap_ / 2, 1024}));
    } else {
      std::fill(slots_.begin(), slots_.end(), 0);
    }
    values_ = &values;
    ts_ = ts;
    // This batch's partition: it rejoins if it was idle; the others cap the watermark.
    part_ = parts_.index(partition);
    parts_[part_].idle = false;
    cap_ = parts_.others_min(part_, wm_);
    int64_t pmax = parts_[part_].has_max ? parts_[part_].max_ts : kNoWatermark;
    if (n > 0) reserve_fires(std::min(wm_.candidate(std::max({pmax, batch_max * unit_ns, floor_max})), cap_), out);

    int64_t a = 0;  // start of the current segment
    int64_t rejected = 0;
    int64_t i = 0;
    while (i < n) {
      i = floor ? classify_fast<true>(ts, unit_ns, floor, i, n, pmax) : classify_fast<false>(ts, unit_ns, floor, i, n, pmax);
      if (i >= n) break;
      const int64_t t = ts[i] * unit_ns;
      if (floor && floor[i] > pmax) {
        // Events of this partition before this one went to other engines: the watermark
        // they allow comes first, firing (or beginning) as it would have there.
        pmax = floor[i];
        watermark_before(i, std::min(wm_.candidate(pmax), cap_), a, rejected, out);
      }
      if (wm_.has() && spec_.max_future >= 0 && t > wm_.value() + spec_.max_future) {
        // Poison guard, judged against the watermark before this event.
        status_[i] = kInvalid;
        out.invalid_rows.push_back(i);
        ++rejected;
        ++i;
        continue;
      }
      pmax = std::max(pmax, t);
      // Event i is on time for all its windows, which all end after the watermark it makes + 1.
      watermark_before(i, std::min(wm_.candidate(pmax), cap_), a, rejected, out);
      const int64_t W = wm_.value();
      const int64_t k = slicer_.slice_of(t);
      const int64_t jhi = r_ == 1 ? k : windower_.slice_of(t);
      if (window_end(jhi) - 1 + spec_.lateness <= W) {
        status_[i] = kLate;
        out.late_rows.push_back(i);
        ++rejected;
        ++i;
        continue;
      }
      if (t <= W) mark_dirty(t, jhi, slots_[i]);  // (an early firing never waits on a late event)
      if (ring_must_grow(k)) {
        // Row indices of the pending events assume the current layout: aggregate them first.
        close_segment(i, a, rejected);
      }
      insert_slice(k);
      rows_idx_[i] = (k & (ring_cap_ - 1)) * slot_cap_ + slots_[i];
      status_[i] = kAccepted;
      ++i;
      if (early_pending_) {
        close_segment(i, a, rejected);
        emit_early(out);
      }
    }
    aggregate(a, n, rejected == 0);
    emit_dirty(out);
    if (pmax > kNoWatermark) {
      parts_[part_].max_ts = pmax;
      parts_[part_].has_max = true;
    }
    if (n > 0) rows_per_event_ = 0.5 * rows_per_event_ + 0.5 * static_cast<double>(out.start.size()) / static_cast<double>(n);
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

  /// The watermark moves to `cand` before event i: the first watermark begins (events may
  /// have arrived while another partition held it back), or windows fire and slices purge
  /// where it crosses the next boundary, after the pending events [a, i) are aggregated.
  void watermark_before(int64_t i, int64_t cand, int64_t& a, int64_t& rejected, EmitBuffer& out) {
    if (!wm_.has()) {
      if (cand <= kNoWatermark) return;
      if (base_ != top_) {
        close_segment(i, a, rejected);
      }
      begin_watermark(cand, out);
    } else if (cand >= next_boundary_ && cand > wm_.value()) {
      close_segment(i, a, rejected);
      step(cand, out);
    } else {
      wm_.set(cand);
    }
  }

  /// The common event, with all engine state in registers: above the watermark (so on time
  /// for all its windows: they end after t > W), not crossing the next boundary, into a live
  /// slice. Returns the first event that needs the general path (or n).
  template <bool kFloor>
  int64_t classify_fast(const int64_t* __restrict ts, int64_t unit_ns, const int64_t* __restrict floor, int64_t i, int64_t n,
                        int64_t& pmax) {
    if (!wm_.has()) return i;
    int64_t W = wm_.value();
    int64_t hi = pmax;
    const int64_t cap = cap_;
    const int64_t boundary = next_boundary_, ooo1 = spec_.ooo + 1;
    // Without a guard, any event so far ahead that W + 2^61 < t simply takes the general path.
    const int64_t mf = spec_.max_future < 0 ? 2 * kMaxDuration : spec_.max_future;
    const int64_t base = base_, top = top_, mask = ring_cap_ - 1, scap = slot_cap_;
    const uint64_t origin = static_cast<uint64_t>(slicer_.origin()), origin_slice = static_cast<uint64_t>(slicer_.origin_slice());
    const uint64_t d = slicer_.divider().divisor(), m = slicer_.divider().magic();
    const int32_t* __restrict slots = slots_.data();
    int64_t* __restrict rows = rows_idx_.data();
    uint8_t* __restrict status = status_.data();
    uint8_t* __restrict used = slice_used_.data();
    for (; i < n; ++i) {
      const int64_t t = ts[i] * unit_ns;
      if constexpr (kFloor) {
        const int64_t f = floor[i];
        if (f > hi) {
          const int64_t c = std::min(f - ooo1, cap);
          if (c > W) {
            if (c >= boundary) break;
            W = c;
          }
          hi = f;
        }
      }
      if (t <= W || t > W + mf) break;
      hi = t > hi ? t : hi;
      const int64_t cand = std::min(hi - ooo1, cap);
      if (cand > W) {
        if (cand >= boundary) break;
        W = cand;
      }
      const uint64_t num = static_cast<uint64_t>(t) - origin;
      uint64_t q = d == 1 ? num : static_cast<uint64_t>((static_cast<__uint128_t>(num) * m) >> 64);
      q += (num - q * d >= d);
      const int64_t k = static_cast<int64_t>(origin_slice + q);
      if (k < base || k >= top) break;
      rows[i] = (k & mask) * scap + slots[i];
      status[i] = kAccepted;
      used[k & mask] = 1;
    }
    wm_.set(W);
    pmax = hi;
    return i;
  }

  /// Moves the watermark to at least w (never back), firing and purging as events would.
  /// For idle and quiet inputs, and for processing time.
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

  /// Marks a partition idle (or active). An idle partition no longer holds the watermark
  /// back, so this may advance it and fire windows. Unknown partitions are registered.
  void set_partition_idle(int64_t partition, bool idle, EmitBuffer& out) {
    prepare_out(out);
    parts_[parts_.index(partition)].idle = idle;
    // The watermark the active partitions now allow; with no active partition it stays.
    int64_t w;
    if (parts_.active_min(wm_, w) && w > kNoWatermark) advance_watermark(w, out);
  }

  const std::vector<PartitionState>& partitions() const { return parts_.all(); }

  /// Partial results of the open windows (not yet fired on time) holding data, for queries:
  /// of one key (`one`) or of every key, marked early. Changes nothing but scratch buffers.
  void peek(bool one, int64_t key, EmitBuffer& out) {
    prepare_out(out);
    if (base_ >= top_) return;
    int32_t slot = 0;
    if (one && spec_.keyed) {
      slot = keys_.find(key);
      if (slot < 0) return;
    }
    const size_t before = out.start.size();
    const int64_t first = std::max(wm_.has() ? next_fire_ : std::numeric_limits<int64_t>::min(), floor_div(base_ - m_, r_) + 1);
    for (int64_t j = first; j <= floor_div(top_ - 1, r_); ++j) {
      if (!one) {
        fire_window(j, rows_, false, out);
        continue;
      }
      window_positions(j);
      int64_t c = 0;
      for (int64_t p : pos_) c += count_.at(table_, p, slot);
      if (c == 0) continue;
      rows_.assign(1, slot);
      emit_rows(j, rows_, false, out);
    }
    for (size_t r = before; r < out.start.size(); ++r) out.early[r] = 1;
  }

  /// End of input: the watermark jumps to the end of time, firing every window and purging
  /// all state. Further events are refused.
  void flush(EmitBuffer& out) {
    prepare_out(out);
    if (!flushed_) {
      if (!wm_.has()) {
        begin_watermark(kEndWatermark, out);
      } else {
        step(kEndWatermark, out);
      }
      flushed_ = true;
    }
  }

  EngineState snapshot() const {
    EngineState s;
    s.keys = keys_.keys();
    s.partitions = parts_.all();
    s.has_wm = wm_.has();
    s.flushed = flushed_;
    s.wm = wm_.value();
    s.next_fire = next_fire_;
    s.next_boundary = next_boundary_;
    s.base = base_;
    s.top = top_;
    for (int64_t k = base_; k < top_; ++k) s.slice_used.push_back(slice_used_[k & (ring_cap_ - 1)]);
    s.row_bytes = row_bytes_;
    const size_t slice_bytes = static_cast<size_t>(nslots_ * row_bytes_);
    s.rows.resize(slice_bytes * static_cast<size_t>(top_ - base_));
    for (int64_t k = base_; k < top_; ++k) {
      if (slice_bytes) std::memcpy(s.rows.data() + slice_bytes * static_cast<size_t>(k - base_), table_.row(k & (ring_cap_ - 1), 0), slice_bytes);
    }
    return s;
  }

  /// Restores a snapshot taken from an engine with the same spec. Restore and first start
  /// share the same engine; a restored engine's further output equals the original's.
  void restore(const EngineState& s) {
    if (s.row_bytes != row_bytes_) fail("snapshot does not match this operator: different aggregations (state row size)");
    // top >= base first, so the unsigned difference is exact (a signed one could overflow)
    if (s.top < s.base || s.slice_used.size() != static_cast<uint64_t>(s.top) - static_cast<uint64_t>(s.base)) {
      fail("corrupt snapshot: slice range");
    }
    // Checked before anything changes: a refused snapshot leaves the engine as it was.
    if (!spec_.keyed && !s.keys.empty()) fail("snapshot does not match this operator: keyed state restored into a non-keyed operator");
    const int64_t nslots = spec_.keyed ? static_cast<int64_t>(s.keys.size()) : nslots_;
    if (s.rows.size() != static_cast<size_t>(nslots * row_bytes_) * static_cast<size_t>(s.top - s.base)) {
      fail("corrupt snapshot: state rows have the wrong size");
    }
    if (spec_.keyed) {
      keys_.assign(s.keys);  // refuses duplicate keys, changing nothing
      nslots_ = keys_.size();
    }
    int64_t cap = kInitialRing;
    while (cap < s.top - s.base) cap <<= 1;
    base_ = top_ = 0;
    reshape(cap, std::max<int64_t>(nslots_, spec_.keyed ? 1024 : 1));
    base_ = s.base;
    top_ = s.top;
    wm_ = Watermark(spec_.ooo);
    if (s.has_wm) wm_.set(s.wm);
    flushed_ = s.flushed;
    parts_.assign(s.partitions);
    next_fire_ = s.next_fire;
    next_boundary_ = s.next_boundary;
    next_early_ = s.has_wm ? next_early_after(s.wm) : kNever;
    const size_t slice_bytes = static_cast<size_t>(nslots_ * row_bytes_);
    for (int64_t k = base_; k < top_; ++k) {
      slice_used_[k & (ring_cap_ - 1)] = s.slice_used[k - base_] != 0;
      if (slice_bytes) std::memcpy(table_.row(k & (ring_cap_ - 1), 0), s.rows.data() + slice_bytes * static_cast<size_t>(k - base_), slice_bytes);
    }
  }

 private:
  static constexpr int64_t kInitialRing = 4;
  static constexpr int64_t kMaxSlicesPerWindow = int64_t{1} << 20;
  static constexpr int64_t kMaxRingSlices = int64_t{1} << 20;
  static constexpr int64_t kNever = std::numeric_limits<int64_t>::max();

  int64_t window_start(int64_t j) const { return j * spec_.slide + spec_.offset; }
  int64_t window_end(int64_t j) const { return window_start(j) + spec_.size; }
  /// The last window containing slice k decides when the slice can be dropped.
  int64_t slice_cleanup(int64_t k) const { return window_end(floor_div(k, r_)) - 1 + spec_.lateness; }
  /// First window whose end - 1 is above w.
  int64_t first_window_after(int64_t w) const { return floor_div(w + 1 - spec_.offset - spec_.size, spec_.slide) + 1; }

  void prepare_out(EmitBuffer& out) const {
    if (out.cols.size() != col_of_spec_.size()) out.cols.resize(col_of_spec_.size());
    for (size_t s = 0; s < col_of_spec_.size(); ++s) {
      out.cols[s].is_int = col_of_spec_[s] < 0 ? true : cols_[col_of_spec_[s]]->is_int();
    }
  }

  /// Sizes the output columns for this batch up front (rows per event as in the last batch,
  /// plus a margin), so they do not grow by doubling and copying.
  void reserve_out(EmitBuffer& out, int64_t n) {
    reserve_rows(out, static_cast<size_t>(static_cast<double>(n) * rows_per_event_ * 1.25) + 64);
  }

  /// Room for `want` output rows in every column (growing at least twofold where it grows).
  void reserve_rows(EmitBuffer& out, size_t want) const {
    if (spec_.keyed) out.key.reserve_growing(want);
    out.start.reserve_growing(want);
    out.end.reserve_growing(want);
    out.update.reserve_growing(want);
    out.early.reserve_growing(want);
    for (auto& c : out.cols) {
      if (c.is_int) {
        c.i.reserve_growing(want);
      } else {
        c.f.reserve_growing(want);
      }
    }
  }

  /// Sizes the output for the windows that fire by watermark w (those due that hold live
  /// slices), at the rows a fired window has had lately: at the start of a batch, for the
  /// watermark the batch can reach at most; at each step, for its own. A batch's output is
  /// sized by its rows (reserve_out); but where another partition held the watermark back,
  /// the batch that releases it fires every held window (one by one, as its events move the
  /// watermark): with 2 and 8 partitions, its output grew by doubling, copying 24-37 bytes
  /// per event in all.
  void reserve_fires(int64_t w, EmitBuffer& out) {
    if (!wm_.has() || base_ >= top_ || rows_per_window_ <= 0.0 || w <= wm_.value()) return;
    const int64_t first = std::max(next_fire_, floor_div(base_ - m_, r_) + 1);
    const int64_t last = std::min(first_window_after(w) - 1, floor_div(top_ - 1, r_));
    if (last < first) return;
    reserve_rows(out, out.start.size() +
                          static_cast<size_t>(static_cast<double>(last - first + 1) * rows_per_window_ * 1.125) + 64);
  }

  /// The first watermark. With no data yet, windows count from w on; with data already in the
  /// ring (held back by another partition), firing starts at the first window holding it.
  void begin_watermark(int64_t w, EmitBuffer& out) {
    if (base_ == top_) {
      start_watermark(w);
      return;
    }
    // Windows before the first one holding data are empty; windows after w are not due yet
    // and may still receive events. The first watermark passes no early instant: the next one
    // is above it (without this, a partition holding the watermark back until data had come
    // left early firings off for good).
    next_fire_ = std::min(floor_div(base_ - m_, r_) + 1, first_window_after(w));
    next_early_ = next_early_after(w);
    step(w, out);
  }

  void start_watermark(int64_t w) {
    wm_.set(w);
    next_fire_ = first_window_after(w);
    next_early_ = next_early_after(w);
    next_boundary_ = std::min(window_end(next_fire_) - 1, next_early_);
  }

  /// The first early-firing instant above w (aligned to the epoch), or never.
  int64_t next_early_after(int64_t w) const {
    return spec_.early_every > 0 ? (floor_div(w, spec_.early_every) + 1) * spec_.early_every : kNever;
  }

  /// Records (window, slot) updates for windows of t that already fired but are not purged.
  void mark_dirty(int64_t t, int64_t jhi, int32_t slot) {
    const int64_t W = wm_.value();
    for (int64_t j = jhi; window_end(j) > t && window_start(j) <= t; --j) {
      const int64_t fire = window_end(j) - 1;
      if (fire > W) continue;
      if (fire + spec_.lateness <= W) break;
      dirty_.emplace_back(j, slot);
      // The update must be emitted before this window's cleanup time passes: after that, a
      // slice it shares with a later window may take events that are late for it.
      next_boundary_ = std::min(next_boundary_, fire + spec_.lateness);
    }
  }

  bool ring_must_grow(int64_t k) const {
    return base_ != top_ && std::max(top_, k + 1) - std::min(base_, k) > ring_cap_;
  }

  void insert_slice(int64_t k) {
    if (base_ == top_) {
      base_ = k;
      top_ = k + 1;
      next_boundary_ = std::min(next_boundary_, slice_cleanup(base_));
    } else if (k < base_ || k >= top_) {
      const int64_t nb = std::min(base_, k), nt = std::max(top_, k + 1);
      if (nt - nb > ring_cap_) {
        if (nt - nb > kMaxRingSlices + m_ + 2) {
          // Unreachable by the span bound in the header note; a guard, not a policy.
          fail("open slice span " + std::to_string(nt - nb) + " exceeds the supported " + std::to_string(kMaxRingSlices));
        }
        int64_t cap = ring_cap_;
        while (cap < nt - nb) cap <<= 1;
        reshape(cap, slot_cap_);
      }
      base_ = nb;
      top_ = nt;
      next_boundary_ = std::min(next_boundary_, slice_cleanup(base_));
    }
    // A flag, not a counter: a read-modify-write of the same byte for every event would be
    // a serial store-to-load chain through memory.
    slice_used_[k & (ring_cap_ - 1)] = 1;
  }

  void reshape(int64_t ring_cap, int64_t slot_cap) {
    const size_t rb = static_cast<size_t>(row_bytes_);
    HugeBuffer fresh(static_cast<size_t>(ring_cap * slot_cap) * rb);
    uint8_t* data = fresh.data();
    layout_.fill_init(data, ring_cap * slot_cap);
    const int64_t keep = std::min(slot_cap, slot_cap_);
    for (int64_t k = base_; k < top_ && keep > 0; ++k) {
      std::memcpy(data + static_cast<size_t>((k & (ring_cap - 1)) * slot_cap) * rb, table_.row(k & (ring_cap_ - 1), 0),
                  static_cast<size_t>(keep) * rb);
    }
    storage_ = std::move(fresh);
    table_ = StateTable::position_major(storage_.data(), row_bytes_, slot_cap);
    std::vector<uint8_t> used(static_cast<size_t>(ring_cap), 0);
    for (int64_t k = base_; k < top_; ++k) used[k & (ring_cap - 1)] = slice_used_[k & (ring_cap_ - 1)];
    slice_used_.swap(used);
    ring_cap_ = ring_cap;
    slot_cap_ = slot_cap;
  }

  /// Runs every aggregation over events [begin, end), one pass per aggregation over chunks
  /// small enough that the rows the first pass pulled in are still in L2 for the others.
  void aggregate(int64_t begin, int64_t end, bool all_accepted) {
    constexpr int64_t kChunk = 512;
    const int64_t mask = ring_cap_ - 1;
    for (int64_t c = begin; c < end; c += kChunk) {
      const int64_t ce = std::min(end, c + kChunk);
      if (all_accepted) {
        count_pass<false>(c, ce);
      } else {
        count_pass<true>(c, ce);
      }
      Segment seg{ts_, rows_idx_.data(), status_.data(), c, ce, all_accepted};
      for (size_t s = 0; s < col_of_spec_.size(); ++s) {
        if (col_of_spec_[s] >= 0) cols_[col_of_spec_[s]]->update(table_, seg, (*values_)[s], mask);
      }
    }
  }

  /// First pass over a chunk: each event's state row (kept for the other passes), prefetched a
  /// few events ahead because this is where the random access to keyed state is paid.
  template <bool kMasked>
  void count_pass(int64_t begin, int64_t end) {
    const uint8_t* __restrict status = status_.data();
    const int64_t* __restrict rows = rows_idx_.data();
    uint8_t* __restrict d = table_.data;
    const int64_t rb = table_.row_bytes;
    constexpr int64_t kAhead = 16;
    for (int64_t i = begin; i < end; ++i) {
      // Rejected events have stale row indices; prefetching one is harmless.
      if (i + kAhead < end) __builtin_prefetch(d + rows[i + kAhead] * rb, 1);
      if (kMasked && status[i] != 0) continue;
      ++*reinterpret_cast<int64_t*>(d + rows[i] * rb);  // the count is at offset 0
    }
  }

  /// The watermark advances to w: emit pending updates, fire every window with end - 1 <= w
  /// in order of window end, purge slices whose last window's cleanup time has passed.
  void step(int64_t w, EmitBuffer& out) {
    wm_.set(w);
    emit_dirty(out);
    reserve_fires(w, out);
    while (window_end(next_fire_) - 1 <= w) {
      const int64_t first = next_fire_ * r_, last = first + m_ - 1;
      if (base_ == top_ || first >= top_) {
        next_fire_ = std::max(next_fire_, first_window_after(w));
        break;
      }
      if (last < base_) {
        // Due windows wholly below the live range are empty: skip to the first one that
        // reaches base_, but never past the first window that is not due yet.
        next_fire_ = std::max(next_fire_ + 1, std::min(floor_div(base_ - m_, r_) + 1, first_window_after(w)));
        continue;
      }
      const double nr = static_cast<double>(fire_window(next_fire_, rows_, false, out));
      if (nr > 0) rows_per_window_ = rows_per_window_ <= 0.0 ? nr : 0.75 * rows_per_window_ + 0.25 * nr;
      ++next_fire_;
    }
    if (w >= next_early_) {
      // Speculative results are due; they go out once the event that moved the watermark is
      // aggregated too (emit_early), as they would after that event in a per-event engine.
      early_pending_ = true;
      next_early_ = next_early_after(w);
    }
    while (base_ < top_ && slice_cleanup(base_) <= w) {
      const int64_t pos = base_ & (ring_cap_ - 1);
      if (slice_used_[pos] != 0) {
        layout_.fill_init(table_.row(pos, 0), nslots_);
        slice_used_[pos] = 0;
      }
      ++base_;
    }
    next_boundary_ = std::min(window_end(next_fire_) - 1, next_early_);
    if (base_ < top_) next_boundary_ = std::min(next_boundary_, slice_cleanup(base_));
  }

  /// Speculative results of every open window that holds data (early firings).
  void emit_early(EmitBuffer& out) {
    early_pending_ = false;
    if (base_ >= top_) return;
    const int64_t last_window = floor_div(top_ - 1, r_);
    for (int64_t j = next_fire_; j <= last_window; ++j) {
      const size_t before = out.start.size();
      fire_window(j, rows_, false, out);
      for (size_t r = before; r < out.start.size(); ++r) out.early[r] = 1;
    }
  }

  /// Ring positions of window j's non-empty live slices.
  void window_positions(int64_t j) {
    pos_.clear();
    const int64_t lo = std::max(j * r_, base_), hi = std::min(j * r_ + m_, top_);
    for (int64_t k = lo; k < hi; ++k) {
      const int64_t p = k & (ring_cap_ - 1);
      if (slice_used_[p] != 0) pos_.push_back(p);
    }
  }

  /// On-time firing of window j: every slot with at least one event in it, in slot order;
  /// returns the rows emitted.
  int64_t fire_window(int64_t j, std::vector<int32_t>& rows, bool update, EmitBuffer& out) {
    window_positions(j);
    if (pos_.empty()) return 0;
    rows.resize(static_cast<size_t>(nslots_));
    int32_t* r = rows.data();
    int64_t nr = 0;
    if (pos_.size() == 1) {
      for (int64_t s = 0; s < nslots_; ++s) {
        r[nr] = static_cast<int32_t>(s);  // branch-free compaction
        nr += count_.at(table_, pos_[0], s) > 0;
      }
    } else {
      // Slices of a block of slots one after another: independent adds, not a loop per slot.
      constexpr int64_t kBlock = 256;
      int64_t c[kBlock];
      const int64_t np = static_cast<int64_t>(pos_.size());
      for (int64_t s0 = 0; s0 < nslots_; s0 += kBlock) {
        const int64_t nb = std::min(kBlock, nslots_ - s0);
        for (int64_t b = 0; b < nb; ++b) c[b] = count_.at(table_, pos_[0], s0 + b);
        for (int64_t p = 1; p < np; ++p) {
          for (int64_t b = 0; b < nb; ++b) c[b] += count_.at(table_, pos_[p], s0 + b);
        }
        for (int64_t b = 0; b < nb; ++b) {
          r[nr] = static_cast<int32_t>(s0 + b);
          nr += c[b] > 0;
        }
      }
    }
    emit_rows(j, r, nr, update, out);
    return nr;
  }

  void emit_rows(int64_t j, const std::vector<int32_t>& rows, bool update, EmitBuffer& out) {
    emit_rows(j, rows.data(), static_cast<int64_t>(rows.size()), update, out);
  }

  void emit_rows(int64_t j, const int32_t* rows, int64_t nr, bool update, EmitBuffer& out) {
    if (nr == 0) return;
    if (spec_.keyed) {
      const int64_t* keys = keys_.keys().data();
      const size_t at = out.key.size();
      out.key.resize(at + static_cast<size_t>(nr));
      int64_t* o = out.key.data() + at;
      for (int64_t r = 0; r < nr; ++r) o[r] = keys[rows[r]];
    }
    out.start.append(static_cast<size_t>(nr), window_start(j) / spec_.out_div);
    out.end.append(static_cast<size_t>(nr), window_end(j) / spec_.out_div);
    out.update.append(static_cast<size_t>(nr), update ? 1 : 0);
    out.early.append(static_cast<size_t>(nr), 0);
    for (size_t s = 0; s < col_of_spec_.size(); ++s) {
      layout_.column_of_spec(s).emit(table_, pos_.data(), static_cast<int64_t>(pos_.size()), rows, nr, out.cols[s]);
    }
  }

  /// Late updates of already-fired windows: one row per (window, key), windows in order.
  void emit_dirty(EmitBuffer& out) {
    if (dirty_.empty()) return;
    std::sort(dirty_.begin(), dirty_.end());
    dirty_.erase(std::unique(dirty_.begin(), dirty_.end()), dirty_.end());
    size_t a = 0;
    while (a < dirty_.size()) {
      size_t b = a;
      rows_.clear();
      while (b < dirty_.size() && dirty_[b].first == dirty_[a].first) rows_.push_back(dirty_[b++].second);
      window_positions(dirty_[a].first);
      emit_rows(dirty_[a].first, rows_, true, out);
      a = b;
    }
    dirty_.clear();
  }

  WindowSpec spec_;
  int64_t g_ = 1, r_ = 1, m_ = 1;
  SliceIndexer slicer_, windower_;
  Watermark wm_;
  KeyIndex keys_;
  int64_t nslots_ = 0;

  RowLayout layout_;
  // Short names for the layout's parts.
  AggColumnImpl<CountAgg>& count_ = layout_.count;
  std::vector<std::unique_ptr<AggColumn>>& cols_ = layout_.cols;
  std::vector<int>& col_of_spec_ = layout_.col_of_spec;  // aggregation spec -> column (-1: the count)
  const int64_t& row_bytes_ = layout_.row_bytes;
  const std::vector<uint8_t>& init_row_ = layout_.init_row;

  HugeBuffer storage_;  // the state rows
  StateTable table_;
  int64_t ring_cap_ = 0, slot_cap_ = 0;
  int64_t base_ = 0, top_ = 0;  // live slices [base_, top_)
  std::vector<uint8_t> slice_used_;  // per ring position: holds data
  int64_t next_fire_ = 0;
  int64_t next_boundary_ = kNever;
  int64_t next_early_ = kNever;
  bool flushed_ = false;
  bool early_pending_ = false;
  PartitionSet parts_;
  size_t part_ = 0;              // the current batch's partition
  int64_t cap_ = kEndWatermark;  // min watermark the other active partitions allow
  double rows_per_event_ = 0.0;  // recent output rows per input event, to size outputs
  double rows_per_window_ = 0.0;  // recent output rows per on-time firing (step), to size firings
  std::vector<std::pair<int64_t, int32_t>> dirty_;

  // Per-batch scratch, reused across calls.
  std::vector<int32_t> slots_;
  std::vector<uint8_t> status_;
  std::vector<int64_t> rows_idx_;
  std::vector<int32_t> rows_;
  std::vector<int64_t> pos_;
  const std::vector<const double*>* values_ = nullptr;
  const int64_t* ts_ = nullptr;
};

}  // namespace pystream
