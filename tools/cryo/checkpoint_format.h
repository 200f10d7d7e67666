// SPDX-License-Identifier: Apache-2.0
// How jobs and checkpoints are shown by the cryo CLI (human and --json).
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "cryo/daemon.pb.h"

namespace cryo::cli {

nlohmann::json CheckpointJson(const proto::CheckpointInfo& c);
// "1.2 GiB", "512 B".
std::string HumanBytes(uint64_t bytes);
std::string LocalTime(int64_t unix_ms);

}  // namespace cryo::cli
