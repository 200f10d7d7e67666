// SPDX-License-Identifier: Apache-2.0
#include "buffer_pool.h"

#include <utility>

namespace cryo {
namespace {

// Buffers kept by the process between uses: enough for two checkpoints at
// once (5 each, image_store.cc's kReadBuffers: 80 MiB).
constexpr size_t kKeptBuffers = 10;

std::mutex kept_mu;
std::vector<std::unique_ptr<char[]>>& Kept() {
  static auto* kept = new std::vector<std::unique_ptr<char[]>>();  // never destroyed
  return *kept;
}

}  // namespace

BufferPool::BufferPool(size_t count) {
  {
    std::lock_guard lock(kept_mu);
    auto& kept = Kept();
    while (owned_.size() < count && !kept.empty()) {
      owned_.push_back(std::move(kept.back()));
      kept.pop_back();
    }
  }
  while (owned_.size() < count)
    owned_.push_back(std::make_unique_for_overwrite<char[]>(kBufferBytes));
  for (auto& buffer : owned_) free_.push_back(buffer.get());
}

BufferPool::~BufferPool() {
  std::lock_guard lock(kept_mu);
  auto& kept = Kept();
  for (auto& buffer : owned_) {
    if (kept.size() < kKeptBuffers) kept.push_back(std::move(buffer));
  }
}

std::shared_ptr<char> BufferPool::Take() {
  std::unique_lock lock(mu_);
  freed_.wait(lock, [&] { return !free_.empty(); });
  char* buffer = free_.back();
  free_.pop_back();
  return std::shared_ptr<char>(buffer, [this](char* b) {
    std::lock_guard l(mu_);
    free_.push_back(b);
    freed_.notify_one();
  });
}

}  // namespace cryo
