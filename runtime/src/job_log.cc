// SPDX-License-Identifier: Apache-2.0
#include "cryo/job_log.h"

#include <endian.h>
#include <unistd.h>

#include <cstring>

namespace cryo {

std::string EncodeLogRecord(LogStream stream, int64_t unix_ns, std::string_view data) {
  char header[kLogHeaderBytes] = {};
  header[0] = static_cast<char>(stream);
  uint32_t len = htole32(static_cast<uint32_t>(data.size()));
  uint64_t ns = htole64(static_cast<uint64_t>(unix_ns));
  std::memcpy(header + 4, &len, 4);
  std::memcpy(header + 8, &ns, 8);
  std::string out(header, sizeof header);
  out.append(data);
  return out;
}

Result<std::optional<LogRecord>> LogReader::Next() {
  char header[kLogHeaderBytes];
  ssize_t n = ::pread(fd_.get(), header, sizeof header, static_cast<off_t>(offset_));
  if (n < 0) return SysFail("read job log");
  if (static_cast<size_t>(n) < sizeof header) return std::nullopt;
  uint8_t stream = static_cast<uint8_t>(header[0]);
  uint32_t len;
  uint64_t ns;
  std::memcpy(&len, header + 4, 4);
  std::memcpy(&ns, header + 8, 8);
  len = le32toh(len);
  if ((stream != 1 && stream != 2) || len > kMaxLogRecordBytes) {
    return Fail(ErrorKind::kCorrupt,
                "job log has a bad record at offset " + std::to_string(offset_));
  }
  LogRecord rec{static_cast<LogStream>(stream), static_cast<int64_t>(le64toh(ns)),
                std::string(len, '\0')};
  n = ::pread(fd_.get(), rec.data.data(), len, static_cast<off_t>(offset_ + sizeof header));
  if (n < 0) return SysFail("read job log");
  if (static_cast<size_t>(n) < len) return std::nullopt;
  offset_ += sizeof header + len;
  return rec;
}

}  // namespace cryo
