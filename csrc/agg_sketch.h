/// agg_sketch.h — mergeable sketches (distinct count, quantiles, heavy hitters) and the
/// handle column behind Python-defined aggregations.
///
/// A sketch's state size is a run-time parameter (precision, bins, capacity), so these are
/// AggColumn subclasses working on raw bytes rather than policy structs with a fixed `State`.
/// Each keeps the contract of agg_column.h: the init state is all zero bytes or written by
/// `init`, `combine_rows` merges two states, `emit` combines a window's slices and finalizes.
/// Every state is fixed-size, so sketches live in the same rows as sums and counts and are
/// snapshotted as bytes with them.
///
/// - DistinctColumn: HyperLogLog (Flajolet et al. 2007) with 2^p one-byte registers and
///   Ertl's improved estimator ("New cardinality estimation algorithms for HyperLogLog
///   sketches", 2017), which needs no empirical bias tables and is unbiased from 0 to 2^64.
///   Relative standard error 1.04 / sqrt(2^p).
/// - QuantileColumn: DDSketch (Masson, Rim & Lee, VLDB 2019) with two dense stores of `bins`
///   logarithmic buckets (positive values, magnitudes of negative ones) that collapse their
///   lowest buckets when the range exceeds `bins` (the paper's collapsing-lowest store): any
///   quantile whose value lies within a factor gamma^(bins-1) of the largest magnitude is
///   returned within relative error alpha, where gamma = (1 + alpha) / (1 - alpha).
/// - TopKColumn: the Misra–Gries summary with `capacity` counters and the merge of Agarwal
///   et al. ("Mergeable summaries", PODS 2012): every count is under-estimated by at most
///   N / (capacity + 1) over the N events of the window, and exact while the window holds
///   at most `capacity` distinct values.
/// - HandleColumn: an int64 handle naming an accumulator that lives in Python (see
///   pystream/custom.py); the column only logs what happened to it, in order.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "agg_column.h"

namespace pystream {

/// The bits of a value as an item: -0.0 is 0.0 and every NaN is one NaN.
inline uint64_t item_bits(double v) {
  if (v == 0.0) v = 0.0;
  if (v != v) v = std::numeric_limits<double>::quiet_NaN();
  uint64_t b;
  std::memcpy(&b, &v, sizeof b);
  return b;
}

/// Shared by the byte-state sketches: the row's state pointer, and emit's combine of a
/// window's slices into one scratch state before finalizing it.
class ByteStateColumn : public AggColumn {
 public:
  ByteStateColumn(size_t bytes, bool owns) : AggColumn(0), bytes_(bytes), owns_(owns) {}
  bool is_int() const override { return false; }
  size_t state_bytes() const override { return owns_ ? bytes_ : 0; }
  size_t state_align() const override { return 8; }
  void init(uint8_t* row) const override {
    if (owns_) init_state(row + offset_);
  }
  void update(const StateTable& t, const Segment& seg, const double* values, int64_t) const override {
    if (!owns_) return;
    for (int64_t i = seg.begin; i < seg.end; ++i) {
      if (!seg.all_accepted && seg.status[i] != 0) continue;
      add(t.data + seg.rows[i] * t.row_bytes + offset_, values[i]);
    }
  }
  void update_one(uint8_t* row, double value, int64_t) const override {
    if (owns_) add(row + offset_, value);
  }
  void combine_rows(uint8_t* dst, const uint8_t* src) const override {
    if (owns_) merge(dst + offset_, src + offset_);
  }
  /// A column that reads the state of an earlier one (several quantiles of one sketch).
  bool owns() const { return owns_; }

 protected:
  virtual void init_state(uint8_t* s) const = 0;
  virtual void add(uint8_t* s, double v) const = 0;
  virtual void merge(uint8_t* dst, const uint8_t* src) const = 0;

  /// Calls f(state) for each output row with the combined state of its window's slices.
  template <class F>
  void each_window(const StateTable& t, const int64_t* pos, int64_t npos, const int32_t* slots, int64_t nrows, F&& f) const {
    std::vector<uint8_t> acc(bytes_);
    for (int64_t r = 0; r < nrows; ++r) {
      if (npos == 1) {
        f(t.row(pos[0], slots[r]) + offset_);
        continue;
      }
      init_state(acc.data());
      for (int64_t j = 0; j < npos; ++j) merge(acc.data(), t.row(pos[j], slots[r]) + offset_);
      f(acc.data());
    }
  }

