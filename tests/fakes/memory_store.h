// SPDX-License-Identifier: Apache-2.0
// MemoryStore: a Store kept in a map, for unit tests. Thread-safe. Counts the
// writes it is asked for, so tests can prove what was (not) uploaded, and
// lets tests reach in to damage objects (Put/Delete do that).
#pragma once

#include <cstddef>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <vector>

#include "cryo/store.h"

namespace cryo {

class MemoryStore final : public Store {
 public:
  explicit MemoryStore(std::string url = "memory://test") : url_(std::move(url)) {}

  const std::string& url() const override { return url_; }
  Status Put(std::string_view key, std::string_view data) override;
  Result<bool> PutIfAbsent(std::string_view key, std::string_view data) override;
  Result<std::string> Get(std::string_view key) override;
  Result<bool> Exists(std::string_view key) override;
  Result<std::vector<std::string>> List(std::string_view prefix) override;
  Status Delete(std::string_view key) override;
  Status CompareAndSwap(std::string_view key, const std::optional<std::string>& expected,
                        std::string_view data) override;
  Status Flush() override;
  Result<std::unique_ptr<StoreGuard>> Guard(GuardMode mode,
                                            std::chrono::milliseconds wait) override;

  // Calls made so far (whether or not they wrote).
  size_t put_calls() const;
  size_t put_if_absent_calls() const;
  size_t flush_calls() const;
  // Objects stored now.
  size_t object_count() const;

 private:
  const std::string url_;
  mutable std::mutex mu_;
  std::shared_timed_mutex guard_mu_;  // the guards: kUse shared, kCollect exclusive
  std::map<std::string, std::string, std::less<>> objects_;
  size_t put_calls_ = 0;
  size_t put_if_absent_calls_ = 0;
  size_t flush_calls_ = 0;
};

}  // namespace cryo
