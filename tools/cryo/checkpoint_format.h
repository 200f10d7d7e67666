// SPDX-License-Identifier: Apache-2.0
// How jobs and checkpoints are shown by the cryo CLI (human and --json).
#pragma once

#include <google/protobuf/map.h>
#include <nlohmann/json.hpp>
#include <string>

#include "cryo/daemon.pb.h"

namespace cryo::cli {

using PhasesMs = google::protobuf::Map<std::string, int64_t>;

nlohmann::json CheckpointJson(const proto::CheckpointInfo& c);
// `cryo restore -d --json`: the restored job and how long each phase took.
nlohmann::json RestoreJson(const proto::JobInfo& job);
// "freeze 3 ms, dump 80 ms, ..., total 120 ms": the phases in the order they
// happen, any others after them.
std::string PhasesText(const PhasesMs& phases);
// "1.2 GiB", "512 B".
std::string HumanBytes(uint64_t bytes);
std::string LocalTime(int64_t unix_ms);

}  // namespace cryo::cli
