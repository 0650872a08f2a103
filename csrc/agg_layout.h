/// agg_layout.h — the aggregations of one operator laid out in a state row, and the checks
/// every engine makes on a batch before it changes state.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "agg_column.h"
#include "agg_sketch.h"
#include "common.h"

namespace pystream {

struct AggSpec {
  AggKind kind;
  AggParams params;
};

/// The aggregations of one operator laid out in a state row: the engine's count at offset 0,
/// `header` bytes of engine-owned fields after it, then each non-count aggregation (8-byte
/// aligned). Count aggregations in the spec read the engine's count (col_of_spec = -1).
struct RowLayout {
  AggColumnImpl<CountAgg> count{AggParams{}};
  std::vector<std::unique_ptr<AggColumn>> cols;
  std::vector<int> col_of_spec;
  int64_t row_bytes = 0;
  std::vector<uint8_t> init_row;

  RowLayout(const std::vector<AggSpec>& aggs, int64_t header);
  /// Writes init state into `n` consecutive rows at `dst`: one row, then doubling block copies
  /// (a memcpy per row cost ~10% of a sliding window's time in purges).
  void fill_init(uint8_t* dst, int64_t n) const {
    if (n <= 0 || row_bytes == 0) return;
    const size_t rb = static_cast<size_t>(row_bytes), total = static_cast<size_t>(n) * rb;
    std::memcpy(dst, init_row.data(), rb);
    for (size_t done = rb; done < total;) {
      const size_t step = std::min(done, total - done);
      std::memcpy(dst + done, dst, step);
      done += step;
    }
  }
  const AggColumn& column_of_spec(size_t s) const {
    return col_of_spec[s] < 0 ? static_cast<const AggColumn&>(count) : *cols[col_of_spec[s]];
  }
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
    case AggKind::kDistinct: return std::make_unique<DistinctColumn>(params.iparam);
    case AggKind::kQuantile:
      return std::make_unique<QuantileColumn>(params.fparam, params.iparam, params.fparam2, params.share < 0);
    case AggKind::kTopK: return std::make_unique<TopKColumn>(params.iparam, params.iparam2);
    case AggKind::kHandle: return std::make_unique<HandleColumn>();
  }
  fail("unknown aggregation kind");
}

inline RowLayout::RowLayout(const std::vector<AggSpec>& aggs, int64_t header) {
  int64_t offset = static_cast<int64_t>(sizeof(int64_t)) + header;
  for (const AggSpec& a : aggs) {
    if (a.kind == AggKind::kCount) {
      col_of_spec.push_back(-1);
    } else {
      col_of_spec.push_back(static_cast<int>(cols.size()));
      cols.push_back(make_column(a.kind, a.params));
      const int share = a.params.share;
      if (share >= 0) {
        const AggParams& o = share >= 0 && share < static_cast<int>(aggs.size()) ? aggs[share].params : a.params;
        if (share >= static_cast<int>(col_of_spec.size()) - 1 || col_of_spec[share] < 0 || aggs[share].kind != a.kind ||
            a.kind != AggKind::kQuantile || o.iparam != a.params.iparam || o.fparam != a.params.fparam) {
          fail("aggregation spec shares state with an incompatible spec " + std::to_string(share));
        }
        cols.back()->set_offset(cols[col_of_spec[share]]->offset());  // reads that state; keeps none
        continue;
      }
      cols.back()->set_offset(offset);
      offset += static_cast<int64_t>((cols.back()->state_bytes() + 7) / 8 * 8);
    }
  }
  // Rows never straddle a cache line: up to 64 bytes a power of two, beyond that whole lines
  // (a 24-byte count+sum row split its sum across two lines for a third of the keys, and the
  // count pass's prefetch then missed it: sliding sums ran 2x slower per event).
  row_bytes = offset <= 64 ? int64_t{8} : (offset + 63) / 64 * 64;
  while (row_bytes < offset) row_bytes *= 2;
  init_row.assign(static_cast<size_t>(row_bytes), 0);
  count.init(init_row.data());
  for (const auto& c : cols) c->init(init_row.data());
}

/// The checks every engine makes before a batch changes any state: not flushed, one value
/// column per aggregation (null only for counts), a valid unit, every timestamp in range.
/// Returns the batch's largest timestamp (in its unit; INT64_MIN for an empty batch), which an
/// engine may use to size its output.
inline int64_t check_batch(const RowLayout& layout, bool flushed, const std::vector<const double*>& values,
                           const int64_t* ts, int64_t n, int64_t unit_ns) {
  if (flushed) fail("this window operator has been flushed at end of input and accepts no more events");
  if (values.size() != layout.col_of_spec.size()) fail("expected one value column per aggregation");
  for (size_t s = 0; s < layout.col_of_spec.size(); ++s) {
    if (layout.col_of_spec[s] >= 0 && values[s] == nullptr && n > 0) fail("missing value column for an aggregation");
  }
  if (unit_ns < 1) fail("unit_ns must be >= 1, got " + std::to_string(unit_ns));
  const int64_t limit = kMaxAbsTime / unit_ns;
  int64_t lo = std::numeric_limits<int64_t>::max(), hi = std::numeric_limits<int64_t>::min();
  for (int64_t i = 0; i < n; ++i) {  // a reduction without branches; the offending row is found only on failure
    lo = std::min(lo, ts[i]);
    hi = std::max(hi, ts[i]);
  }
  if (n > 0 && (lo < -limit || hi > limit)) {
    for (int64_t i = 0; i < n; ++i) {
      if (ts[i] < -limit || ts[i] > limit) {
        fail("timestamp " + std::to_string(ts[i]) + " at row " + std::to_string(i) +
             " is outside the supported range (1823-11-12 .. 2116-02-20); is the time unit right?");
      }
    }
  }
  return hi;
}

}  // namespace pystream