  size_t bytes_;
  bool owns_;
};

class DistinctColumn final : public ByteStateColumn {
 public:
  explicit DistinctColumn(int precision) : ByteStateColumn(size_t{1} << precision, true), p_(precision) {
    if (precision < 4 || precision > 18) fail("distinct(precision=) must be in 4..18, got " + std::to_string(precision));
  }
  bool is_int() const override { return true; }

  void emit(const StateTable& t, const int64_t* pos, int64_t npos, const int32_t* slots, int64_t nrows,
            OutColumn& out) const override {
    out.is_int = true;
    each_window(t, pos, npos, slots, nrows, [&](const uint8_t* s) { out.i.push_back(std::llround(estimate(s))); });
  }

  /// Ertl 2017, algorithm 6 (improved raw estimate from the register histogram).
  double estimate(const uint8_t* regs) const {
    const int q = 64 - p_;
    const double m = static_cast<double>(bytes_);
    std::vector<double> c(static_cast<size_t>(q + 2), 0.0);
    for (size_t j = 0; j < bytes_; ++j) c[regs[j]] += 1.0;
    double z = m * tau(1.0 - c[static_cast<size_t>(q + 1)] / m);
    for (int k = q; k >= 1; --k) z = 0.5 * (z + c[static_cast<size_t>(k)]);
    z += m * sigma(c[0] / m);
    if (std::isinf(z)) return 0.0;  // all registers zero: nothing seen
    return (0.5 / std::log(2.0)) * m * m / z;
  }

 private:
  static double sigma(double x) {
    if (x == 1.0) return std::numeric_limits<double>::infinity();
    double y = 1.0, z = x, prev;
    do {
      x *= x;
      prev = z;
      z += x * y;
      y += y;
    } while (z != prev);
    return z;
  }
  static double tau(double x) {
    if (x == 0.0 || x == 1.0) return 0.0;
    double y = 1.0, z = 1.0 - x, prev;
    do {
      x = std::sqrt(x);
      prev = z;
      y *= 0.5;
      z -= (1.0 - x) * (1.0 - x) * y;
    } while (z != prev);
    return z / 3.0;
  }
  void init_state(uint8_t* s) const override { std::memset(s, 0, bytes_); }
  void add(uint8_t* s, double v) const override {
    const uint64_t h = mix64(item_bits(v));
    const uint64_t idx = h >> (64 - p_);
    const uint64_t rest = h << p_;
    const int q = 64 - p_;
    const int rank = rest == 0 ? q + 1 : std::min(__builtin_clzll(rest) + 1, q + 1);
    s[idx] = std::max<uint8_t>(s[idx], static_cast<uint8_t>(rank));
  }
  void merge(uint8_t* dst, const uint8_t* src) const override {
    for (size_t j = 0; j < bytes_; ++j) dst[j] = std::max(dst[j], src[j]);
  }
  int p_;
};

/// DDSketch. State: {uint64 zero, nan; int32 pos_off, neg_off} then uint32 pos[bins], neg[bins];
/// an offset of kEmpty marks an empty store. Bucket i holds magnitudes in (gamma^(i-1), gamma^i].
class QuantileColumn final : public ByteStateColumn {
  struct Head {
    uint64_t zero, nan;
    int32_t pos_off, neg_off;
  };
  static constexpr int32_t kEmpty = std::numeric_limits<int32_t>::min();

 public:
  QuantileColumn(double alpha, int bins, double q, bool owns)
      : ByteStateColumn(sizeof(Head) + 2 * static_cast<size_t>(bins) * sizeof(uint32_t), owns), bins_(bins), q_(q) {
    if (!(alpha > 0.0 && alpha < 1.0)) fail("quantile(relative_accuracy=) must be in (0, 1), got " + std::to_string(alpha));
    if (bins < 2 || bins > 65536) fail("quantile(bins=) must be in 2..65536, got " + std::to_string(bins));
    if (!(q >= 0.0 && q <= 1.0)) fail("quantile q must be in [0, 1], got " + std::to_string(q));
    gamma_ = (1.0 + alpha) / (1.0 - alpha);
    inv_log_gamma_ = 1.0 / std::log(gamma_);
  }

  void emit(const StateTable& t, const int64_t* pos, int64_t npos, const int32_t* slots, int64_t nrows,
            OutColumn& out) const override {
    out.is_int = false;
    each_window(t, pos, npos, slots, nrows, [&](const uint8_t* s) { out.f.push_back(quantile(s)); });
  }

