/// agg_basic.h — count, sum, min, max, mean as policy structs.
///
/// Every policy has a POD `State`, and static `init` (the identity of `combine`), `update`
/// (one event), `combine` (merge a later slice into an accumulator) and `finalize`. The one
/// kernel in agg_column.h instantiates them; a new aggregation is a struct here, an enum
/// value and a line in make_column().
///
/// NaN follows NumPy: a NaN value makes sum/mean/min/max of its window NaN. Sums use
/// Neumaier's compensated summation (Neumaier 1974), so long windows of small readings
/// keep their precision; infinities short-circuit the compensation term.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

namespace pystream {

struct AggParams {
  int ddof = 1;
};

inline void neumaier_add(double& s, double& c, double v) {
  double t = s + v;
  c += (std::fabs(s) >= std::fabs(v)) ? (s - t) + v : (v - t) + s;
  s = t;
}

inline double neumaier_result(double s, double c) { return std::isfinite(s) ? s + c : s; }

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
  static void update(State& s, double v, int64_t) { neumaier_add(s.s, s.c, v); }
  static void combine(State& a, const State& b) {
    neumaier_add(a.s, a.c, b.s);
    a.c += b.c;
  }
  static Out finalize(const State& s, const AggParams&) { return neumaier_result(s.s, s.c); }
};

struct MinAgg {
  using State = double;
  using Out = double;
  static constexpr bool kUsesValue = true;
  static constexpr bool kUsesTime = false;
  static void init(State& s) { s = std::numeric_limits<double>::infinity(); }
  // `!(v >= s)` is true for v < s and for a NaN v; once s is NaN it stays NaN.
  static void update(State& s, double v, int64_t) { s = (!(v >= s) && !std::isnan(s)) ? v : s; }
  static void combine(State& a, const State& b) { update(a, b, 0); }
  static Out finalize(const State& s, const AggParams&) { return s; }
};

struct MaxAgg {
  using State = double;
  using Out = double;
  static constexpr bool kUsesValue = true;
  static constexpr bool kUsesTime = false;
  static void init(State& s) { s = -std::numeric_limits<double>::infinity(); }
  static void update(State& s, double v, int64_t) { s = (!(v <= s) && !std::isnan(s)) ? v : s; }
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
    neumaier_add(s.s, s.c, v);
    ++s.n;
  }
  static void combine(State& a, const State& b) {
    neumaier_add(a.s, a.c, b.s);
    a.c += b.c;
    a.n += b.n;
  }
  static Out finalize(const State& s, const AggParams&) {
    return s.n > 0 ? neumaier_result(s.s, s.c) / static_cast<double>(s.n)
                   : std::numeric_limits<double>::quiet_NaN();
  }
};

}  // namespace pystream
