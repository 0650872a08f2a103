/// agg_column.h — the state table of all aggregations, and the one templated update kernel.
///
/// Layout: one row of bytes per (ring position, key slot): `row(pos, slot) = data +
/// (pos * slot_cap + slot) * row_bytes`, and each aggregation's policy State lives at a fixed
/// offset within the row (count first, then the operator's aggregations). This is a
/// deliberate departure from one array per aggregation: measured on the meter benchmark
/// (10M events, 100k keys), separate arrays cost one cache miss into L3 per aggregation per
/// event; with rows, count+sum+max share one 32-byte row, the first pass over a chunk of
/// events misses once and the other aggregations' passes hit L1/L2 (see `aggregate` in
/// window_engine.h, which walks a segment in L2-sized chunks).
///
/// Invariant: every row outside the live slice range holds `init` state, so a window
/// combines its slices without asking which of them ever held data.
///
/// The update kernel is instantiated per policy and per "segment has rejected events", so
/// the common all-accepted case has no branch per event; the state row of the event a few
/// rows ahead is prefetched, because random access to keyed state is what costs.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "agg_basic.h"
#include "agg_moments.h"
#include "agg_order.h"
#include "common.h"
#include "out_buffer.h"

namespace pystream {

enum class AggKind : int { kCount = 0, kSum, kMin, kMax, kMean, kFirst, kLast, kVar, kStd, kDistinct, kQuantile, kTopK, kHandle };

/// Events of one batch segment, as the aggregation kernels see them.
struct Segment {
  const int64_t* ts;
  const int64_t* rows;    // state row index of each event: (slice & mask) * slot_cap + slot
  const uint8_t* status;  // 0 = accepted; anything else is skipped
  int64_t begin, end;
  bool all_accepted;
};

/// A column of outputs: int64 for counts, float64 for everything else.
struct OutColumn {
  bool is_int = false;
  bool paired = false;  // values in f and counts in i (top-k), k per row
  OutBuf<int64_t> i;
  OutBuf<double> f;
};

/// Rows of state for all aggregations of one operator (see the layout note above).
/// Time windows lay rows out position-major (a slice's keys are contiguous, for firing and
/// purging scans); count windows key-major (a key's panes are contiguous, for its firings).
struct StateTable {
  uint8_t* data = nullptr;
  int64_t row_bytes = 0;
  int64_t slot_cap = 0;
  int64_t pos_stride = 0;   // bytes between ring positions
  int64_t slot_stride = 0;  // bytes between keys
  uint8_t* row(int64_t pos, int64_t slot) const { return data + pos * pos_stride + slot * slot_stride; }
  static StateTable position_major(uint8_t* d, int64_t rb, int64_t slot_cap) { return {d, rb, slot_cap, slot_cap * rb, rb}; }
  static StateTable key_major(uint8_t* d, int64_t rb, int64_t slot_cap, int64_t positions) {
    return {d, rb, slot_cap, rb, positions * rb};
  }
};

class AggColumn {
 public:
  explicit AggColumn(int64_t offset) : offset_(offset) {}
  virtual ~AggColumn() = default;
  virtual bool is_int() const = 0;
  virtual size_t state_bytes() const = 0;
  virtual size_t state_align() const = 0;
  /// Writes this aggregation's init state into one row.
  virtual void init(uint8_t* row) const = 0;
  virtual void update(const StateTable& t, const Segment& seg, const double* values, int64_t mask) const = 0;
  /// One event into one state row (count and session windows, which work event by event).
  virtual void update_one(uint8_t* row, double value, int64_t ts) const = 0;
  /// Merges the state in `src` into `dst` (session merges); src holds the later events.
  virtual void combine_rows(uint8_t* dst, const uint8_t* src) const = 0;
  /// out[r] = finalize(combine of positions pos[0..npos) for slots[r]), appended to `out`.
  virtual void emit(const StateTable& t, const int64_t* pos, int64_t npos, const int32_t* slots, int64_t nrows,
                    OutColumn& out) const = 0;
  int64_t offset() const { return offset_; }
  void set_offset(int64_t offset) { offset_ = offset; }