 private:
  static Head& head(uint8_t* s) { return *reinterpret_cast<Head*>(s); }
  static const Head& head(const uint8_t* s) { return *reinterpret_cast<const Head*>(s); }
  uint32_t* pos_bins(uint8_t* s) const { return reinterpret_cast<uint32_t*>(s + sizeof(Head)); }
  uint32_t* neg_bins(uint8_t* s) const { return pos_bins(s) + bins_; }
  const uint32_t* pos_bins(const uint8_t* s) const { return reinterpret_cast<const uint32_t*>(s + sizeof(Head)); }
  const uint32_t* neg_bins(const uint8_t* s) const { return pos_bins(s) + bins_; }

  static uint32_t sat_add(uint32_t a, uint64_t b) {
    const uint64_t s = static_cast<uint64_t>(a) + b;
    return s > std::numeric_limits<uint32_t>::max() ? std::numeric_limits<uint32_t>::max() : static_cast<uint32_t>(s);
  }

  /// Adds c at bucket i of a store whose window is [off, off + bins): below it collapses into
  /// the lowest bucket; above it the window moves up and the lowest buckets collapse.
  void store_add(int32_t& off, uint32_t* b, int32_t i, uint64_t c) const {
    const int32_t m = bins_;
    if (off == kEmpty) {
      off = i - m + 1;
    } else if (i >= off + m) {
      const int64_t shift = static_cast<int64_t>(i) - m + 1 - off;
      uint64_t low = 0;
      if (shift >= m) {
        for (int32_t j = 0; j < m; ++j) low += b[j];
        std::fill(b, b + m, 0u);
      } else {
        for (int64_t j = 0; j < shift; ++j) low += b[j];
        std::memmove(b, b + shift, static_cast<size_t>(m - shift) * sizeof(uint32_t));
        std::fill(b + (m - shift), b + m, 0u);
      }
      b[0] = sat_add(b[0], low);
      off = i - m + 1;
    }
    const int32_t j = std::max(i - off, 0);
    b[j] = sat_add(b[j], c);
  }

  int32_t index_of(double mag) const { return static_cast<int32_t>(std::ceil(std::log(mag) * inv_log_gamma_)); }
  double value_of(int32_t i) const { return 2.0 * std::pow(gamma_, i) / (1.0 + gamma_); }

  void init_state(uint8_t* s) const override {
    std::memset(s, 0, bytes_);
    head(s).pos_off = head(s).neg_off = kEmpty;
  }
  void add(uint8_t* s, double v) const override {
    Head& h = head(s);
    if (v != v) {
      ++h.nan;
    } else if (std::fabs(v) < std::numeric_limits<double>::min()) {
      ++h.zero;  // zero and subnormals
    } else if (v > 0) {
      store_add(h.pos_off, pos_bins(s), index_of(std::min(v, std::numeric_limits<double>::max())), 1);
    } else {
      store_add(h.neg_off, neg_bins(s), index_of(std::min(-v, std::numeric_limits<double>::max())), 1);
    }
  }
  void merge_store(int32_t& off, uint32_t* b, int32_t src_off, const uint32_t* sb) const {
    if (src_off == kEmpty) return;
    // Highest bucket first, so the window moves at most once and nothing lands below it twice.
    for (int32_t j = bins_ - 1; j >= 0; --j) {
      if (sb[j] != 0) store_add(off, b, src_off + j, sb[j]);
    }
  }
  void merge(uint8_t* dst, const uint8_t* src) const override {
    Head& d = head(dst);
    const Head& s = head(src);
    d.zero += s.zero;
    d.nan += s.nan;
    merge_store(d.pos_off, pos_bins(dst), s.pos_off, pos_bins(src));
    merge_store(d.neg_off, neg_bins(dst), s.neg_off, neg_bins(src));
  }

