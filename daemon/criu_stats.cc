// SPDX-License-Identifier: Apache-2.0
#include "criu_stats.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>

#include <cstring>

#include "cryo/file_util.h"

namespace cryo {
namespace {

// criu/include/magic.h
constexpr uint32_t kImgServiceMagic = 0x55105940;
constexpr uint32_t kStatsMagic = 0x57093306;

// Field numbers of stats.proto: stats_entry.dump; in dump_stats_entry,
// fields 1 to 4 are freezing, frozen, memdump and memwrite time (uint32
// microseconds).
constexpr int kStatsEntryDump = 1;
constexpr int kFreezingTime = 1;
constexpr int kMemwriteTime = 4;

// CRIU images are little-endian, like every machine CRIU runs on here.
uint32_t U32At(std::string_view data, size_t offset) {
  uint32_t v;
  std::memcpy(&v, data.data() + offset, sizeof v);
  return v;
}

using google::protobuf::internal::WireFormatLite;
using google::protobuf::io::CodedInputStream;

// The timings of a `dump_stats_entry`, read field by field: CRIU's
// stats.proto is not compiled into cryo for four numbers.
bool ReadDumpEntry(CodedInputStream& in, CriuDumpStats* out) {
  while (uint32_t tag = in.ReadTag()) {
    int field = static_cast<int>(WireFormatLite::GetTagFieldNumber(tag));
    uint32_t us = 0;
    bool timing = WireFormatLite::GetTagWireType(tag) == WireFormatLite::WIRETYPE_VARINT &&
                  field >= kFreezingTime && field <= kMemwriteTime;
    if (!timing) {
      if (!WireFormatLite::SkipField(&in, tag)) return false;
      continue;
    }
    if (!in.ReadVarint32(&us)) return false;
    int64_t* to[] = {&out->freezing_us, &out->frozen_us, &out->memdump_us, &out->memwrite_us};
    *to[field - kFreezingTime] = us;
  }
  return in.ConsumedEntireMessage();
}

// A `stats_entry`; false if it is malformed or holds no dump stats.
bool ReadStatsEntry(std::string_view bytes, CriuDumpStats* out) {
  CodedInputStream in(reinterpret_cast<const uint8_t*>(bytes.data()),
                      static_cast<int>(bytes.size()));
  bool found = false;
  while (uint32_t tag = in.ReadTag()) {
    if (tag !=
        WireFormatLite::MakeTag(kStatsEntryDump, WireFormatLite::WIRETYPE_LENGTH_DELIMITED)) {
      if (!WireFormatLite::SkipField(&in, tag)) return false;
      continue;
    }
    uint32_t size = 0;
    if (!in.ReadVarint32(&size)) return false;
    auto limit = in.PushLimit(static_cast<int>(size));
    if (!ReadDumpEntry(in, out)) return false;
    in.PopLimit(limit);
    found = true;
  }
  return found && in.ConsumedEntireMessage();
}

}  // namespace

Result<CriuDumpStats> ParseCriuDumpStats(std::string_view image) {
  auto corrupt = [](const std::string& why) {
    return Fail(ErrorKind::kCorrupt, "not a CRIU dump stats image: " + why);
  };
  if (image.size() < 12) return corrupt("too short");
  if (U32At(image, 0) != kImgServiceMagic || U32At(image, 4) != kStatsMagic)
    return corrupt("wrong magic");
  uint32_t size = U32At(image, 8);
  if (size > image.size() - 12) return corrupt("truncated entry");
  CriuDumpStats stats;
  if (!ReadStatsEntry(image.substr(12, size), &stats)) return corrupt("no readable dump stats");
  return stats;
}

Result<CriuDumpStats> ReadCriuDumpStats(const std::string& path) {
  auto data = ReadFileToString(path);
  if (!data) return std::unexpected(data.error());
  auto stats = ParseCriuDumpStats(*data);
  if (!stats) return std::unexpected(stats.error().WithContext(path));
  return stats;
}

}  // namespace cryo
