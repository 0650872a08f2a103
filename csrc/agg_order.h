/// agg_order.h — first and last value by event time (not by arrival).
///
/// State keeps the timestamp that won so far. Ties on event time go to the earlier arrival
/// for `first` and to the later arrival for `last`, so both are deterministic under disorder.
/// Slices of a window cover disjoint time ranges, so `combine` never sees a tie.
#pragma once

#include <cstdint>
#include <limits>

#include "agg_basic.h"

namespace pystream {

struct FirstAgg {
  struct State {
    int64_t t;
    double v;
  };
  using Out = double;
  static constexpr bool kUsesValue = true;
  static constexpr bool kUsesTime = true;
  static void init(State& s) { s = {std::numeric_limits<int64_t>::max(), std::numeric_limits<double>::quiet_NaN()}; }
  static void update(State& s, double v, int64_t t) {
    if (t < s.t) s = {t, v};
  }
  static void combine(State& a, const State& b) {
    if (b.t < a.t) a = b;
  }
  static Out finalize(const State& s, const AggParams&) { return s.v; }
};

struct LastAgg {
  struct State {
    int64_t t;
    double v;
  };
  using Out = double;
  static constexpr bool kUsesValue = true;
  static constexpr bool kUsesTime = true;
  static void init(State& s) { s = {std::numeric_limits<int64_t>::min(), std::numeric_limits<double>::quiet_NaN()}; }
  static void update(State& s, double v, int64_t t) {
    if (t >= s.t) s = {t, v};
  }
  static void combine(State& a, const State& b) {
    if (b.t >= a.t && b.t != std::numeric_limits<int64_t>::min()) a = b;
  }
  static Out finalize(const State& s, const AggParams&) { return s.v; }
};

}  // namespace pystream