  /// The value at rank floor(q * (n - 1)) (NumPy's method='lower'), NaN for an empty window
  /// or one holding NaN.
  double quantile(const uint8_t* s) const {
    const Head& h = head(s);
    if (h.nan > 0) return std::numeric_limits<double>::quiet_NaN();
    const uint32_t* pb = pos_bins(s);
    const uint32_t* nb = neg_bins(s);
    uint64_t n = h.zero;
    for (int32_t j = 0; j < bins_; ++j) n += static_cast<uint64_t>(pb[j]) + nb[j];
    if (n == 0) return std::numeric_limits<double>::quiet_NaN();
    const double rank = q_ * static_cast<double>(n - 1);
    double seen = 0.0;
    if (h.neg_off != kEmpty) {
      for (int32_t j = bins_ - 1; j >= 0; --j) {
        seen += nb[j];
        if (nb[j] != 0 && seen > rank) return -value_of(h.neg_off + j);
      }
    }
    seen += static_cast<double>(h.zero);
    if (seen > rank) return 0.0;
    for (int32_t j = 0; j < bins_; ++j) {
      seen += pb[j];
      if (pb[j] != 0 && seen > rank) return value_of(h.pos_off + j);
    }
    return value_of(h.pos_off + bins_ - 1);
  }

  int32_t bins_;
  double q_;
  double gamma_ = 0.0, inv_log_gamma_ = 0.0;
};

/// Misra–Gries counters {value bits, count}, `cap` of them, plus the number in use.
class TopKColumn final : public ByteStateColumn {
  struct Counter {
    uint64_t item;
    int64_t count;
  };

 public:
  TopKColumn(int k, int capacity)
      : ByteStateColumn(sizeof(int64_t) + static_cast<size_t>(capacity) * sizeof(Counter), true), k_(k), cap_(capacity) {
    if (k < 1 || k > 1024) fail("top_k(k=) must be in 1..1024, got " + std::to_string(k));
    if (capacity < k || capacity > 65536) {
      fail("top_k(capacity=) must be in k..65536, got capacity=" + std::to_string(capacity) + " with k=" + std::to_string(k));
    }
  }

  /// k values (NaN where the window has fewer distinct values) into out.f and their counts
  /// into out.i, row after row, most frequent first (ties: smaller value first).
  void emit(const StateTable& t, const int64_t* pos, int64_t npos, const int32_t* slots, int64_t nrows,
            OutColumn& out) const override {
    out.is_int = false;
    out.paired = true;
    std::vector<Counter> top;
    each_window(t, pos, npos, slots, nrows, [&](const uint8_t* s) {
      const int64_t used = *reinterpret_cast<const int64_t*>(s);
      const Counter* c = counters(s);
      top.assign(c, c + used);
      std::sort(top.begin(), top.end(), [](const Counter& a, const Counter& b) {
        if (a.count != b.count) return a.count > b.count;
        return as_double(a.item) < as_double(b.item);
      });
      for (int j = 0; j < k_; ++j) {
        const bool has = j < static_cast<int>(top.size());
        out.f.push_back(has ? as_double(top[static_cast<size_t>(j)].item) : std::numeric_limits<double>::quiet_NaN());
        out.i.push_back(has ? top[static_cast<size_t>(j)].count : 0);
      }
    });
  }

 private:
  static double as_double(uint64_t b) {
    double v;
    std::memcpy(&v, &b, sizeof v);
    return v;
  }
  static Counter* counters(uint8_t* s) { return reinterpret_cast<Counter*>(s + sizeof(int64_t)); }
  static const Counter* counters(const uint8_t* s) { return reinterpret_cast<const Counter*>(s + sizeof(int64_t)); }

  void init_state(uint8_t* s) const override { std::memset(s, 0, bytes_); }
  void add(uint8_t* s, double v) const override {
    int64_t& used = *reinterpret_cast<int64_t*>(s);
    Counter* c = counters(s);
    const uint64_t item = item_bits(v);
    for (int64_t j = 0; j < used; ++j) {
      if (c[j].item == item) {
        ++c[j].count;
        return;
      }
    }
    if (used < cap_) {
      c[used++] = {item, 1};
      return;
    }
    // Full and new: every counter (and the new item's) loses one; zeros leave.
    int64_t w = 0;
    for (int64_t j = 0; j < used; ++j) {
      if (--c[j].count > 0) c[w++] = c[j];
    }
    used = w;
  }
  void merge(uint8_t* dst, const uint8_t* src) const override {
    int64_t& used = *reinterpret_cast<int64_t*>(dst);
    Counter* d = counters(dst);
    const Counter* s = counters(src);
    const int64_t sused = *reinterpret_cast<const int64_t*>(src);
    std::vector<Counter> all(d, d + used);
    for (int64_t j = 0; j < sused; ++j) {
      auto it = std::find_if(all.begin(), all.end(), [&](const Counter& c) { return c.item == s[j].item; });
      if (it != all.end()) {
        it->count += s[j].count;
      } else {
        all.push_back(s[j]);
      }
    }
    if (static_cast<int64_t>(all.size()) > cap_) {
      // Subtract the (cap+1)-th largest count from all; only positive counters stay.
      std::vector<int64_t> counts;
      for (const Counter& c : all) counts.push_back(c.count);
      std::nth_element(counts.begin(), counts.begin() + cap_, counts.end(), std::greater<int64_t>());
      const int64_t cut = counts[static_cast<size_t>(cap_)];
      size_t w = 0;
      for (const Counter& c : all) {
        if (c.count > cut) all[w++] = {c.item, c.count - cut};
      }
      all.resize(w);
    }
    used = static_cast<int64_t>(all.size());
    std::copy(all.begin(), all.end(), d);
  }

