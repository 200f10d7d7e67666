// SPDX-License-Identifier: Apache-2.0
#include "criu_stats.h"

#include <gtest/gtest.h>

#include <string>

namespace cryo {
namespace {

// The stats-dump CRIU 4.2 wrote for a dump of `sleep`.
const unsigned char kRealStatsDump[] = {
    0x40, 0x59, 0x10, 0x55, 0x06, 0x33, 0x09, 0x57, 0x23, 0x00, 0x00, 0x00, 0x0a, 0x21, 0x08, 0xf8,
    0x1e, 0x10, 0x8c, 0xeb, 0x03, 0x18, 0x90, 0x09, 0x20, 0xe0, 0x01, 0x28, 0x3a, 0x30, 0x00, 0x38,
    0x1f, 0x40, 0x00, 0x48, 0x00, 0x50, 0x06, 0x58, 0x06, 0x60, 0x00, 0x68, 0x00, 0x70, 0x00};

std::string RealStatsDump() {
  return std::string(reinterpret_cast<const char*>(kRealStatsDump), sizeof kRealStatsDump);
}

TEST(CriuStatsTest, ReadsTheTimingsOfARealDump) {
  auto stats = ParseCriuDumpStats(RealStatsDump());
  ASSERT_TRUE(stats.has_value()) << stats.error().ToString();
  EXPECT_EQ(stats->freezing_us, 3960);
  EXPECT_EQ(stats->frozen_us, 62860);
  EXPECT_EQ(stats->memdump_us, 1168);
  EXPECT_EQ(stats->memwrite_us, 224);
}

TEST(CriuStatsTest, RefusesWhatIsNotADumpStatsImage) {
  std::string real = RealStatsDump();
  std::string wrong_magic = real;
  wrong_magic[4] = 0x07;
  std::string truncated = real.substr(0, real.size() - 5);
  // A stats_entry with only restore stats (field 2).
  std::string restore_only = real.substr(0, 8) + std::string("\x02\x00\x00\x00\x12\x00", 6);
  std::string garbage = real.substr(0, 12) + std::string(35, '\xff');
  for (const auto& image :
       {std::string(), real.substr(0, 11), wrong_magic, truncated, restore_only, garbage}) {
    auto stats = ParseCriuDumpStats(image);
    ASSERT_FALSE(stats.has_value());
    EXPECT_EQ(stats.error().kind(), ErrorKind::kCorrupt) << stats.error().ToString();
  }
}

TEST(CriuStatsTest, MissingFileIsNotFound) {
  auto stats = ReadCriuDumpStats("/nonexistent/cryo/stats-dump");
  ASSERT_FALSE(stats.has_value());
  EXPECT_EQ(stats.error().kind(), ErrorKind::kNotFound);
}

}  // namespace
}  // namespace cryo
