/// timer_queue.h — a min-priority queue for timers that are pushed a little ahead of the
/// watermark and re-pushed when their deadline moves (session ends), as a bucketed ring.
///
/// Time is cut into buckets of 2^shift ns. The next kBuckets - 1 buckets after the current one
/// are unsorted vectors (push = append); later entries wait in an overflow heap. When the
/// current bucket is used up, the next non-empty one is sorted once and popped from the front
/// in order; entries pushed into the current bucket (or before it) after that go to a small
/// side heap, and the minimum is the smaller of the two fronts. An empty ring jumps straight to
/// the overflow's first bucket, so a watermark leap to the end of time costs nothing per empty
/// bucket. Measured on the 20-minute session benchmark, a single binary heap of ~100k timers
/// spent most of its time in cache-missing sift comparisons; a heap per bucket (a few thousand
/// entries) spent its time in pop_heap's sifts; one sort per bucket reads it sequentially.
///
/// Invariant: every entry of the sorted bucket (from pos_) and of the side heap is in a bucket
/// <= cur_, every ring entry in (cur_, cur_ + kBuckets), every overflow entry at or beyond
/// cur_ + kBuckets.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <vector>

namespace pystream {

template <class T>  // T has int64_t `time` and a strict weak order `operator>`
class TimerQueue {
 public:
  static constexpr int64_t kBuckets = 256;

  explicit TimerQueue(int shift = 0) : shift_(shift), ring_(kBuckets) {}

  bool empty() const { return size_ == 0; }
  size_t size() const { return size_; }

  void push(const T& e) {
    const int64_t b = e.time >> shift_;
    if (size_ == 0) cur_ = b;
    ++size_;
    if (b <= cur_) {
      heap_push(side_, e);
    } else if (b < cur_ + kBuckets) {
      ring_[static_cast<size_t>(b & (kBuckets - 1))].push_back(e);
      ++ring_count_;
    } else {
      heap_push(over_, e);
    }
  }

  /// The minimum; the queue must not be empty.
  const T& top() {
    normalize();
    return from_sorted() ? sorted_[pos_] : side_.front();
  }

  void pop() {
    normalize();
    if (from_sorted()) {
      ++pos_;
    } else {
      std::pop_heap(side_.begin(), side_.end(), std::greater<T>());
      side_.pop_back();
    }
    --size_;
  }

  void clear() {
    for (auto& r : ring_) r.clear();
    over_.clear();
    side_.clear();
    sorted_.clear();
    pos_ = 0;
    size_ = ring_count_ = 0;
  }

 private:
  static void heap_push(std::vector<T>& h, const T& e) {
    h.push_back(e);
    std::push_heap(h.begin(), h.end(), std::greater<T>());
  }

  bool sorted_left() const { return pos_ < sorted_.size(); }

  /// Whether the minimum is the sorted bucket's front (else the side heap's top).
  bool from_sorted() const { return sorted_left() && (side_.empty() || side_.front() > sorted_[pos_]); }

  /// Makes the current bucket (sorted part or side heap) hold the minimum.
  void normalize() {
    while (!sorted_left() && side_.empty()) {
      sorted_.clear();
      pos_ = 0;
      if (ring_count_ == 0) {
        cur_ = over_.front().time >> shift_;  // size_ > 0: the overflow holds the rest
      } else {
        ++cur_;
        std::vector<T>& next = ring_[static_cast<size_t>(cur_ & (kBuckets - 1))];
        ring_count_ -= next.size();
        sorted_.swap(next);  // the emptied vector's capacity serves the ring again
        std::sort(sorted_.begin(), sorted_.end(), [](const T& a, const T& b) { return b > a; });
      }
      // The ring now reaches one bucket further: take the overflow entries it covers.
      while (!over_.empty() && (over_.front().time >> shift_) < cur_ + kBuckets) {
        std::pop_heap(over_.begin(), over_.end(), std::greater<T>());
        const T e = over_.back();
        over_.pop_back();
        const int64_t b = e.time >> shift_;
        if (b <= cur_) {
          heap_push(side_, e);
        } else {
          ring_[static_cast<size_t>(b & (kBuckets - 1))].push_back(e);
          ++ring_count_;
        }
      }
    }
  }

  int shift_;
  int64_t cur_ = 0;
  std::vector<std::vector<T>> ring_;
  std::vector<T> sorted_;  // the current bucket, sorted when it became current; popped from pos_
  size_t pos_ = 0;
  std::vector<T> side_;  // a heap: entries pushed into the current bucket (or before it) since
  std::vector<T> over_;  // a heap
  size_t size_ = 0, ring_count_ = 0;
};

}  // namespace pystream
