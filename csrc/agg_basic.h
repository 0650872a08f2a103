/// agg_basic.h — count, sum, min, max, mean as policy structs.
///
/// Every policy has a POD `State`, and static `init` (the identity of `combine`), `update`
/// (one event), `combine` (merge a later slice into an accumulator) and `finalize`. The one
/// kernel in agg_column.h instantiates them; a new aggregation is a struct here, an enum
/// value and a line in make_column().
///
/// NaN follows NumPy: a NaN value makes sum/mean/min/max of its window NaN. Sums are
/// compensated: Knuth's TwoSum (TAOCP vol. 2, 4.2.2) recovers the exact rounding error of
/// every addition without a branch (Neumaier's |s| >= |v| test mispredicted on every
/// slice's first event and cost ~3 ns per event), so long windows of small readings keep
/// their precision; infinities short-circuit the compensation term. Min/max are written as
/// minsd/maxsd selects with a branch only on NaN values.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

namespace pystream {

/// Parameters of an aggregation: ddof for var/std; `iparam`/`fparam` for sketches (precision;
/// bins and relative accuracy; k and capacity); `share`: the index of an earlier spec whose
/// state this one reads instead of keeping its own (several quantiles of one sketch).
struct AggParams {
  int ddof = 1;
  int iparam = 0;
  int iparam2 = 0;
  double fparam = 0.0;
  double fparam2 = 0.0;
  int share = -1;
};

/// s + v with its exact rounding error accumulated into c (TwoSum, branch-free).
inline void compensated_add(double& s, double& c, double v) {
  const double t = s + v;
  const double bp = t - s;
  c += (s - (t - bp)) + (v - bp);
  s = t;
}

inline double compensated_result(double s, double c) { return std::isfinite(s) ? s + c : s; }

struct CountAgg {
  using State = int64_t;
  using Out = int64_t;
  static constexpr bool kUsesValue = false;
  static constexpr bool kUsesTime = false;
  static void init(State& s) { s = 0; }
  static void update(State& s, double, int64_t) { ++s; }
  static void combine(State& a, const State& b) { a += b; }
  static Out finalize(const State& s, const AggParams&) { return s; }
};

struct SumAgg {
  struct State {
    double s, c;
  };
  using Out = double;
  static constexpr bool kUsesValue = true;
  static constexpr bool kUsesTime = false;
  static void init(State& s) { s = {0.0, 0.0}; }
  static void update(State& s, double v, int64_t) { compensated_add(s.s, s.c, v); }
  static void combine(State& a, const State& b) {
    compensated_add(a.s, a.c, b.s);
    a.c += b.c;
  }
  static Out finalize(const State& s, const AggParams&) { return compensated_result(s.s, s.c); }
};

struct MinAgg {
  using State = double;
  using Out = double;
  static constexpr bool kUsesValue = true;
  static constexpr bool kUsesTime = false;
  static void init(State& s) { s = std::numeric_limits<double>::infinity(); }
  // Take v when it is smaller or NaN; keep s on ties and when s is NaN (NaN is sticky). The
  // first select is minsd; the second branches only on a NaN value, which predicts perfectly
  // (a select on `v < s` compiled to a branch that mispredicted on every new minimum).
  static void update(State& s, double v, int64_t) {
    const double m = v < s ? v : s;
    s = v != v ? v : m;
  }
  static void combine(State& a, const State& b) { update(a, b, 0); }
  static Out finalize(const State& s, const AggParams&) { return s; }
};

struct MaxAgg {
  using State = double;
  using Out = double;
  static constexpr bool kUsesValue = true;
  static constexpr bool kUsesTime = false;
  static void init(State& s) { s = -std::numeric_limits<double>::infinity(); }
  static void update(State& s, double v, int64_t) {  // as MinAgg::update
    const double m = v > s ? v : s;
    s = v != v ? v : m;
  }
  static void combine(State& a, const State& b) { update(a, b, 0); }
  static Out finalize(const State& s, const AggParams&) { return s; }
};

struct MeanAgg {
  struct State {
    double s, c;
    int64_t n;
  };
  using Out = double;
  static constexpr bool kUsesValue = true;
  static constexpr bool kUsesTime = false;
  static void init(State& s) { s = {0.0, 0.0, 0}; }
  static void update(State& s, double v, int64_t) {
    compensated_add(s.s, s.c, v);
    ++s.n;
  }
  static void combine(State& a, const State& b) {
    compensated_add(a.s, a.c, b.s);
    a.c += b.c;
    a.n += b.n;
  }
  static Out finalize(const State& s, const AggParams&) {
    return s.n > 0 ? compensated_result(s.s, s.c) / static_cast<double>(s.n)
                   : std::numeric_limits<double>::quiet_NaN();
  }
};

}  // namespace pystream
