/// timer_queue.h — a min-priority queue for timers that are pushed a little ahead of the
/// watermark and re-pushed when their deadline moves (session ends), as a bucketed ring.
///
/// Time is cut into buckets of 2^shift ns. The bucket holding the minimum ("current") is a
/// binary heap; the next kBuckets - 1 buckets are unsorted vectors (push = append); later
/// entries wait in an overflow heap. When the current bucket empties, the next non-empty one
/// is heapified (its entries were appended in O(1) each); an empty ring jumps straight to the
/// overflow's first bucket, so a watermark leap to the end of time costs nothing per empty
/// bucket. Measured on the 20-minute session benchmark, a single binary heap of ~100k timers
/// spent most of its time in cache-missing sift comparisons; here each push is an append and
/// pops work on a heap a few thousand entries large that stays in L2.
///
/// Invariant: every entry in the current heap is in a bucket <= cur_, every ring entry in
/// (cur_, cur_ + kBuckets), every overflow entry at or beyond cur_ + kBuckets. Entries pushed
/// with a bucket <= cur_ go into the current heap, so the minimum is always its top.
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
      heap_push(current(), e);
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
    return current().front();
  }

  void pop() {
    normalize();
    std::vector<T>& c = current();
    std::pop_heap(c.begin(), c.end(), std::greater<T>());
    c.pop_back();
    --size_;
  }

  void clear() {
    for (auto& r : ring_) r.clear();
    over_.clear();
    size_ = ring_count_ = 0;
  }

 private:
  std::vector<T>& current() { return ring_[static_cast<size_t>(cur_ & (kBuckets - 1))]; }

  static void heap_push(std::vector<T>& h, const T& e) {
    h.push_back(e);
    std::push_heap(h.begin(), h.end(), std::greater<T>());
  }

  /// Makes the current bucket the first non-empty one.
  void normalize() {
    while (current().empty()) {
      if (ring_count_ == 0) {
        cur_ = over_.front().time >> shift_;  // size_ > 0: the overflow holds the rest
      } else {
        ++cur_;
        ring_count_ -= current().size();
        std::make_heap(current().begin(), current().end(), std::greater<T>());
      }
      // The ring now reaches one bucket further: take the overflow entries it covers.
      while (!over_.empty() && (over_.front().time >> shift_) < cur_ + kBuckets) {
        std::pop_heap(over_.begin(), over_.end(), std::greater<T>());
        const T e = over_.back();
        over_.pop_back();
        const int64_t b = e.time >> shift_;
        if (b <= cur_) {
          heap_push(current(), e);
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
  std::vector<T> over_;  // a heap
  size_t size_ = 0, ring_count_ = 0;
};

}  // namespace pystream
