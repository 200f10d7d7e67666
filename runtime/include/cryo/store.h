// SPDX-License-Identifier: Apache-2.0
// Store: where checkpoints live. A flat object store with keys like
// "chunks/ab/ab12...", "manifests/<id>", "refs/<job>/latest". Implemented by
// plugins (plugins/store/file, later S3), opened by URL through the plugin
// registry (plugins/registry.h). See runtime/FORMAT.md for the layout.
//
// Durability contract: Put* may stay in volatile buffers until Flush()
// returns; a reader never sees a partly written object (each object
// appears whole or not at all). Callers publish in order: chunks, Flush,
// manifest, Flush, reference (CompareAndSwap), Flush.
//
// Thread-safety: every method may be called from several threads at once.
#pragma once

#include <chrono>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "cryo/error.h"

namespace cryo {

// Held for as long as it lives: see Store::Guard.
class StoreGuard {
 public:
  virtual ~StoreGuard() = default;
};

class Store {
 public:
  virtual ~Store() = default;

  // The URL this store was opened with (for messages).
  virtual const std::string& url() const = 0;

  // Writes `data` at `key`, replacing what was there.
  virtual Status Put(std::string_view key, std::string_view data) = 0;
  // Writes `data` at `key` unless an object is there already (content-
  // addressed chunks). Returns whether it wrote.
  virtual Result<bool> PutIfAbsent(std::string_view key, std::string_view data) = 0;
  // The object at `key`; kNotFound when there is none.
  virtual Result<std::string> Get(std::string_view key) = 0;
  // Reads the object at `key` into memory the caller owns: copies it into
  // `out` if it fits and returns its size; if it does not fit, returns its
  // size (more than out.size()) and leaves `out` unspecified. kNotFound when
  // there is none. Stores that can read straight into `out` override this.
  virtual Result<size_t> GetInto(std::string_view key, std::span<char> out) {
    auto data = Get(key);
    if (!data) return std::unexpected(data.error());
    if (data->size() <= out.size()) std::memcpy(out.data(), data->data(), data->size());
    return data->size();
  }
  virtual Result<bool> Exists(std::string_view key) = 0;
  // Keys starting with `prefix`, sorted.
  virtual Result<std::vector<std::string>> List(std::string_view prefix) = 0;
  // Removes `key`; a missing key is not an error.
  virtual Status Delete(std::string_view key) = 0;
  // Replaces `key` with `data` only if its current content is `expected`
  // (nullopt: only if absent). kFailedPrecondition if someone else changed
  // it first. For references ("refs/<job>/latest").
  virtual Status CompareAndSwap(std::string_view key, const std::optional<std::string>& expected,
                                std::string_view data) = 0;
  // Makes everything written so far durable.
  virtual Status Flush() = 0;

  // Guards the chunks against removal by any process sharing the store
  // (cryods on this machine, or on others over NFS), for as long as the
  // returned guard lives. kUse: for whoever relies on chunks being there (a
  // checkpoint, which reuses chunks already stored, until its manifest is
  // published; a restore; a verify); waits while a kCollect is held.
  // kCollect: for whoever removes chunks no manifest names (gc, the removal
  // of torn chunks); excludes every kUse, waits up to `wait` for them to
  // end, then fails with kUnavailable.
  enum class GuardMode { kUse, kCollect };
  virtual Result<std::unique_ptr<StoreGuard>> Guard(
      GuardMode mode, std::chrono::milliseconds wait = std::chrono::milliseconds(0)) = 0;
};

}  // namespace cryo
