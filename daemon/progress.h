// SPDX-License-Identifier: Apache-2.0
// The progress of one checkpoint or restore, as cryod tells the client that
// asked for it (daemon.proto `Progress`): the phase under way, the bytes it
// has handled and the total when known.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "cryo/image_store.h"

namespace cryo {

struct ProgressReport {
  std::string phase;
  uint64_t done_bytes = 0;
  uint64_t total_bytes = 0;  // 0: not known
  int64_t elapsed_ms = 0;    // since the phase began
};

// Collects the progress of one operation and hands snapshots of it to a
// sink, from a thread of its own: the first phase as it begins (even if a
// later one has begun by the time the thread runs), then the current state
// every `interval` (never more often) while the meter lives. The
// operation's threads only update counters, so a slow sink does not slow
// them down.
//
// Thread-safe. The sink is never called after the destructor returns.
class ProgressMeter {
 public:
  using Sink = std::function<void(const ProgressReport&)>;
  static constexpr std::chrono::milliseconds kInterval{250};

  explicit ProgressMeter(Sink sink, std::chrono::milliseconds interval = kInterval);
  ~ProgressMeter();
  ProgressMeter(const ProgressMeter&) = delete;
  ProgressMeter& operator=(const ProgressMeter&) = delete;

  // A phase begins; its byte count starts at 0. `poll`, if given, is asked
  // for the bytes done before each report, for work that does not count
  // them itself (CRIU writing images); it runs on the meter's thread.
  void BeginPhase(std::string phase, uint64_t total_bytes = 0, std::function<uint64_t()> poll = {});
  // `bytes` more are done in the current phase.
  void Add(uint64_t bytes);
  // A callback for StoreImages and FetchImages that adds to the current
  // phase; valid as long as this meter.
  ImageProgress Counter();

 private:
  ProgressReport Snapshot();
  void Run();

  Sink sink_;
  std::chrono::milliseconds interval_;
  std::mutex mu_;
  std::condition_variable wake_;
  bool stopping_ = false;  // guarded by mu_, like everything below
  bool begun_ = false;
  std::optional<ProgressReport> first_;  // the first phase, until reported
  std::string phase_;
  uint64_t done_ = 0;
  uint64_t total_ = 0;
  std::chrono::steady_clock::time_point phase_start_;
  std::function<uint64_t()> poll_;
  uint64_t generation_ = 0;  // counts phases: a late poll result is dropped
  std::thread thread_;       // last: started when the rest is ready
};

}  // namespace cryo
