// SPDX-License-Identifier: Apache-2.0
#include "criu_image_fixes.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <string>

#include "cryo/file_util.h"

namespace cryo {
namespace {

using google::protobuf::internal::WireFormatLite;
using google::protobuf::io::CodedInputStream;

// Encoding of the messages CRIU writes, by hand, field by field.
void Varint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

void VarintField(std::string* out, int number, uint64_t v) {
  Varint(out, WireFormatLite::MakeTag(number, WireFormatLite::WIRETYPE_VARINT));
  Varint(out, v);
}

void BytesField(std::string* out, int number, const std::string& bytes) {
  Varint(out, WireFormatLite::MakeTag(number, WireFormatLite::WIRETYPE_LENGTH_DELIMITED));
  Varint(out, bytes.size());
  *out += bytes;
}

struct Timer {
  uint64_t ticks, settime_flags, vsec, vnsec, isec, insec;
};

// A file_entry{type TIMERFD (17), id, tfd: timerfd_entry} as CRIU writes it.
std::string TimerfdFileEntry(uint32_t id, const Timer& t) {
  std::string fown;
  VarintField(&fown, 1, 0);  // uid
  VarintField(&fown, 2, 0);  // euid
  VarintField(&fown, 3, 0);  // signum
  VarintField(&fown, 4, 0);  // pid_type
  VarintField(&fown, 5, 0);  // pid
  std::string tfd;
  VarintField(&tfd, 1, id);
  VarintField(&tfd, 2, 02004002);  // O_RDWR | O_NONBLOCK | O_CLOEXEC
  BytesField(&tfd, 3, fown);
  VarintField(&tfd, 4, 1);  // CLOCK_MONOTONIC
  VarintField(&tfd, 5, t.ticks);
  VarintField(&tfd, 6, t.settime_flags);
  VarintField(&tfd, 7, t.vsec);
  VarintField(&tfd, 8, t.vnsec);
  VarintField(&tfd, 9, t.isec);
  VarintField(&tfd, 10, t.insec);
  std::string entry;
  VarintField(&entry, 1, 17);
  VarintField(&entry, 2, id);
  BytesField(&entry, 12, tfd);
  return entry;
}

// A file_entry{type EVENTFD (8), id, efd: eventfd_file_entry}.
std::string EventfdFileEntry(uint32_t id) {
  std::string efd;
  VarintField(&efd, 1, id);
  VarintField(&efd, 2, 02);
  BytesField(&efd, 3, std::string("\x08\x00\x10\x00\x18\x00\x20\x00\x28\x00", 10));
  VarintField(&efd, 4, 12345);  // counter
  std::string entry;
  VarintField(&entry, 1, 8);
  VarintField(&entry, 2, id);
  BytesField(&entry, 8, efd);
  return entry;
}

std::string U32(uint32_t v) { return std::string(reinterpret_cast<const char*>(&v), sizeof v); }

std::string FilesImage(const std::vector<std::string>& entries) {
  std::string image = U32(0x54564319) + U32(0x56303138);
  for (const auto& e : entries) image += U32(static_cast<uint32_t>(e.size())) + e;
  return image;
}

// The varint fields of the timerfd_entry inside a file_entry, by number.
std::map<int, uint64_t> TimerfdFields(const std::string& file_entry) {
  std::map<int, uint64_t> out;
  CodedInputStream in(reinterpret_cast<const uint8_t*>(file_entry.data()),
                      static_cast<int>(file_entry.size()));
  while (uint32_t tag = in.ReadTag()) {
    if (WireFormatLite::GetTagFieldNumber(tag) != 12) {
      EXPECT_TRUE(WireFormatLite::SkipField(&in, tag));
      continue;
    }
    uint32_t size = 0;
    EXPECT_TRUE(in.ReadVarint32(&size));
    auto limit = in.PushLimit(static_cast<int>(size));
    while (uint32_t inner = in.ReadTag()) {
      if (WireFormatLite::GetTagWireType(inner) != WireFormatLite::WIRETYPE_VARINT) {
        EXPECT_TRUE(WireFormatLite::SkipField(&in, inner));
        continue;
      }
      uint64_t v = 0;
      EXPECT_TRUE(in.ReadVarint64(&v));
      out[static_cast<int>(WireFormatLite::GetTagFieldNumber(inner))] = v;
    }
    in.PopLimit(limit);
  }
  return out;
}

// The entries of a files image.
std::vector<std::string> Entries(const std::string& image) {
  std::vector<std::string> out;
  for (size_t pos = 8; pos + 4 <= image.size();) {
    uint32_t size;
    std::memcpy(&size, image.data() + pos, 4);
    out.push_back(image.substr(pos + 4, size));
    pos += 4 + size;
  }
  return out;
}

TEST(CriuImageFixesTest, AnExpiredPeriodicTimerIsArmedForOneInterval) {
  // 20 ms period, expired once, unread; a 1.5 s period expired 3 times.
  std::string image =
      FilesImage({EventfdFileEntry(1), TimerfdFileEntry(2, {1, 0, 0, 0, 0, 20000000}),
                  TimerfdFileEntry(3, {3, 0, 0, 0, 1, 500000000})});
  int fixed = -1;
  auto out = RearmExpiredPeriodicTimerfds(image, &fixed);
  ASSERT_TRUE(out.has_value()) << out.error().ToString();
  EXPECT_EQ(fixed, 2);
  auto entries = Entries(*out);
  ASSERT_EQ(entries.size(), 3u);
  EXPECT_EQ(entries[0], EventfdFileEntry(1)) << "an entry without a timer changed";
  auto first = TimerfdFields(entries[1]);
  EXPECT_EQ(first[7], 0u);
  EXPECT_EQ(first[8], 20000000u);
  EXPECT_EQ(first[9], 0u);
  EXPECT_EQ(first[10], 20000000u);
  EXPECT_EQ(first[5], 1u) << "the pending expiration must still be delivered";
  EXPECT_EQ(first[1], 2u);
  EXPECT_EQ(first[4], 1u);
  auto second = TimerfdFields(entries[2]);
  EXPECT_EQ(second[7], 1u);
  EXPECT_EQ(second[8], 500000000u);
  EXPECT_EQ(second[5], 3u);
}

TEST(CriuImageFixesTest, OtherTimersAndFilesAreLeftByteForByte) {
  std::string image = FilesImage({
      EventfdFileEntry(1),
      TimerfdFileEntry(2, {0, 0, 0, 7000000, 0, 20000000}),  // periodic, still running
      TimerfdFileEntry(3, {1, 0, 0, 0, 0, 0}),               // one-shot, expired
      TimerfdFileEntry(4, {0, 0, 0, 0, 0, 20000000}),        // disarmed by the program
      TimerfdFileEntry(5, {2, 1, 0, 0, 0, 20000000}),        // TFD_TIMER_ABSTIME
  });
  int fixed = -1;
  auto out = RearmExpiredPeriodicTimerfds(image, &fixed);
  ASSERT_TRUE(out.has_value()) << out.error().ToString();
  EXPECT_EQ(fixed, 0);
  EXPECT_EQ(*out, image);
  auto empty = RearmExpiredPeriodicTimerfds(FilesImage({}), &fixed);
  ASSERT_TRUE(empty.has_value());
  EXPECT_EQ(*empty, FilesImage({}));
}

TEST(CriuImageFixesTest, RefusesWhatIsNotAFilesImage) {
  std::string good = FilesImage({TimerfdFileEntry(2, {1, 0, 0, 0, 0, 20000000})});
  std::string wrong_magic = good;
  wrong_magic[4] = 0x07;
  std::string truncated = good.substr(0, good.size() - 3);
  std::string garbage_entry = FilesImage({std::string(9, '\xff')});
  std::string dangling_size = FilesImage({}) + "\x02\x00";
  for (const auto& image :
       {std::string(), good.substr(0, 7), wrong_magic, truncated, garbage_entry, dangling_size}) {
    int fixed = -1;
    auto out = RearmExpiredPeriodicTimerfds(image, &fixed);
    ASSERT_FALSE(out.has_value()) << "accepted an image of " << image.size() << " bytes";
    EXPECT_EQ(out.error().kind(), ErrorKind::kCorrupt);
    EXPECT_EQ(fixed, 0);
  }
}

TEST(CriuImageFixesTest, FixDumpedImagesRewritesOnlyWhatNeedsIt) {
  char tmpl[] = "/tmp/cryo-image-fixes-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  std::string dir = tmpl;
  auto none = FixDumpedImages(dir);
  ASSERT_TRUE(none.has_value()) << none.error().ToString();
  EXPECT_EQ(*none, 0) << "a dump without files.img needs no fix";

  std::string path = dir + "/files.img";
  std::string fine = FilesImage({EventfdFileEntry(1)});
  ASSERT_TRUE(WriteFileAtomic(path, fine, 0600).has_value());
  EXPECT_EQ(FixDumpedImages(dir).value_or(-1), 0);
  EXPECT_EQ(ReadFileToString(path).value_or(""), fine);

  std::string expired = FilesImage({TimerfdFileEntry(2, {1, 0, 0, 0, 0, 20000000})});
  ASSERT_TRUE(WriteFileAtomic(path, expired, 0600).has_value());
  EXPECT_EQ(FixDumpedImages(dir).value_or(-1), 1);
  auto entries = Entries(ReadFileToString(path).value_or(""));
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(TimerfdFields(entries[0])[8], 20000000u);

  ASSERT_TRUE(WriteFileAtomic(path, "not an image", 0600).has_value());
  auto bad = FixDumpedImages(dir);
  ASSERT_FALSE(bad.has_value());
  EXPECT_NE(bad.error().ToString().find(path), std::string::npos) << bad.error().ToString();
  ::unlink(path.c_str());
  ::rmdir(dir.c_str());
}

}  // namespace
}  // namespace cryo
