// SPDX-License-Identifier: Apache-2.0
#include "progress.h"

#include <algorithm>
#include <optional>
#include <utility>

namespace cryo {

ProgressMeter::ProgressMeter(Sink sink, std::chrono::milliseconds interval)
    : sink_(std::move(sink)), interval_(interval), thread_([this] { Run(); }) {}

ProgressMeter::~ProgressMeter() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void ProgressMeter::BeginPhase(std::string phase, uint64_t total_bytes,
                               std::function<uint64_t()> poll) {
  {
    std::lock_guard lock(mu_);
    phase_ = std::move(phase);
    done_ = 0;
    total_ = total_bytes;
    phase_start_ = std::chrono::steady_clock::now();
    poll_ = std::move(poll);
    ++generation_;
    if (!begun_) first_ = ProgressReport{phase_, 0, total_, 0};
    begun_ = true;
  }
  wake_.notify_all();
}

void ProgressMeter::Add(uint64_t bytes) {
  std::lock_guard lock(mu_);
  done_ += bytes;
}

ImageProgress ProgressMeter::Counter() {
  return [this](uint64_t bytes) { Add(bytes); };
}

ProgressReport ProgressMeter::Snapshot() {
  std::function<uint64_t()> poll;
  uint64_t generation;
  {
    std::lock_guard lock(mu_);
    poll = poll_;
    generation = generation_;
  }
  // Polling may take a while (a directory scan): not under the lock.
  std::optional<uint64_t> polled;
  if (poll) polled = poll();
  std::lock_guard lock(mu_);
  if (polled && generation == generation_) done_ = std::max(done_, *polled);
  auto elapsed = std::chrono::steady_clock::now() - phase_start_;
  return {phase_, done_, total_,
          std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count()};
}

void ProgressMeter::Run() {
  std::unique_lock lock(mu_);
  wake_.wait(lock, [&] { return begun_ || stopping_; });
  while (!stopping_) {
    std::optional<ProgressReport> first = std::exchange(first_, std::nullopt);
    lock.unlock();
    sink_(first ? *first : Snapshot());  // the operation goes on meanwhile
    lock.lock();
    wake_.wait_for(lock, interval_, [&] { return stopping_; });
  }
}

}  // namespace cryo
