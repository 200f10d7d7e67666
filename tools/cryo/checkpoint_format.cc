// SPDX-License-Identifier: Apache-2.0
#include "checkpoint_format.h"

#include <algorithm>
#include <ctime>
#include <iomanip>
#include <sstream>

namespace cryo::cli {
namespace {

// The phases of a checkpoint, then of a restore, in the order they happen.
constexpr std::string_view kPhaseOrder[] = {"freeze", "dump",    "store", "publish",
                                            "fetch",  "restore", "total"};

size_t PhaseRank(const std::string& phase) {
  return static_cast<size_t>(std::find(std::begin(kPhaseOrder), std::end(kPhaseOrder), phase) -
                             std::begin(kPhaseOrder));
}

nlohmann::json PhasesJson(const PhasesMs& phases) {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [name, ms] : phases) out[name] = ms;
  return out;
}

}  // namespace

std::string PhasesText(const PhasesMs& phases) {
  std::vector<std::pair<std::string, int64_t>> ordered;
  for (const auto& [name, ms] : phases) ordered.emplace_back(name, ms);
  std::sort(ordered.begin(), ordered.end(), [](const auto& a, const auto& b) {
    return std::make_pair(PhaseRank(a.first), a.first) <
           std::make_pair(PhaseRank(b.first), b.first);
  });
  std::string out;
  for (const auto& [name, ms] : ordered) {
    out += (out.empty() ? "" : ", ") + name + " " + std::to_string(ms) + " ms";
  }
  return out;
}

nlohmann::json RestoreJson(const proto::JobInfo& job) {
  return {
      {"job", job.name()},
      {"id", job.id()},
      {"restored_from", job.restored_from()},
      {"pid", job.pid()},
      {"phases_ms", PhasesJson(job.restore_phases_ms())},
  };
}

nlohmann::json CheckpointJson(const proto::CheckpointInfo& c) {
  nlohmann::json phases = PhasesJson(c.phases_ms());
  return {
      {"id", c.id()},
      {"job", c.job()},
      {"parent", c.parent().empty() ? nlohmann::json(nullptr) : nlohmann::json(c.parent())},
      {"created", LocalTime(c.created_unix_ms())},
      {"created_unix_ms", c.created_unix_ms()},
      {"bytes", c.bytes()},
      {"stored_bytes", c.stored_bytes()},
      {"uid", c.uid()},
      {"latest", c.latest()},
      {"phases_ms", phases},
      {"argv", std::vector<std::string>(c.argv().begin(), c.argv().end())},
  };
}

std::string HumanBytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  std::ostringstream out;
  if (u == 0) {
    out << bytes << " B";
  } else {
    out << std::fixed << std::setprecision(1) << v << " " << units[u];
  }
  return out.str();
}

std::string LocalTime(int64_t unix_ms) {
  time_t t = static_cast<time_t>(unix_ms / 1000);
  tm local;
  ::localtime_r(&t, &local);
  std::ostringstream out;
  out << std::put_time(&local, "%Y-%m-%d %H:%M:%S");
  return out.str();
}

}  // namespace cryo::cli
