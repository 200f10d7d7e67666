// SPDX-License-Identifier: Apache-2.0
#include "progress.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <vector>

namespace cryo {
namespace {

using std::chrono::hours;
using std::chrono::milliseconds;
using std::chrono::seconds;

// Collects what a meter reports; waits for reports as events.
class Reports {
 public:
  ProgressMeter::Sink Sink() {
    return [this](const ProgressReport& r) {
      std::lock_guard lock(mu_);
      reports_.push_back(r);
      cv_.notify_all();
    };
  }
  // Waits (at most 10 s) for at least `n` reports; returns them all.
  std::vector<ProgressReport> WaitFor(size_t n) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, seconds(10), [&] { return reports_.size() >= n; });
    return reports_;
  }
  // Waits (at most 10 s) for a report that satisfies `wanted`.
  bool WaitForOne(const std::function<bool(const ProgressReport&)>& wanted) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, seconds(10),
                        [&] { return std::any_of(reports_.begin(), reports_.end(), wanted); });
  }
  std::vector<ProgressReport> All() {
    std::lock_guard lock(mu_);
    return reports_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<ProgressReport> reports_;
};

TEST(ProgressMeterTest, NothingBeforeAPhaseBegins) {
  Reports reports;
  { ProgressMeter meter(reports.Sink(), milliseconds(1)); }
  EXPECT_TRUE(reports.All().empty());
}

TEST(ProgressMeterTest, FirstPhaseIsReportedAtOnceThenNoMoreOftenThanTheInterval) {
  Reports reports;
  {
    ProgressMeter meter(reports.Sink(), hours(1));
    meter.BeginPhase("store", 100);
    auto got = reports.WaitFor(1);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].phase, "store");
    EXPECT_EQ(got[0].total_bytes, 100u);
    EXPECT_GE(got[0].elapsed_ms, 0);
    meter.BeginPhase("publish");  // waits for the next interval
  }
  EXPECT_EQ(reports.All().size(), 1u) << "reported again before the interval was over";
}

TEST(ProgressMeterTest, TheFirstPhaseIsReportedEvenIfItEndsAtOnce) {
  Reports reports;
  {
    ProgressMeter meter(reports.Sink(), hours(1));
    meter.BeginPhase("fetch", 10);
    meter.BeginPhase("restore");
    ASSERT_EQ(reports.WaitFor(1).size(), 1u);
  }
  auto got = reports.All();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].phase, "fetch");
  EXPECT_EQ(got[0].total_bytes, 10u);
}

TEST(ProgressMeterTest, CountsBytesOfTheCurrentPhase) {
  Reports reports;
  ProgressMeter meter(reports.Sink(), milliseconds(1));
  meter.BeginPhase("fetch", 1000);
  ImageProgress count = meter.Counter();
  count(300);
  meter.Add(200);
  EXPECT_TRUE(reports.WaitForOne([](const ProgressReport& r) {
    return r.phase == "fetch" && r.done_bytes == 500 && r.total_bytes == 1000;
  }));
  meter.BeginPhase("restore");
  EXPECT_TRUE(reports.WaitForOne([](const ProgressReport& r) { return r.phase == "restore"; }));
  for (const auto& r : reports.All()) {
    EXPECT_LE(r.done_bytes, 500u);
    if (r.phase == "restore") {
      EXPECT_EQ(r.done_bytes, 0u) << "a new phase starts from zero";
      EXPECT_EQ(r.total_bytes, 0u);
    }
  }
}

TEST(ProgressMeterTest, PollsWhatItCannotCount) {
  Reports reports;
  ProgressMeter meter(reports.Sink(), milliseconds(1));
  meter.BeginPhase("dump", 0, [] { return uint64_t{4096}; });
  EXPECT_TRUE(reports.WaitForOne(
      [](const ProgressReport& r) { return r.phase == "dump" && r.done_bytes == 4096; }));
}

}  // namespace
}  // namespace cryo
