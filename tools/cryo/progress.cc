// SPDX-License-Identifier: Apache-2.0
#include "progress.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <iomanip>
#include <sstream>

#include "checkpoint_format.h"
#include "cryo/file_util.h"

namespace cryo::cli {
namespace {

// Carriage return, then erase to the end of the line (ANSI "EL").
constexpr std::string_view kRewind = "\r\x1b[K";

// What people call the phases cryod names.
std::string PhaseLabel(const std::string& phase) {
  if (phase == "dump") return "freeze/dump";  // CRIU freezes the job, then dumps it
  return phase;
}

// Columns of the terminal on stderr (80 if it does not say).
size_t TerminalWidth() {
  winsize ws{};
  if (::ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return 80;
}

}  // namespace

std::string DescribeProgress(const proto::Progress& p) {
  std::ostringstream out;
  out << PhaseLabel(p.phase()) << " ";
  if (p.total_bytes() > 0) {
    uint64_t done = std::min(p.done_bytes(), p.total_bytes());
    out << HumanBytes(done) << " of " << HumanBytes(p.total_bytes()) << " ("
        << done * 100 / p.total_bytes() << "%)";
  } else if (p.done_bytes() > 0) {
    out << HumanBytes(p.done_bytes());
  }
  if (p.done_bytes() > 0 && p.elapsed_ms() > 0) {
    out << " at " << HumanBytes(p.done_bytes() * 1000 / static_cast<uint64_t>(p.elapsed_ms()))
        << "/s";
  }
  if (p.total_bytes() > 0 || p.done_bytes() > 0) out << ", ";
  out << std::fixed << std::setprecision(1) << static_cast<double>(p.elapsed_ms()) / 1000 << " s";
  return out.str();
}

bool ProgressLine::Wanted(bool json) { return !json && ::isatty(STDERR_FILENO); }

void ProgressLine::Show(const proto::Progress& progress) {
  std::string text = what_ + ": " + DescribeProgress(progress);
  // A line that wraps could not be redrawn in place.
  size_t width = TerminalWidth();
  if (text.size() >= width) text.resize(width - 1);
  (void)WriteAll(STDERR_FILENO, std::string(kRewind) + text);
  shown_ = true;
}

void ProgressLine::Clear() {
  if (!shown_) return;
  (void)WriteAll(STDERR_FILENO, kRewind);
  shown_ = false;
}

}  // namespace cryo::cli
