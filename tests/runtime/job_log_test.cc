// SPDX-License-Identifier: Apache-2.0
#include "cryo/job_log.h"

#include <endian.h>
#include <fcntl.h>
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "cryo/file_util.h"
#include "temp_dir.h"

namespace cryo {
namespace {

// A job log file in a temp dir: one appending writer, readers opened on demand.
class JobLogTest : public testing::Test {
 protected:
  void SetUp() override {
    auto fd = OpenFile(path_, O_WRONLY | O_CREAT | O_APPEND, 0600);
    ASSERT_TRUE(fd.has_value()) << fd.error().ToString();
    writer_ = std::move(*fd);
  }
  void Append(std::string_view bytes) { ASSERT_TRUE(WriteAll(writer_.get(), bytes).has_value()); }
  LogReader NewReader() {
    auto fd = OpenFile(path_, O_RDONLY);
    EXPECT_TRUE(fd.has_value()) << fd.error().ToString();
    return LogReader(fd ? std::move(*fd) : UniqueFd());
  }
  // The next record, failing the test on an error or at the end of the log.
  LogRecord NextRecord(LogReader& reader) {
    auto r = reader.Next();
    EXPECT_TRUE(r.has_value()) << r.error().ToString();
    EXPECT_TRUE(r.has_value() && r->has_value()) << "log ended early";
    return r && *r ? **r : LogRecord{};
  }
  void ExpectAtEnd(LogReader& reader) {
    auto r = reader.Next();
    ASSERT_TRUE(r.has_value()) << r.error().ToString();
    EXPECT_FALSE(r->has_value());
  }

  TempDir dir_;
  std::string path_ = dir_.Join("output.log");
  UniqueFd writer_;
};

TEST_F(JobLogTest, HeaderHasDocumentedLayout) {
  std::string rec = EncodeLogRecord(LogStream::kStderr, 0x0102030405060708, "xyz");
  ASSERT_EQ(rec.size(), kLogHeaderBytes + 3);
  EXPECT_EQ(rec.substr(0, 8), std::string("\x02\0\0\0\x03\0\0\0", 8));
  EXPECT_EQ(rec.substr(8, 8), std::string("\x08\x07\x06\x05\x04\x03\x02\x01", 8));
  EXPECT_EQ(rec.substr(16), "xyz");
}

TEST_F(JobLogTest, RecordsReadBackInOrder) {
  const std::string binary("\0\xff\0\n\x01", 5);
  Append(EncodeLogRecord(LogStream::kStdout, 100, "hello\n"));
  Append(EncodeLogRecord(LogStream::kStderr, 200, "oops\n"));
  Append(EncodeLogRecord(LogStream::kStdout, -5, binary));
  Append(EncodeLogRecord(LogStream::kStdout, 300, ""));

  LogReader reader = NewReader();
  LogRecord a = NextRecord(reader);
  EXPECT_EQ(a.stream, LogStream::kStdout);
  EXPECT_EQ(a.unix_ns, 100);
  EXPECT_EQ(a.data, "hello\n");
  LogRecord b = NextRecord(reader);
  EXPECT_EQ(b.stream, LogStream::kStderr);
  EXPECT_EQ(b.unix_ns, 200);
  EXPECT_EQ(b.data, "oops\n");
  LogRecord c = NextRecord(reader);
  EXPECT_EQ(c.stream, LogStream::kStdout);
  EXPECT_EQ(c.unix_ns, -5);
  EXPECT_EQ(c.data, binary);
  LogRecord d = NextRecord(reader);
  EXPECT_EQ(d.unix_ns, 300);
  EXPECT_EQ(d.data, "");
  ExpectAtEnd(reader);
}

TEST_F(JobLogTest, EmptyLogHasNoRecords) {
  LogReader reader = NewReader();
  ExpectAtEnd(reader);
}

TEST_F(JobLogTest, PartlyWrittenRecordAppearsWhenComplete) {
  const std::string second = EncodeLogRecord(LogStream::kStderr, 2, "second record");
  Append(EncodeLogRecord(LogStream::kStdout, 1, "first"));
  Append(second.substr(0, kLogHeaderBytes + 4));  // header and part of the data

  LogReader reader = NewReader();
  EXPECT_EQ(NextRecord(reader).data, "first");
  ExpectAtEnd(reader);
  ExpectAtEnd(reader);  // still not there: asking again changes nothing

  Append(second.substr(kLogHeaderBytes + 4));
  LogRecord rec = NextRecord(reader);
  EXPECT_EQ(rec.stream, LogStream::kStderr);
  EXPECT_EQ(rec.data, "second record");
  ExpectAtEnd(reader);
}

TEST_F(JobLogTest, PartlyWrittenHeaderAppearsWhenComplete) {
  const std::string rec = EncodeLogRecord(LogStream::kStdout, 7, "data");
  Append(rec.substr(0, 5));

  LogReader reader = NewReader();
  ExpectAtEnd(reader);
  Append(rec.substr(5));
  EXPECT_EQ(NextRecord(reader).data, "data");
}

TEST_F(JobLogTest, BadStreamByteIsCorrupt) {
  std::string rec = EncodeLogRecord(LogStream::kStdout, 1, "data");
  rec[0] = 3;
  Append(EncodeLogRecord(LogStream::kStdout, 0, "good"));
  Append(rec);

  LogReader reader = NewReader();
  EXPECT_EQ(NextRecord(reader).data, "good");
  auto r = reader.Next();
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().kind(), ErrorKind::kCorrupt);
  EXPECT_NE(r.error().message().find("offset " + std::to_string(kLogHeaderBytes + 4)),
            std::string::npos)
      << r.error().message();
}

TEST_F(JobLogTest, OversizedLengthIsCorrupt) {
  std::string rec = EncodeLogRecord(LogStream::kStdout, 1, "");
  uint32_t too_long = htole32(kMaxLogRecordBytes + 1);
  std::memcpy(rec.data() + 4, &too_long, sizeof too_long);
  Append(rec);

  LogReader reader = NewReader();
  auto r = reader.Next();
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().kind(), ErrorKind::kCorrupt);
}

}  // namespace
}  // namespace cryo
