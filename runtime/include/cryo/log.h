// SPDX-License-Identifier: Apache-2.0
// Structured log lines for cryod and its helpers, in logfmt:
//   ts=2026-11-23T20:01:02.345Z level=info msg="job started" job=web pid=4242
// Thread-safe; writes to stderr.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

namespace cryo {

enum class LogLevel { kDebug, kInfo, kWarn, kError };

using LogField = std::pair<std::string_view, std::string>;

void SetLogLevel(LogLevel level);
// "debug", "info", "warn", "error"; anything else leaves the level unchanged.
void SetLogLevel(std::string_view name);
void Log(LogLevel level, std::string_view message, std::initializer_list<LogField> fields = {});

inline void LogInfo(std::string_view m, std::initializer_list<LogField> f = {}) {
  Log(LogLevel::kInfo, m, f);
}
inline void LogWarn(std::string_view m, std::initializer_list<LogField> f = {}) {
  Log(LogLevel::kWarn, m, f);
}
inline void LogError(std::string_view m, std::initializer_list<LogField> f = {}) {
  Log(LogLevel::kError, m, f);
}
inline void LogDebug(std::string_view m, std::initializer_list<LogField> f = {}) {
  Log(LogLevel::kDebug, m, f);
}

}  // namespace cryo
