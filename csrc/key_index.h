/// key_index.h — incremental interner: int64 key -> dense slot (int32), first-seen order.
///
/// Layout: an open-addressing table with linear probing (buckets of key and slot side by side,
/// so a lookup touches one cache line; power-of-two capacity, load <= 1/2, empty bucket =
/// slot -1) holds every key. Slots are handed out in order of first appearance and never
/// change, so window state can be struct-of-arrays indexed by slot and a checkpoint stores the
/// key list once (`keys()` is slot -> key).
///
/// Fast path: meter ids are usually small dense integers. A direct table `direct_[k]` caches
/// the slot of every key 0 <= k < direct_.size(); a miss falls back to the hash table and then
/// fills the cache. The cache grows while keys stay below kDirectLimit and within
/// kDirectSpread times the keys seen (before a batch, within 4 per row of it and key held, so
/// dense ids take it from their first batch), so memory stays proportional to the keys and
/// rows: under 128 bytes per key (16 ids of 4 bytes, the cache's size a power of two), and
/// 32 KB. The multiple is 16, not smaller, because an engine often holds a spread share of a
/// dense id range: a Ray window actor owns the key groups of one in p meters, so its ids lie p
/// apart on average (at 4 the cache stopped at parallelism 4, and at 8 every lookup went to
/// the hash table: windowing 29-32 -> 22 ns per row per actor with the cache, in process,
/// 100k meters, 2-core VM).
///
/// Batch lookup hashes each key once and prefetches the bucket a few rows ahead; random
/// access to the table, not hashing, is what costs (see DESIGN.md, "where the time goes").
/// Complexity: O(1) expected per key; growth rehashes in O(keys).
#pragma once

#include <cstdint>
#include <unordered_set>
#include <vector>

#include "common.h"

namespace pystream {

class KeyIndex {
 public:
  static constexpr int64_t kDirectLimit = int64_t{1} << 26;
  static constexpr int64_t kDirectSpread = 16;  // see the header
  static constexpr int64_t kDirectRows = 4;     // before a batch: ids per row of it and keys held
  static constexpr int64_t kMaxKeys = (int64_t{1} << 31) - 1;

  KeyIndex() { rehash(1024); }

  int64_t size() const { return static_cast<int64_t>(key_of_slot_.size()); }
  /// Keys the direct cache covers: 0 <= k < direct_size() (0: none; for tests).
  int64_t direct_size() const { return static_cast<int64_t>(direct_.size()); }
  const std::vector<int64_t>& keys() const { return key_of_slot_; }

  /// Slot of every key in `keys[0..n)`, inserting unseen keys. Throws before inserting anything
  /// if the batch could push the table past kMaxKeys.
  void intern(const int64_t* keys, int64_t n, int32_t* out) {
    if (size() + n > kMaxKeys && size() + count_new(keys, n) > kMaxKeys) {
      fail("key overflow: a keyed operator holds at most 2147483647 distinct keys; this batch would exceed it");
    }
    // Dense ids take the cache from their first batch (bounded by the batch's rows, 4 per row:
    // one key repeated over a batch stays small); after the batch, by the keys now held.
    int64_t hi = -1;
    for (int64_t i = 0; i < n; ++i) hi = keys[i] > hi ? keys[i] : hi;
    maybe_grow_direct(hi, kDirectRows * (size() + n) + 4096);
    const int64_t dsize = static_cast<int64_t>(direct_.size());
    int32_t* direct = direct_.data();
    constexpr int64_t kAhead = 8;
    for (int64_t i = 0; i < n; ++i) {
      if (i + kAhead < n) {
        int64_t ka = keys[i + kAhead];
        if (static_cast<uint64_t>(ka) < static_cast<uint64_t>(dsize)) {
          __builtin_prefetch(direct + ka);
        } else {
          __builtin_prefetch(table_.data() + (hash(ka) & mask_));
        }
      }
      int64_t k = keys[i];
      if (static_cast<uint64_t>(k) < static_cast<uint64_t>(dsize)) {
        int32_t s = direct[k];
        if (s < 0) {
          s = find_or_insert(k);
          direct[k] = s;
        }
        out[i] = s;
      } else {
        out[i] = find_or_insert(k);
      }
    }
    maybe_grow_direct(hi, kDirectSpread * size() + 4096);  // for the next batches
  }

