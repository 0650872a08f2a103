/// agg_column.h — one aggregation's state over the slice ring, and the one templated kernel.
///
/// Layout: `data_[pos * slot_cap + slot]` holds the policy State of key `slot` in the slice at
/// ring position `pos` (slice id & (ring_cap - 1)). Struct-of-arrays across aggregations, so
/// each aggregation is one tight pass over a segment of events; rows of one slice are
/// contiguous, so firing and purging a slice are sequential scans.
///
/// Invariant: every position outside the live slice range holds `init` state, so a window
/// combines its slices without asking which of them ever held data.
///
/// The update kernel is instantiated per policy and per "segment has rejected events", so
/// the common all-accepted case has no branch per event; the state row of the event a few
/// rows ahead is prefetched, because random access to keyed state is what costs.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "agg_basic.h"
#include "agg_moments.h"
#include "agg_order.h"

namespace pystream {

enum class AggKind : int { kCount = 0, kSum, kMin, kMax, kMean, kFirst, kLast, kVar, kStd };

/// Events of one batch segment, as the aggregation kernels see them.
struct Segment {
  const int64_t* ts;
  const int32_t* slots;
  const int64_t* slices;
  const uint8_t* status;  // 0 = accepted; anything else is skipped
  int64_t begin, end;
  bool all_accepted;
};

/// A column of outputs: int64 for counts, float64 for everything else.
struct OutColumn {
  bool is_int = false;
  std::vector<int64_t> i;
  std::vector<double> f;
};

class AggColumn {
 public:
  virtual ~AggColumn() = default;
  virtual bool is_int() const = 0;
  virtual size_t state_bytes() const = 0;
  /// Re-lays out state for a new ring capacity / slot capacity, keeping live slices [base, top).
  virtual void reshape(int64_t ring_cap, int64_t slot_cap, int64_t base, int64_t top) = 0;
  virtual void update(const Segment& seg, const double* values, int64_t mask) = 0;
  /// Resets one ring position to init state (purge).
  virtual void reset(int64_t pos) = 0;
  /// out[r] = finalize(combine of positions pos[0..npos) for slots[r]), appended to `out`.
  virtual void emit(const int64_t* pos, int64_t npos, const int32_t* slots, int64_t nrows, OutColumn& out) const = 0;
  /// Raw state of slices [base, top) for slots [0, nslots), slice-major.
  virtual void save(int64_t base, int64_t top, int64_t nslots, std::vector<uint8_t>& out) const = 0;
  virtual void load(int64_t base, int64_t top, int64_t nslots, const uint8_t* data, size_t len) = 0;
};

template <class P>
class AggColumnImpl final : public AggColumn {
  using State = typename P::State;
  static_assert(std::is_trivially_copyable<State>::value, "states are copied as bytes in snapshots");

 public:
  explicit AggColumnImpl(AggParams params) : params_(params) {}

  bool is_int() const override { return std::is_same<typename P::Out, int64_t>::value; }
  size_t state_bytes() const override { return sizeof(State); }

  void reshape(int64_t ring_cap, int64_t slot_cap, int64_t base, int64_t top) override {
    std::vector<State> fresh(static_cast<size_t>(ring_cap * slot_cap));
    State init;
    P::init(init);
    std::fill(fresh.begin(), fresh.end(), init);
    if (!data_.empty()) {
      const int64_t copy = slot_cap_ < slot_cap ? slot_cap_ : slot_cap;
      for (int64_t k = base; k < top; ++k) {
        const State* src = data_.data() + (k & (ring_cap_ - 1)) * slot_cap_;
        State* dst = fresh.data() + (k & (ring_cap - 1)) * slot_cap;
        std::memcpy(static_cast<void*>(dst), src, sizeof(State) * static_cast<size_t>(copy));
      }
    }
    data_.swap(fresh);
    ring_cap_ = ring_cap;
    slot_cap_ = slot_cap;
  }

  /// The states of one ring position, indexed by slot (the engine reads counts this way).
  const State* row(int64_t pos) const { return data_.data() + pos * slot_cap_; }

  void update(const Segment& seg, const double* values, int64_t mask) override {
    if (seg.all_accepted) {
      run<false>(seg, values, mask);
    } else {
      run<true>(seg, values, mask);
    }
  }

