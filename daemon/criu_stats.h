// SPDX-License-Identifier: Apache-2.0
// CRIU's own timings of a dump: the `stats-dump` file it writes into its
// work directory once the dump is over (stats.proto in CRIU's images/).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "cryo/error.h"

namespace cryo {

struct CriuDumpStats {
  int64_t freezing_us = 0;  // freezing the process tree
  int64_t frozen_us = 0;    // from frozen to thawed (or killed)
  int64_t memdump_us = 0;   // collecting memory pages
  int64_t memwrite_us = 0;  // writing them out
};

// The file name CRIU uses, in its work directory.
inline constexpr std::string_view kCriuDumpStatsFile = "stats-dump";

// Decodes a stats-dump image: two magic words (IMG_SERVICE_MAGIC,
// STATS_MAGIC), then one u32-length-prefixed `stats_entry`. kCorrupt if it
// is not one.
Result<CriuDumpStats> ParseCriuDumpStats(std::string_view image);
// Reads and decodes the file at `path` (kNotFound if CRIU wrote none).
Result<CriuDumpStats> ReadCriuDumpStats(const std::string& path);

}  // namespace cryo
