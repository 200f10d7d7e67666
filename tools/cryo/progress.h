// SPDX-License-Identifier: Apache-2.0
// The progress line of `cryo checkpoint` and `cryo restore`: on a terminal,
// one line on stderr redrawn as cryod's `progress` frames arrive (phase,
// bytes, rate) and erased when the answer comes. Nothing elsewhere.
#pragma once

#include <string>

#include "client.h"
#include "cryo/daemon.pb.h"

namespace cryo::cli {

// One frame in words: "store 120.0 MiB of 512.0 MiB (23%) at 48.0 MiB/s,
// 2.5 s", "publish 0.2 s".
std::string DescribeProgress(const proto::Progress& progress);

class ProgressLine {
 public:
  // Whether to ask cryod for progress at all: stderr is a terminal and the
  // output is for people (not --json).
  static bool Wanted(bool json);

  // `what` leads the line: "checkpoint web".
  explicit ProgressLine(std::string what) : what_(std::move(what)) {}
  ~ProgressLine() { Clear(); }
  ProgressLine(const ProgressLine&) = delete;
  ProgressLine& operator=(const ProgressLine&) = delete;

  void Show(const proto::Progress& progress);
  // Erases the line, if one is shown.
  void Clear();
  // Show() as the callback of Call() and ReceiveAnswer().
  ProgressFn Callback() {
    return [this](const proto::Progress& p) { Show(p); };
  }

 private:
  std::string what_;
  bool shown_ = false;
};

}  // namespace cryo::cli
