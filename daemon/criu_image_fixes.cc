// SPDX-License-Identifier: Apache-2.0
#include "criu_image_fixes.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>

#include <cstring>
#include <optional>
#include <vector>

#include "cryo/file_util.h"

namespace cryo {
namespace {

using google::protobuf::internal::WireFormatLite;
using google::protobuf::io::CodedInputStream;

// criu/include/magic.h
constexpr uint32_t kImgCommonMagic = 0x54564319;
constexpr uint32_t kFilesMagic = 0x56303138;

// file_entry.tfd (fdinfo.proto) and the fields of timerfd_entry
// (timerfd.proto) that decide and carry the fix; all are varints.
constexpr int kFileEntryTimerfd = 12;
constexpr int kTicks = 5;
constexpr int kSettimeFlags = 6;
constexpr int kValueSec = 7;
constexpr int kValueNsec = 8;
constexpr int kIntervalSec = 9;
constexpr int kIntervalNsec = 10;
constexpr uint64_t kTimerAbstime = 1;  // TFD_TIMER_ABSTIME

// One field of a message, as the bytes it was encoded in (tag included),
// so that the fields a fix does not touch are copied as they were.
struct Field {
  int number;
  WireFormatLite::WireType type;
  std::string_view bytes;
};

CodedInputStream InputOver(std::string_view bytes) {
  return CodedInputStream(reinterpret_cast<const uint8_t*>(bytes.data()),
                          static_cast<int>(bytes.size()));
}

// The fields of `message`, or nullopt if it does not parse.
std::optional<std::vector<Field>> SplitFields(std::string_view message) {
  CodedInputStream in = InputOver(message);
  std::vector<Field> fields;
  while (true) {
    int begin = in.CurrentPosition();
    uint32_t tag = in.ReadTag();
    if (tag == 0) break;
    if (!WireFormatLite::SkipField(&in, tag)) return std::nullopt;
    fields.push_back({static_cast<int>(WireFormatLite::GetTagFieldNumber(tag)),
                      WireFormatLite::GetTagWireType(tag),
                      message.substr(begin, in.CurrentPosition() - begin)});
  }
  if (!in.ConsumedEntireMessage() || in.CurrentPosition() != static_cast<int>(message.size())) {
    return std::nullopt;
  }
  return fields;
}

// The value of a varint field, or nullopt if `f` is not one.
std::optional<uint64_t> VarintOf(const Field& f) {
  if (f.type != WireFormatLite::WIRETYPE_VARINT) return std::nullopt;
  CodedInputStream in = InputOver(f.bytes);
  uint64_t value = 0;
  if (in.ReadTag() == 0 || !in.ReadVarint64(&value)) return std::nullopt;
  return value;
}

// The payload of a length-delimited field.
std::string_view PayloadOf(const Field& f) {
  CodedInputStream in = InputOver(f.bytes);
  uint32_t size = 0;
  in.ReadTag();
  in.ReadVarint32(&size);
  return f.bytes.substr(f.bytes.size() - size);
}

void AppendVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

void AppendVarintField(std::string* out, int number, uint64_t v) {
  AppendVarint(out, WireFormatLite::MakeTag(number, WireFormatLite::WIRETYPE_VARINT));
  AppendVarint(out, v);
}

void AppendBytesField(std::string* out, int number, std::string_view bytes) {
  AppendVarint(out, WireFormatLite::MakeTag(number, WireFormatLite::WIRETYPE_LENGTH_DELIMITED));
  AppendVarint(out, bytes.size());
  out->append(bytes);
}

// A timerfd_entry armed again for one interval if it is an expired periodic
// timer (see the header); nullopt if it needs no fix or does not parse.
std::optional<std::string> RearmedTimerfd(std::string_view entry) {
  auto fields = SplitFields(entry);
  if (!fields) return std::nullopt;
  uint64_t v[kIntervalNsec + 1] = {};
  for (const Field& f : *fields) {
    if (f.number < kTicks || f.number > kIntervalNsec) continue;
    auto value = VarintOf(f);
    if (!value) return std::nullopt;
    v[f.number] = *value;
  }
  bool expired_periodic = !(v[kSettimeFlags] & kTimerAbstime) && v[kValueSec] == 0 &&
                          v[kValueNsec] == 0 && (v[kIntervalSec] != 0 || v[kIntervalNsec] != 0) &&
                          v[kTicks] > 0;
  if (!expired_periodic) return std::nullopt;
  std::string out;
  for (const Field& f : *fields) {
    if (f.number != kValueSec && f.number != kValueNsec) out.append(f.bytes);
  }
  AppendVarintField(&out, kValueSec, v[kIntervalSec]);
  AppendVarintField(&out, kValueNsec, v[kIntervalNsec]);
  return out;
}

// A file_entry with its timerfd fixed, or nullopt if it needs no fix.
// kCorrupt if it does not parse.
Result<std::optional<std::string>> FixedFileEntry(std::string_view entry) {
  auto fields = SplitFields(entry);
  if (!fields) return Fail(ErrorKind::kCorrupt, "an entry is not a protobuf message");
  std::optional<std::string> timerfd;
  for (const Field& f : *fields) {
    if (f.number == kFileEntryTimerfd && f.type == WireFormatLite::WIRETYPE_LENGTH_DELIMITED) {
      timerfd = RearmedTimerfd(PayloadOf(f));
    }
  }
  if (!timerfd) return std::optional<std::string>();
  std::string out;
  for (const Field& f : *fields) {
    if (f.number != kFileEntryTimerfd) out.append(f.bytes);
  }
  AppendBytesField(&out, kFileEntryTimerfd, *timerfd);
  return std::optional<std::string>(std::move(out));
}

uint32_t U32At(std::string_view data, size_t offset) {
  uint32_t v;
  std::memcpy(&v, data.data() + offset, sizeof v);
  return v;
}

void AppendU32(std::string* out, uint32_t v) {
  out->append(reinterpret_cast<const char*>(&v), sizeof v);
}

}  // namespace

Result<std::string> RearmExpiredPeriodicTimerfds(std::string_view image, int* fixed) {
  *fixed = 0;
  auto corrupt = [](const std::string& why) {
    return Fail(ErrorKind::kCorrupt, "not a CRIU files image: " + why);
  };
  if (image.size() < 8) return corrupt("too short");
  if (U32At(image, 0) != kImgCommonMagic || U32At(image, 4) != kFilesMagic) {
    return corrupt("wrong magic");
  }
  std::string out(image.substr(0, 8));
  for (size_t pos = 8; pos < image.size();) {
    if (image.size() - pos < 4) return corrupt("truncated entry size");
    uint32_t size = U32At(image, pos);
    pos += 4;
    if (size > image.size() - pos) return corrupt("truncated entry");
    std::string_view entry = image.substr(pos, size);
    pos += size;
    auto fixed_entry = FixedFileEntry(entry);
    if (!fixed_entry) return corrupt(fixed_entry.error().message());
    if (*fixed_entry) ++*fixed;
    std::string_view bytes = *fixed_entry ? std::string_view(**fixed_entry) : entry;
    AppendU32(&out, static_cast<uint32_t>(bytes.size()));
    out.append(bytes);
  }
  return out;
}

Result<int> FixDumpedImages(const std::string& images_dir) {
  std::string path = images_dir + "/" + std::string(kCriuFilesImage);
  auto image = ReadFileToString(path);
  if (!image) {
    if (image.error().kind() == ErrorKind::kNotFound) return 0;
    return std::unexpected(image.error());
  }
  int fixed = 0;
  auto rewritten = RearmExpiredPeriodicTimerfds(*image, &fixed);
  if (!rewritten) return std::unexpected(rewritten.error().WithContext(path));
  if (fixed == 0) return 0;
  if (auto s = WriteFileAtomic(path, *rewritten, 0600); !s) return std::unexpected(s.error());
  return fixed;
}

}  // namespace cryo
