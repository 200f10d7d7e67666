// SPDX-License-Identifier: Apache-2.0
// Framing of the daemon protocol (runtime/proto/cryo/daemon.proto): a
// little-endian uint32 length, then a packed protobuf message.
#pragma once

#include <google/protobuf/message_lite.h>

#include <cstdint>
#include <string>

#include "cryo/daemon.pb.h"
#include "cryo/error.h"

namespace cryo {

inline constexpr uint32_t kProtocolVersion = 1;
inline constexpr uint32_t kMaxFrameBytes = 16u << 20;

// Writes one frame. Blocks until written.
Status WriteFrame(int fd, const google::protobuf::MessageLite& message);
// Reads one frame into `message`. Returns false on a clean end of stream
// before the first byte; an error on a short frame, an oversized length or
// bytes that do not parse.
Result<bool> ReadFrame(int fd, google::protobuf::MessageLite* message);

// Default socket of cryod, and the environment variable that overrides it.
inline constexpr char kDefaultSocketPath[] = "/run/cryo/cryod.sock";
inline constexpr char kSocketEnvVar[] = "CRYO_SOCKET";

// Error <-> wire conversion.
proto::Response ErrorResponse(const Error& error);
Error ErrorFromProto(const proto::Error& error);

}  // namespace cryo
