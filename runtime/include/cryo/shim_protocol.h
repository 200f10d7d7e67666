// SPDX-License-Identifier: Apache-2.0
// The wire protocol between libcryo_preload.so (inside a job's processes)
// and cryod, on cryod's shim socket. Documented in runtime/FORMAT.md.
//
// Every message is one fixed-size 64-byte record, so the shim can build and
// send one from a signal handler without allocating. Two kinds of
// connection:
//   - a report: the shim connects, sends kTermReport, reads a 1-byte answer
//     (kAccepted or kRefused) and closes. No socket of a report is open
//     when cryod freezes the job: it waits for the close first.
//   - an API connection: opened at the first use of the cryo.h API, starts
//     with kHello and stays open. CRIU dumps the program's end as an
//     external unix socket; a restore replaces it with a fresh one
//     (inherit-fd), so the program keeps its descriptor.
// cryod identifies the sender by the socket's peer credentials and the
// job cgroup that process is in; nothing in a message is trusted for that.
//
// Header-only and free of the C++ library: the shim includes it.
#pragma once

#include <stdint.h>

namespace cryo::shim {

inline constexpr uint32_t kMagic = 0x6d696873;  // "shim", little-endian
inline constexpr uint16_t kVersion = 1;
inline constexpr int kTextBytes = 24;

enum Type : uint16_t {
  // shim -> cryod
  kTermReport = 1,         // a SIGTERM arrived; time_ms says when
  kHello = 2,              // first message of an API connection; inode = its socket's
  kCheckpointRequest = 3,  // cryo_checkpoint(); seq names the request
  kReady = 4,              // answer to kPrepare (same seq): hooks ran, no hold
  // cryod -> shim
  kPrepare = 16,         // a checkpoint of the job is about to freeze it
  kResumed = 17,         // the checkpoint is over, the job runs on; status, text = id
  kRestored = 18,        // this process was just restored; text = checkpoint id
  kCheckpointDone = 19,  // answer to kCheckpointRequest (same seq); status, text = id
};

// Flags of kTermReport.
inline constexpr uint32_t kFromSignalfd = 1;  // read from a signalfd or sigwait*

// The 1-byte answer to a report.
inline constexpr unsigned char kAccepted = 'A';
inline constexpr unsigned char kRefused = 'R';

struct Message {
  uint32_t magic;
  uint16_t version;
  uint16_t type;
  uint64_t seq;
  int64_t time_ms;  // CLOCK_REALTIME of the event, in milliseconds
  int32_t status;   // 0, or an errno value
  uint32_t flags;
  uint64_t inode;
  char text[kTextBytes];  // NUL-terminated
};
static_assert(sizeof(Message) == 64, "the shim protocol uses 64-byte records");

// A SIGTERM that cryod delivers to the program on purpose (after a
// checkpoint, or because it failed) carries si_code SI_QUEUE and this
// value, so the shim passes it to the program instead of reporting it.
inline constexpr uint64_t kForwardValue = 0x6372796f666f7277;  // "cryoforw"

// Environment set by cryod in every job.
inline constexpr const char* kEnvSocket = "CRYO_SHIM_SOCKET";
inline constexpr const char* kEnvMode = "CRYO_ON_SIGTERM";

}  // namespace cryo::shim
