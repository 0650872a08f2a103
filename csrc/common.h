/// common.h — integer time arithmetic shared by every part of the core.
///
/// Time is int64 nanoseconds since the Unix epoch. To keep every derived quantity
/// (window end, cleanup time = end - 1 + allowed_lateness, watermark + max_future)
/// representable without overflow checks in the inner loops, the boundary enforces:
///
///   |timestamp| <= kMaxAbsTime (2^62 ns, 1823-11-12 .. 2116-02-20)
///   0 <= every duration (size, slide, lateness, out-of-orderness, max_future) <= kMaxDuration (2^60 ns)
///
/// so that any sum of one timestamp and three durations stays below 2^62 + 3 * 2^60 < 2^63.
/// Kernels may then use plain arithmetic; only the boundary checks ranges.
#pragma once

#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <new>
#include <stdexcept>
#include <utility>
#include <string>

namespace pystream {

constexpr int64_t kMaxAbsTime = int64_t{1} << 62;
constexpr int64_t kMaxDuration = int64_t{1} << 60;
/// Watermark meaning "no watermark yet": below every valid timestamp and window end.
constexpr int64_t kNoWatermark = -(int64_t{1} << 62) - (int64_t{1} << 61) - 1;
/// Watermark after end of input: above every cleanup time a valid window can have.
constexpr int64_t kEndWatermark = (int64_t{1} << 62) + (int64_t{1} << 61) + (int64_t{1} << 60);

/// Floor division for a positive divisor, correct for negative numerators
/// (C++ `/` truncates toward zero). The one helper every window computation uses.
inline int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

inline int64_t floor_mod(int64_t a, int64_t b) { return a - floor_div(a, b) * b; }

inline int64_t gcd64(int64_t a, int64_t b) {
  while (b != 0) {
    int64_t t = a % b;
    a = b;
    b = t;
  }
  return a;
}

/// Division of 64-bit unsigned numbers by a fixed divisor through a multiply-high:
/// q0 = (n * floor(2^64 / d)) >> 64 is floor(n / d) or one less (the reciprocal's error is
/// below n / 2^64 < 1), so one compare fixes it. A hardware 64-bit divide costs 4-10x more
/// and would be the most expensive instruction per event.
class FastDiv {
 public:
  FastDiv() = default;
  explicit FastDiv(uint64_t d) : d_(d), m_(d == 1 ? 0 : static_cast<uint64_t>((__uint128_t{1} << 64) / d)) {}
  uint64_t div(uint64_t n) const {
    if (d_ == 1) return n;
    uint64_t q = static_cast<uint64_t>((static_cast<__uint128_t>(n) * m_) >> 64);
    if (n - q * d_ >= d_) ++q;
    return q;
  }
  uint64_t divisor() const { return d_; }
  uint64_t magic() const { return m_; }

 private:
  uint64_t d_ = 1;
  uint64_t m_ = 0;
};

/// floor((t - origin) / g) for t >= origin, via FastDiv. The origin is an aligned instant at or
/// below every valid timestamp, so the numerator is never negative.
class SliceIndexer {
 public:
  SliceIndexer() = default;
  SliceIndexer(int64_t g, int64_t offset) : g_(g), offset_(offset), fd_(static_cast<uint64_t>(g)) {
    // The lowest aligned slice start at or below -kMaxAbsTime.
    origin_slice_ = floor_div(-kMaxAbsTime - offset, g);
    origin_ = origin_slice_ * g + offset;
  }
  int64_t slice_of(int64_t t) const {
    // Unsigned arithmetic: the distance from the origin can exceed 2^63 (never 2^64), and the
    // final sum is back in int64 range.
    uint64_t q = fd_.div(static_cast<uint64_t>(t) - static_cast<uint64_t>(origin_));
    return static_cast<int64_t>(static_cast<uint64_t>(origin_slice_) + q);
  }
  int64_t slice_start(int64_t k) const { return k * g_ + offset_; }
  int64_t width() const { return g_; }
  int64_t origin() const { return origin_; }
  int64_t origin_slice() const { return origin_slice_; }
  const FastDiv& divider() const { return fd_; }

 private:
  int64_t g_ = 1;
  int64_t offset_ = 0;
  FastDiv fd_;
  int64_t origin_slice_ = 0;
  int64_t origin_ = 0;
};

/// A zero-initialised, 2 MiB-aligned buffer that asks the kernel for transparent huge pages.
/// Keyed window state is accessed at random; with 4 KiB pages every access to a 10+ MB
/// table is also a likely TLB miss. Falls back to ordinary pages where THP is unavailable.
class HugeBuffer {
 public:
  HugeBuffer() = default;
  explicit HugeBuffer(size_t bytes) {
    if (bytes == 0) return;
    constexpr size_t kHuge = size_t{1} << 21;
    // Below one huge page, ordinary pages: a fresh 2 MiB page costs ~100 us to zero, which
    // small engines (one per key group in the Ray runtime) would pay on every growth.
    const size_t align = bytes >= kHuge ? kHuge : 64;
    size_ = (bytes + align - 1) / align * align;
    void* p = std::aligned_alloc(align, size_);
    if (p == nullptr) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    if (align == kHuge) madvise(p, size_, MADV_HUGEPAGE);
#endif
    data_ = static_cast<uint8_t*>(p);
  }
  HugeBuffer(const HugeBuffer&) = delete;
  HugeBuffer& operator=(const HugeBuffer&) = delete;
  HugeBuffer(HugeBuffer&& o) noexcept : data_(o.data_), size_(o.size_) { o.data_ = nullptr; o.size_ = 0; }
  HugeBuffer& operator=(HugeBuffer&& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    return *this;
  }
  ~HugeBuffer() { std::free(data_); }
  uint8_t* data() const { return data_; }

 private:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

/// The splitmix64 finalizer: a bijection on 64 bits with full avalanche (hash tables, sketches).
inline uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

[[noreturn]] inline void fail(const std::string& msg) { throw std::invalid_argument(msg); }

}  // namespace pystream