  int k_;
  int64_t cap_;
};

/// An int64 handle per state row naming an accumulator kept in Python. The value column the
/// engine sees for this aggregation is the event's global sequence number (from 1), which
/// doubles as the handle of the accumulator the event creates. The column appends to its
/// log, in order, one triple per operation:
///   (0, handle, seq)  event `seq` goes into `handle` (new when handle == seq)
///   (1, dst, src)     accumulator src merges into dst (session merges)
///   (2, row, handle)  output row `row` of this call combines `handle` (in slice order)
/// Emitted values are placeholders the Python side fills after replaying the log.
class HandleColumn final : public AggColumn {
 public:
  HandleColumn() : AggColumn(0) {}
  bool is_int() const override { return false; }
  size_t state_bytes() const override { return sizeof(int64_t); }
  size_t state_align() const override { return 8; }
  void init(uint8_t* row) const override { std::memset(row + offset_, 0, sizeof(int64_t)); }

  void update(const StateTable& t, const Segment& seg, const double* values, int64_t) const override {
    for (int64_t i = seg.begin; i < seg.end; ++i) {
      if (!seg.all_accepted && seg.status[i] != 0) continue;
      add(t.data + seg.rows[i] * t.row_bytes + offset_, values[i]);
    }
  }
  void update_one(uint8_t* row, double value, int64_t) const override { add(row + offset_, value); }
  void combine_rows(uint8_t* dst, const uint8_t* src) const override {
    int64_t& d = *reinterpret_cast<int64_t*>(dst + offset_);
    const int64_t s = *reinterpret_cast<const int64_t*>(src + offset_);
    if (s == 0) return;
    if (d == 0) {
      d = s;  // the source row is released by the merge, so the handle moves
      return;
    }
    log(1, d, s);
  }
  void emit(const StateTable& t, const int64_t* pos, int64_t npos, const int32_t* slots, int64_t nrows,
            OutColumn& out) const override {
    out.is_int = false;
    const int64_t first = static_cast<int64_t>(out.f.size());
    for (int64_t r = 0; r < nrows; ++r) {
      for (int64_t j = 0; j < npos; ++j) {
        const int64_t h = *reinterpret_cast<const int64_t*>(t.row(pos[j], slots[r]) + offset_);
        if (h != 0) log(2, first + r, h);
      }
      out.f.push_back(0.0);
    }
  }

  /// The log since the last take, as (n, 3) triples.
  std::vector<int64_t> take_log() const {
    std::vector<int64_t> l;
    l.swap(log_);
    return l;
  }

  /// Nonzero handles among `nrows` rows of `row_bytes` (the engine's whole state).
  std::vector<int64_t> live(const uint8_t* data, int64_t nrows, int64_t row_bytes) const {
    std::vector<int64_t> h;
    for (int64_t r = 0; r < nrows; ++r) {
      const int64_t v = *reinterpret_cast<const int64_t*>(data + r * row_bytes + offset_);
      if (v != 0) h.push_back(v);
    }
    return h;
  }

 private:
  void add(uint8_t* s, double value) const {
    int64_t& h = *reinterpret_cast<int64_t*>(s);
    if (!(value >= 1.0 && value <= 9.0e15)) return;  // not a sequence number (the caller's bug): no UB
    const auto seq = static_cast<int64_t>(value);
    if (h == 0) h = seq;
    log(0, h, seq);
  }
  void log(int64_t op, int64_t a, int64_t b) const {
    log_.push_back(op);
    log_.push_back(a);
    log_.push_back(b);
  }
  mutable std::vector<int64_t> log_;
};

}  // namespace pystream
