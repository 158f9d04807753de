// The CPU output cache (see clif_cpu_cache.h) and the ops that control it.
#include "clif_cpu_cache.h"

#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <list>
#include <map>
#include <mutex>

namespace clif {
namespace {

struct Block {
  void* ptr;
  size_t bytes;
};

// A request takes the smallest free block of at least its size and at most 1/8 more, so that
// nearby sizes share blocks without wasting much.
class OutputCache final : public c10::Allocator {
 public:
  OutputCache() : limit_(int64_t(1024) << 20) {
    const char* mb = std::getenv("CLIF_KERNELS_CPU_CACHE_MB");
    if (mb == nullptr) return;
    char* end = nullptr;
    const long long v = std::strtoll(mb, &end, 10);
    if (end != mb && *end == '\0' && v >= 0 && v < (int64_t(1) << 40)) {
      limit_ = int64_t(v) << 20;
    } else {
      TORCH_WARN("CLIF_KERNELS_CPU_CACHE_MB must be a whole number of MiB >= 0, got '", mb,
                 "'; using 1024");
    }
  }

  c10::DataPtr allocate(size_t n) override {
    if (n < kMinCachedBytes) return c10::GetCPUAllocator()->allocate(n);
    Block* b = take(n);
    if (b == nullptr) b = new Block{c10::alloc_cpu(n), n};
    return {b->ptr, b, &OutputCache::release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(dest, src, count);
  }

  int64_t cached() {
    std::lock_guard<std::mutex> lock(mu_);
    return cached_;
  }

  int64_t empty() {
    std::lock_guard<std::mutex> lock(mu_);
    const int64_t freed = cached_;
    trim_locked(0);
    return freed;
  }

  int64_t set_limit(int64_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    const int64_t old = limit_;
    limit_ = bytes;
    trim_locked(limit_);
    return old;
  }

 private:
  static void release(void* ctx) {
    auto* cache = static_cast<OutputCache*>(cpu_output_cache());
    cache->give_back(static_cast<Block*>(ctx));
  }

  Block* take(size_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = by_size_.lower_bound(n);
    if (it == by_size_.end() || it->first > n + n / 8) return nullptr;
    Block* b = *it->second;
    lru_.erase(it->second);
    by_size_.erase(it);
    cached_ -= static_cast<int64_t>(b->bytes);
    return b;
  }

  void give_back(Block* b) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (static_cast<int64_t>(b->bytes) <= limit_) {
        trim_locked(limit_ - static_cast<int64_t>(b->bytes));
        lru_.push_back(b);
        by_size_.emplace(b->bytes, std::prev(lru_.end()));
        cached_ += static_cast<int64_t>(b->bytes);
        return;
      }
    }
    c10::free_cpu(b->ptr);
    delete b;
  }

  // Frees the least recently returned blocks until at most `target` bytes stay cached.
  void trim_locked(int64_t target) {
    while (cached_ > target && !lru_.empty()) {
      Block* b = lru_.front();
      auto range = by_size_.equal_range(b->bytes);
      for (auto it = range.first; it != range.second; ++it) {
        if (*it->second == b) {
          by_size_.erase(it);
          break;
        }
      }
      lru_.pop_front();
      cached_ -= static_cast<int64_t>(b->bytes);
      c10::free_cpu(b->ptr);
      delete b;
    }
  }

  std::mutex mu_;
  std::list<Block*> lru_;  // least recently returned first
  std::multimap<size_t, std::list<Block*>::iterator> by_size_;
  int64_t cached_ = 0;
  int64_t limit_;
};

}  // namespace

c10::Allocator* cpu_output_cache() {
  static OutputCache* cache = new OutputCache();
  return cache;
}

int64_t cpu_cache_cached_bytes() { return static_cast<OutputCache*>(cpu_output_cache())->cached(); }

int64_t cpu_cache_empty() { return static_cast<OutputCache*>(cpu_output_cache())->empty(); }

int64_t cpu_cache_set_limit(int64_t bytes) {
  TORCH_CHECK(bytes >= 0, "limit must be >= 0 bytes, got ", bytes);
  return static_cast<OutputCache*>(cpu_output_cache())->set_limit(bytes);
}

}  // namespace clif

TORCH_LIBRARY_FRAGMENT(clif_fused, m) {
  // The CPU output cache: bytes held, emptied (returns the bytes freed), limit set (returns the
  // previous one).
  m.def("cpu_cache_bytes() -> int", &clif::cpu_cache_cached_bytes);
  m.def("cpu_cache_empty() -> int", &clif::cpu_cache_empty);
  m.def("cpu_cache_set_limit(int bytes) -> int", &clif::cpu_cache_set_limit);
}
