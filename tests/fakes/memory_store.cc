// SPDX-License-Identifier: Apache-2.0
#include "fakes/memory_store.h"

namespace cryo {

Status MemoryStore::Put(std::string_view key, std::string_view data) {
  std::lock_guard lock(mu_);
  ++put_calls_;
  objects_.insert_or_assign(std::string(key), std::string(data));
  return {};
}

Result<bool> MemoryStore::PutIfAbsent(std::string_view key, std::string_view data) {
  std::lock_guard lock(mu_);
  ++put_if_absent_calls_;
  return objects_.try_emplace(std::string(key), data).second;
}

Result<std::string> MemoryStore::Get(std::string_view key) {
  std::lock_guard lock(mu_);
  auto it = objects_.find(key);
  if (it == objects_.end()) return Fail(ErrorKind::kNotFound, "no object " + std::string(key));
  return it->second;
}

Result<bool> MemoryStore::Exists(std::string_view key) {
  std::lock_guard lock(mu_);
  return objects_.contains(key);
}

Result<std::vector<std::string>> MemoryStore::List(std::string_view prefix) {
  std::lock_guard lock(mu_);
  std::vector<std::string> keys;
  for (auto it = objects_.lower_bound(prefix);
       it != objects_.end() && it->first.starts_with(prefix); ++it) {
    keys.push_back(it->first);
  }
  return keys;
}

Status MemoryStore::Delete(std::string_view key) {
  std::lock_guard lock(mu_);
  if (auto it = objects_.find(key); it != objects_.end()) objects_.erase(it);
  return {};
}

Status MemoryStore::CompareAndSwap(std::string_view key, const std::optional<std::string>& expected,
                                   std::string_view data) {
  std::lock_guard lock(mu_);
  auto it = objects_.find(key);
  bool matches =
      expected ? (it != objects_.end() && it->second == *expected) : it == objects_.end();
  if (!matches)
    return Fail(ErrorKind::kFailedPrecondition, std::string(key) + " was changed by someone else");
  objects_.insert_or_assign(std::string(key), std::string(data));
  return {};
}

Status MemoryStore::Flush() {
  std::lock_guard lock(mu_);
  ++flush_calls_;
  return {};
}

Result<std::unique_ptr<StoreGuard>> MemoryStore::Guard(GuardMode mode,
                                                       std::chrono::milliseconds wait) {
  struct Held final : StoreGuard {
    std::shared_timed_mutex& mu;
    bool exclusive;
    Held(std::shared_timed_mutex& m, bool e) : mu(m), exclusive(e) {}
    ~Held() override { exclusive ? mu.unlock() : mu.unlock_shared(); }
  };
  if (mode == GuardMode::kUse) {
    guard_mu_.lock_shared();
    return std::make_unique<Held>(guard_mu_, false);
  }
  if (!guard_mu_.try_lock_for(wait)) {
    return Fail(ErrorKind::kUnavailable, url_ + " is in use");
  }
  return std::make_unique<Held>(guard_mu_, true);
}

size_t MemoryStore::put_calls() const {
  std::lock_guard lock(mu_);
  return put_calls_;
}

size_t MemoryStore::put_if_absent_calls() const {
  std::lock_guard lock(mu_);
  return put_if_absent_calls_;
}

size_t MemoryStore::flush_calls() const {
  std::lock_guard lock(mu_);
  return flush_calls_;
}

size_t MemoryStore::object_count() const {
  std::lock_guard lock(mu_);
  return objects_.size();
}

}  // namespace cryo