 protected:
  int64_t offset_;
};

template <class P>
class AggColumnImpl final : public AggColumn {
  using State = typename P::State;
  static_assert(std::is_trivially_copyable<State>::value, "states are copied as bytes in snapshots");
  static_assert(alignof(State) <= 8, "rows are laid out with 8-byte alignment");

 public:
  explicit AggColumnImpl(AggParams params, int64_t offset = 0) : AggColumn(offset), params_(params) {}

  bool is_int() const override { return std::is_same<typename P::Out, int64_t>::value; }
  size_t state_bytes() const override { return sizeof(State); }
  size_t state_align() const override { return alignof(State); }

  void init(uint8_t* row) const override {
    State s;
    P::init(s);
    std::memcpy(row + offset_, &s, sizeof(State));
  }

  /// The state of (pos, slot) (the engine reads counts this way).
  const State& at(const StateTable& t, int64_t pos, int64_t slot) const {
    return *reinterpret_cast<const State*>(t.row(pos, slot) + offset_);
  }

  void update_one(uint8_t* row, double value, int64_t ts) const override {
    P::update(*reinterpret_cast<State*>(row + offset_), value, ts);
  }

  void combine_rows(uint8_t* dst, const uint8_t* src) const override {
    State b;
    std::memcpy(static_cast<void*>(&b), src + offset_, sizeof(State));
    P::combine(*reinterpret_cast<State*>(dst + offset_), b);
  }

  void update(const StateTable& t, const Segment& seg, const double* values, int64_t mask) const override {
    if (seg.all_accepted) {
      run<false>(t, seg, values, mask);
    } else {
      run<true>(t, seg, values, mask);
    }
  }

  void emit(const StateTable& t, const int64_t* pos, int64_t npos, const int32_t* slots, int64_t nrows,
            OutColumn& out) const override {
    out.is_int = is_int();
    auto& dst = out_vec(out);
    const size_t at_ = dst.size();
    dst.resize(at_ + static_cast<size_t>(nrows));
    auto* o = dst.data() + at_;
    if (npos == 1) {
      for (int64_t r = 0; r < nrows; ++r) o[r] = P::finalize(at(t, pos[0], slots[r]), params_);
      return;
    }
    // Several slices (sliding windows): combine a block of rows one slice at a time, so each
    // row's merge chain overlaps with the other rows' instead of running serially.
    constexpr int64_t kBlock = 256;
    State acc[kBlock];
    for (int64_t r0 = 0; r0 < nrows; r0 += kBlock) {
      const int64_t nb = std::min(kBlock, nrows - r0);
      const int32_t* sl = slots + r0;
      for (int64_t b = 0; b < nb; ++b) acc[b] = at(t, pos[0], sl[b]);
      for (int64_t j = 1; j < npos; ++j) {
        for (int64_t b = 0; b < nb; ++b) P::combine(acc[b], at(t, pos[j], sl[b]));
      }
      for (int64_t b = 0; b < nb; ++b) o[r0 + b] = P::finalize(acc[b], params_);
    }
  }

 private:
  OutBuf<typename P::Out>& out_vec(OutColumn& out) const {
    if constexpr (std::is_same<typename P::Out, int64_t>::value) {
      return out.i;
    } else {
      return out.f;
    }
  }

  /// The engine's first pass over a chunk (the count) computed each event's row and pulled it
  /// into cache; this pass only reads the row index.
  template <bool kMasked>
  void run(const StateTable& t, const Segment& seg, const double* __restrict values, int64_t) const {
    uint8_t* __restrict d = t.data + offset_;
    const int64_t rb = t.row_bytes;
    const int64_t* __restrict rows = seg.rows;
    const int64_t* __restrict ts = seg.ts;
    const uint8_t* __restrict status = seg.status;
    const int64_t end = seg.end;
    for (int64_t i = seg.begin; i < end; ++i) {
      if (kMasked && status[i] != 0) continue;
      State& s = *reinterpret_cast<State*>(d + rows[i] * rb);
      P::update(s, P::kUsesValue ? values[i] : 0.0, P::kUsesTime ? ts[i] : 0);
    }
  }

  AggParams params_;
};

}  // namespace pystream
