// SPDX-License-Identifier: Apache-2.0
#include "checkpoint_format.h"

#include <ctime>
#include <iomanip>
#include <sstream>

namespace cryo::cli {

nlohmann::json CheckpointJson(const proto::CheckpointInfo& c) {
  nlohmann::json phases = nlohmann::json::object();
  for (const auto& [name, ms] : c.phases_ms()) phases[name] = ms;
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
