/// watermark.h — bounded out-of-orderness watermark (Flink's convention).
///
/// After seeing max event time M the watermark is W = M - ooo - 1: every event still to come
/// is assumed to have t > W. It is monotone by construction (`set` ignores regressions), so
/// a caller may offer any candidate. `has()` is false until the first event; the first event
/// is judged against no watermark at all.
#pragma once

#include <cstdint>

#include "common.h"

namespace pystream {

class Watermark {
 public:
  explicit Watermark(int64_t ooo) : ooo_(ooo) {}
  bool has() const { return has_; }
  int64_t value() const { return has_ ? w_ : kNoWatermark; }
  /// The watermark an event at t would imply on its own.
  int64_t candidate(int64_t t) const { return t - ooo_ - 1; }
  void set(int64_t w) {
    if (!has_ || w > w_) {
      w_ = w;
      has_ = true;
    }
  }

 private:
  int64_t ooo_;
  int64_t w_ = kNoWatermark;
  bool has_ = false;
};

}  // namespace pystream
