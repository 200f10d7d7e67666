// SPDX-License-Identifier: Apache-2.0
// The job output log: stdout and stderr interleaved in the order cryo-monitor
// read them, one record per read. A record is a 16-byte header
//   u8 stream (1 stdout, 2 stderr) | u8[3] zero | u32 le length | i64 le unix time ns
// followed by `length` bytes of output. Appended by one writer (cryo-monitor),
// read by any number of readers while it grows (documented in runtime/FORMAT.md).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "cryo/error.h"
#include "cryo/unique_fd.h"

namespace cryo {

enum class LogStream : uint8_t { kStdout = 1, kStderr = 2 };

struct LogRecord {
  LogStream stream = LogStream::kStdout;
  int64_t unix_ns = 0;
  std::string data;
};

inline constexpr size_t kLogHeaderBytes = 16;
inline constexpr size_t kMaxLogRecordBytes = 1u << 20;

std::string EncodeLogRecord(LogStream stream, int64_t unix_ns, std::string_view data);

// Reads records from a log that may still be growing. Next() returns nullopt
// at the current end (a partly written last record counts as not yet there);
// call it again later to see more.
class LogReader {
 public:
  explicit LogReader(UniqueFd fd) : fd_(std::move(fd)) {}
  Result<std::optional<LogRecord>> Next();

 private:
  UniqueFd fd_;
  uint64_t offset_ = 0;
};

}  // namespace cryo
