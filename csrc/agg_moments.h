/// agg_moments.h — variance and standard deviation from mergeable moments.
///
/// State (n, mean, M2) with Welford's update (Welford 1962) and Chan, Golub & LeVeque's
/// pairwise merge (1979): numerically stable, and merging two slices equals one pass over
/// both. `ddof` (default 1, the sample variance as in pandas) is applied in finalize; a window
/// with n <= ddof gives NaN.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "agg_basic.h"

namespace pystream {

struct VarAgg {
  struct State {
    double n, mean, m2;
  };
  using Out = double;
  static constexpr bool kUsesValue = true;
  static constexpr bool kUsesTime = false;
  static void init(State& s) { s = {0.0, 0.0, 0.0}; }
  static void update(State& s, double v, int64_t) {
    s.n += 1.0;
    double d = v - s.mean;
    s.mean += d / s.n;
    s.m2 += d * (v - s.mean);
  }
  static void combine(State& a, const State& b) {
    if (b.n == 0.0) return;
    if (a.n == 0.0) {
      a = b;
      return;
    }
    double n = a.n + b.n;
    double d = b.mean - a.mean;
    a.mean += d * (b.n / n);
    a.m2 += b.m2 + d * d * (a.n * b.n / n);
    a.n = n;
  }
  static Out finalize(const State& s, const AggParams& p) {
    if (s.n <= p.ddof) return std::numeric_limits<double>::quiet_NaN();
    // Clamp rounding below zero, but let NaN through (NumPy semantics).
    return (s.m2 < 0.0 ? 0.0 : s.m2) / (s.n - p.ddof);
  }
};

struct StdAgg : VarAgg {
  static Out finalize(const State& s, const AggParams& p) { return std::sqrt(VarAgg::finalize(s, p)); }
};

}  // namespace pystream