  void reset(int64_t pos) override {
    State init;
    P::init(init);
    State* row = data_.data() + pos * slot_cap_;
    std::fill(row, row + slot_cap_, init);
  }

  void emit(const int64_t* pos, int64_t npos, const int32_t* slots, int64_t nrows, OutColumn& out) const override {
    out.is_int = is_int();
    auto& dst = out_vec(out);
    const size_t at = dst.size();
    dst.resize(at + static_cast<size_t>(nrows));
    auto* o = dst.data() + at;
    const State* d = data_.data();
    if (npos == 1) {
      const State* row = d + pos[0] * slot_cap_;
      for (int64_t r = 0; r < nrows; ++r) o[r] = P::finalize(row[slots[r]], params_);
      return;
    }
    for (int64_t r = 0; r < nrows; ++r) {
      State acc;
      P::init(acc);
      for (int64_t j = 0; j < npos; ++j) P::combine(acc, d[pos[j] * slot_cap_ + slots[r]]);
      o[r] = P::finalize(acc, params_);
    }
  }

  void save(int64_t base, int64_t top, int64_t nslots, std::vector<uint8_t>& out) const override {
    const size_t row = sizeof(State) * static_cast<size_t>(nslots);
    out.resize(row * static_cast<size_t>(top - base));
    for (int64_t k = base; k < top; ++k) {
      std::memcpy(out.data() + row * static_cast<size_t>(k - base), data_.data() + (k & (ring_cap_ - 1)) * slot_cap_, row);
    }
  }

  void load(int64_t base, int64_t top, int64_t nslots, const uint8_t* data, size_t len) override {
    const size_t row = sizeof(State) * static_cast<size_t>(nslots);
    if (len != row * static_cast<size_t>(top - base)) fail("corrupt snapshot: aggregation state has the wrong size");
    for (int64_t k = base; k < top; ++k) {
      std::memcpy(static_cast<void*>(data_.data() + (k & (ring_cap_ - 1)) * slot_cap_), data + row * static_cast<size_t>(k - base), row);
    }
  }

 private:
  std::vector<typename P::Out>& out_vec(OutColumn& out) const {
    if constexpr (std::is_same<typename P::Out, int64_t>::value) {
      return out.i;
    } else {
      return out.f;
    }
  }

  template <bool kMasked>
  void run(const Segment& seg, const double* __restrict values, int64_t mask) {
    State* __restrict d = data_.data();
    const int64_t cap = slot_cap_;
    const int32_t* __restrict slots = seg.slots;
    const int64_t* __restrict slices = seg.slices;
    const int64_t* __restrict ts = seg.ts;
    const uint8_t* __restrict status = seg.status;
    constexpr int64_t kAhead = 16;
    const int64_t end = seg.end;
    for (int64_t i = seg.begin; i < end; ++i) {
      if (i + kAhead < end) __builtin_prefetch(d + (slices[i + kAhead] & mask) * cap + slots[i + kAhead], 1);
      if (kMasked && status[i] != 0) continue;
      State& s = d[(slices[i] & mask) * cap + slots[i]];
      P::update(s, P::kUsesValue ? values[i] : 0.0, P::kUsesTime ? ts[i] : 0);
    }
  }

  AggParams params_;
  std::vector<State> data_;
  int64_t ring_cap_ = 0;
  int64_t slot_cap_ = 0;
};

inline std::unique_ptr<AggColumn> make_column(AggKind kind, AggParams params) {
  switch (kind) {
    case AggKind::kCount: return std::make_unique<AggColumnImpl<CountAgg>>(params);
    case AggKind::kSum: return std::make_unique<AggColumnImpl<SumAgg>>(params);
    case AggKind::kMin: return std::make_unique<AggColumnImpl<MinAgg>>(params);
    case AggKind::kMax: return std::make_unique<AggColumnImpl<MaxAgg>>(params);
    case AggKind::kMean: return std::make_unique<AggColumnImpl<MeanAgg>>(params);
    case AggKind::kFirst: return std::make_unique<AggColumnImpl<FirstAgg>>(params);
    case AggKind::kLast: return std::make_unique<AggColumnImpl<LastAgg>>(params);
    case AggKind::kVar: return std::make_unique<AggColumnImpl<VarAgg>>(params);
    case AggKind::kStd: return std::make_unique<AggColumnImpl<StdAgg>>(params);
  }
  fail("unknown aggregation kind");
}

}  // namespace pystream
