/// out_buffer.h — growable output columns whose memory is recycled through a small pool.
///
/// Every batch hands its output columns to NumPy (no copy: the array's base capsule owns the
/// buffer). Freshly mapped memory is expensive to touch for the first time (page faults and
/// zeroing: measured at ~28% of kernel time on the meter benchmark when each batch's output
/// went to new pages). When NumPy frees an output array its buffer goes back to this pool, so
/// a streaming flow that drops its outputs reuses warm memory batch after batch. The pool is
/// bounded (kMaxPooledBytes); beyond that buffers are simply freed.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <type_traits>
#include <vector>

namespace pystream {

class BufferPool {
 public:
  static constexpr size_t kMaxPooledBytes = size_t{256} << 20;
  static constexpr size_t kMaxBuffers = 64;

  static BufferPool& instance() {
    // Leaked on purpose: capsules may release buffers during interpreter shutdown, after
    // static destructors would have run.
    static BufferPool* pool = new BufferPool();
    return *pool;
  }

  /// A buffer of at least `bytes` (its real size is returned in `got`).
  void* acquire(size_t bytes, size_t& got) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      size_t best = free_.size();
      for (size_t i = 0; i < free_.size(); ++i) {
        if (free_[i].bytes >= bytes && (best == free_.size() || free_[i].bytes < free_[best].bytes)) best = i;
      }
      if (best != free_.size()) {
        Entry e = free_[best];
        free_[best] = free_.back();
        free_.pop_back();
        pooled_ -= e.bytes;
        got = e.bytes;
        return e.ptr;
      }
    }
    void* p = std::malloc(bytes);
    if (p == nullptr) throw std::bad_alloc();
    got = bytes;
    return p;
  }

  void release(void* p, size_t bytes) {
    if (p == nullptr) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (bytes >= 4096 && pooled_ + bytes <= kMaxPooledBytes && free_.size() < kMaxBuffers) {
        free_.push_back({p, bytes});
        pooled_ += bytes;
        return;
      }
    }
    std::free(p);
  }

 private:
  struct Entry {
    void* ptr;
    size_t bytes;
  };
  std::mutex mu_;
  std::vector<Entry> free_;
  size_t pooled_ = 0;
};

/// Bytes that output columns copied because they outgrew their buffer (process-wide, every
/// engine): an engine that sizes its output up front copies none. Diagnostics and tests.
inline std::atomic<uint64_t>& regrowth_bytes() {
  static std::atomic<uint64_t> bytes{0};
  return bytes;
}

/// A minimal vector of trivially copyable T on pooled memory.
template <class T>
class OutBuf {
  static_assert(std::is_trivially_copyable<T>::value, "output columns hold plain numbers");

 public:
  OutBuf() = default;
  OutBuf(const OutBuf&) = delete;
  OutBuf& operator=(const OutBuf&) = delete;
  OutBuf(OutBuf&& o) noexcept : data_(o.data_), size_(o.size_), cap_bytes_(o.cap_bytes_) {
    o.data_ = nullptr;
    o.size_ = o.cap_bytes_ = 0;
  }
  OutBuf& operator=(OutBuf&& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    std::swap(cap_bytes_, o.cap_bytes_);
    return *this;
  }
  ~OutBuf() { BufferPool::instance().release(data_, cap_bytes_); }

  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  T* data() { return data_; }
  const T* data() const { return data_; }
  T& operator[](size_t i) { return data_[i]; }
  const T& operator[](size_t i) const { return data_[i]; }
  T* begin() { return data_; }
  T* end() { return data_ + size_; }

  void reserve(size_t n) {
    if (n * sizeof(T) <= cap_bytes_) return;
    size_t got = 0;
    T* fresh = static_cast<T*>(BufferPool::instance().acquire(n * sizeof(T), got));
    if (size_) {
      std::memcpy(static_cast<void*>(fresh), data_, size_ * sizeof(T));
      regrowth_bytes().fetch_add(size_ * sizeof(T), std::memory_order_relaxed);
    }
    BufferPool::instance().release(data_, cap_bytes_);
    data_ = fresh;
    cap_bytes_ = got;
  }
  /// Room for n elements, growing at least twofold where it grows (copies stay linear).
  void reserve_growing(size_t n) {
    if (n * sizeof(T) > cap_bytes_) reserve(n > 2 * size_ ? n : 2 * size_);
  }
  /// Grows to n elements (new elements uninitialised: callers write them).
  void resize(size_t n) {
    reserve_growing(n);
    size_ = n;
  }
  void push_back(T v) {
    resize(size_ + 1);
    data_[size_ - 1] = v;
  }
  void append(size_t n, T v) {
    const size_t at = size_;
    resize(size_ + n);
    std::fill(data_ + at, data_ + size_, v);
  }
  /// Gives up the buffer: (pointer, capacity in bytes); the caller must hand it back to the pool.
  T* release(size_t& cap_bytes) {
    T* p = data_;
    cap_bytes = cap_bytes_;
    data_ = nullptr;
    size_ = cap_bytes_ = 0;
    return p;
  }

 private:
  T* data_ = nullptr;
  size_t size_ = 0;
  size_t cap_bytes_ = 0;
};

}  // namespace pystream
