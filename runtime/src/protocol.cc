// SPDX-License-Identifier: Apache-2.0
#include "cryo/protocol.h"

#include <endian.h>

#include <cstring>
#include <string>

#include "cryo/file_util.h"

namespace cryo {

Status WriteFrame(int fd, const google::protobuf::MessageLite& message) {
  std::string body;
  if (!message.SerializeToString(&body)) return Fail(ErrorKind::kInternal, "cannot encode message");
  if (body.size() > kMaxFrameBytes) return Fail(ErrorKind::kInvalidArgument, "message too large");
  uint32_t len = htole32(static_cast<uint32_t>(body.size()));
  std::string frame(reinterpret_cast<const char*>(&len), sizeof len);
  frame += body;
  return WriteAll(fd, frame);
}

Result<bool> ReadFrame(int fd, google::protobuf::MessageLite* message) {
  char header[4];
  auto n = ReadFull(fd, header);
  if (!n) return std::unexpected(n.error());
  if (*n == 0) return false;
  if (*n != sizeof header) return Fail(ErrorKind::kCorrupt, "truncated frame header");
  uint32_t len;
  std::memcpy(&len, header, sizeof len);
  len = le32toh(len);
  if (len > kMaxFrameBytes) {
    return Fail(ErrorKind::kCorrupt,
                "frame of " + std::to_string(len) + " bytes exceeds the limit");
  }
  std::string body(len, '\0');
  n = ReadFull(fd, body);
  if (!n) return std::unexpected(n.error());
  if (*n != len) return Fail(ErrorKind::kCorrupt, "truncated frame");
  if (!message->ParseFromString(body)) return Fail(ErrorKind::kCorrupt, "frame does not parse");
  return true;
}

proto::Response ErrorResponse(const Error& error) {
  proto::Response r;
  r.mutable_error()->set_kind(std::string(ErrorKindName(error.kind())));
  r.mutable_error()->set_message(error.ToString());
  return r;
}

Error ErrorFromProto(const proto::Error& error) {
  return Error(ErrorKindFromName(error.kind()), error.message());
}

}  // namespace cryo