  /// Rebuilds the index from a slot -> key list (restore). Keys must be distinct; on a
  /// duplicate the index is left as it was.
  void assign(const std::vector<int64_t>& keys) {
    KeyIndex fresh;
    int64_t cap = 1024;
    while (cap < 2 * static_cast<int64_t>(keys.size()) + 2) cap <<= 1;
    fresh.rehash(cap);
    for (int64_t k : keys) {
      int64_t before = fresh.size();
      fresh.find_or_insert(k);
      if (fresh.size() == before) fail("corrupt snapshot: duplicate key in key index");
    }
    *this = std::move(fresh);
  }

  bool contains(int64_t k) const { return find(k) >= 0; }

  /// The slot of key k, or -1 (never inserts: for queries).
  int32_t find(int64_t k) const {
    for (uint64_t b = hash(k) & mask_; table_[b].slot >= 0; b = (b + 1) & mask_) {
      if (table_[b].key == k) return table_[b].slot;
    }
    return -1;
  }

 private:
  static uint64_t hash(int64_t k) {
    return mix64(static_cast<uint64_t>(k));  // full avalanche: sequential ids spread over the table
  }

  /// Distinct keys of the batch not yet in the table (only asked near kMaxKeys).
  int64_t count_new(const int64_t* keys, int64_t n) const {
    std::unordered_set<int64_t> fresh;
    for (int64_t i = 0; i < n; ++i) {
      if (!contains(keys[i])) fresh.insert(keys[i]);
    }
    return static_cast<int64_t>(fresh.size());
  }


  int32_t find_or_insert(int64_t k) {
    uint64_t b = hash(k) & mask_;
    while (true) {
      const Bucket& e = table_[b];
      if (e.slot < 0) break;
      if (e.key == k) return e.slot;
      b = (b + 1) & mask_;
    }
    int32_t s = static_cast<int32_t>(key_of_slot_.size());
    key_of_slot_.push_back(k);
    table_[b] = Bucket{k, s};
    if (2 * static_cast<uint64_t>(key_of_slot_.size()) > mask_ + 1) rehash(2 * (mask_ + 1));
    return s;
  }

  void rehash(uint64_t cap) {
    table_.assign(cap, Bucket{});
    mask_ = cap - 1;
    for (size_t s = 0; s < key_of_slot_.size(); ++s) {
      uint64_t b = hash(key_of_slot_[s]) & mask_;
      while (table_[b].slot >= 0) b = (b + 1) & mask_;
      table_[b] = Bucket{key_of_slot_[s], static_cast<int32_t>(s)};
    }
  }

  /// Grows the direct cache to cover a batch's largest key `hi` when that key is below
  /// `budget` (dense ids, or a spread share of them); sparse or huge ids stay in the hash
  /// table. After a batch the budget counts distinct keys, not rows: with 16 per row, one key
  /// of id 10^6 repeated over a 65k-row batch took a 4 MB cache.
  void maybe_grow_direct(int64_t hi, int64_t budget) {
    const int64_t have = static_cast<int64_t>(direct_.size());
    if (hi < have) return;
    if (hi >= kDirectLimit || hi >= budget) return;
    int64_t cap = have > 0 ? have : 4096;
    while (cap <= hi) cap <<= 1;
    direct_.resize(static_cast<size_t>(cap), -1);
    // Keys already in the hash table that the cache now covers are filled lazily on first hit.
  }

  std::vector<int64_t> key_of_slot_;
  struct Bucket {
    int64_t key = 0;
    int32_t slot = -1;  // -1: empty
  };
  std::vector<Bucket> table_;
  uint64_t mask_ = 0;
  std::vector<int32_t> direct_;
};

}  // namespace pystream
