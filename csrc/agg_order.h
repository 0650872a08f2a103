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

/// Value of the event that wins on event time: the smallest (kLast = false) or the largest
/// (kLast = true). Ties go to the earlier arrival for first, the later arrival for last.
template <bool kLast>
struct ByTimeAgg {
  struct State {
    int64_t t;
    double v;
  };
  using Out = double;
  static constexpr bool kUsesValue = true;
  static constexpr bool kUsesTime = true;
  static constexpr int64_t kNone = kLast ? std::numeric_limits<int64_t>::min() : std::numeric_limits<int64_t>::max();
  static bool wins(int64_t t, int64_t held) { return kLast ? t >= held : t < held; }
  static void init(State& s) { s = {kNone, std::numeric_limits<double>::quiet_NaN()}; }
  static void update(State& s, double v, int64_t t) {
    if (wins(t, s.t)) s = {t, v};
  }
  static void combine(State& a, const State& b) {
    if (b.t != kNone && wins(b.t, a.t)) a = b;
  }
  static Out finalize(const State& s, const AggParams&) { return s.v; }
};

using FirstAgg = ByTimeAgg<false>;
using LastAgg = ByTimeAgg<true>;

}  // namespace pystream
