// SPDX-License-Identifier: Apache-2.0
#include "cryo/protocol.h"

#include <endian.h>
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "cryo/file_util.h"

namespace cryo {
namespace {

// A connected pair of unix stream sockets, like a client and cryod.
struct SocketPair {
  SocketPair() {
    int fds[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    a.reset(fds[0]);
    b.reset(fds[1]);
  }
  UniqueFd a;
  UniqueFd b;
};

std::string LengthPrefix(uint32_t len) {
  uint32_t le = htole32(len);
  return std::string(reinterpret_cast<const char*>(&le), sizeof le);
}

// Writes `bytes` raw to one end, closes it, and reads a frame from the other.
Result<bool> ReadFrameFromBytes(const std::string& bytes) {
  SocketPair sp;
  EXPECT_TRUE(WriteAll(sp.a.get(), bytes).has_value());
  sp.a.reset();
  proto::Request request;
  return ReadFrame(sp.b.get(), &request);
}

TEST(ProtocolTest, FramesRoundTripRequestAndResponse) {
  SocketPair sp;
  proto::Request request;
  request.set_protocol_version(kProtocolVersion);
  request.mutable_run()->set_name("web");
  request.mutable_run()->add_argv("/bin/sleep");
  request.mutable_run()->add_argv("10");
  request.mutable_run()->set_attach(true);
  proto::Response response;
  response.mutable_output()->set_stream(proto::Output::STREAM_STDERR);
  response.mutable_output()->set_data(std::string("a\0b", 3));

  ASSERT_TRUE(WriteFrame(sp.a.get(), request).has_value());
  ASSERT_TRUE(WriteFrame(sp.a.get(), response).has_value());

  proto::Request got_request;
  auto r = ReadFrame(sp.b.get(), &got_request);
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_TRUE(*r);
  EXPECT_EQ(got_request.SerializeAsString(), request.SerializeAsString());
  EXPECT_EQ(got_request.run().argv(1), "10");

  proto::Response got_response;
  r = ReadFrame(sp.b.get(), &got_response);
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_TRUE(*r);
  EXPECT_EQ(got_response.output().stream(), proto::Output::STREAM_STDERR);
  EXPECT_EQ(got_response.output().data(), std::string("a\0b", 3));
}

TEST(ProtocolTest, EmptyMessageRoundTrips) {
  SocketPair sp;
  proto::Response response;
  response.mutable_done();
  ASSERT_TRUE(WriteFrame(sp.a.get(), response).has_value());
  proto::Response got;
  auto r = ReadFrame(sp.b.get(), &got);
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_TRUE(*r);
  EXPECT_TRUE(got.has_done());
}

TEST(ProtocolTest, CleanEndOfStreamReturnsFalse) {
  auto r = ReadFrameFromBytes("");
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_FALSE(*r);
}

TEST(ProtocolTest, TruncatedHeaderIsCorrupt) {
  auto r = ReadFrameFromBytes(std::string("\x05\x00", 2));
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().kind(), ErrorKind::kCorrupt);
}

TEST(ProtocolTest, TruncatedBodyIsCorrupt) {
  auto r = ReadFrameFromBytes(LengthPrefix(10) + "abc");
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().kind(), ErrorKind::kCorrupt);
}

TEST(ProtocolTest, LengthOverLimitIsCorrupt) {
  auto r = ReadFrameFromBytes(LengthPrefix(kMaxFrameBytes + 1));
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().kind(), ErrorKind::kCorrupt);
  EXPECT_NE(r.error().message().find(std::to_string(kMaxFrameBytes + 1)), std::string::npos)
      << r.error().message();
}

TEST(ProtocolTest, BodyThatDoesNotParseIsCorrupt) {
  // Field 1, length-delimited, claiming 127 bytes of which only 2 follow.
  std::string body =
      "\x0a\x7f"
      "ab";
  auto r = ReadFrameFromBytes(LengthPrefix(static_cast<uint32_t>(body.size())) + body);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().kind(), ErrorKind::kCorrupt);
}

TEST(ProtocolTest, ErrorSurvivesTheWire) {
  Error error(ErrorKind::kFailedPrecondition, "job web is not running");
  Error back = ErrorFromProto(ErrorResponse(error).error());
  EXPECT_EQ(back.kind(), ErrorKind::kFailedPrecondition);
  EXPECT_EQ(back.message(), "job web is not running");
}

TEST(ProtocolTest, EveryErrorKindSurvivesTheWire) {
  for (ErrorKind kind :
       {ErrorKind::kInvalidArgument, ErrorKind::kNotFound, ErrorKind::kAlreadyExists,
        ErrorKind::kPermissionDenied, ErrorKind::kFailedPrecondition, ErrorKind::kUnavailable,
        ErrorKind::kCorrupt, ErrorKind::kIo, ErrorKind::kInternal}) {
    proto::Response response = ErrorResponse(Error(kind, "m"));
    EXPECT_EQ(response.error().kind(), ErrorKindName(kind));
    EXPECT_EQ(ErrorFromProto(response.error()).kind(), kind) << ErrorKindName(kind);
  }
}

TEST(ProtocolTest, ErrorResponseCarriesErrnoText) {
  proto::Response response = ErrorResponse(Error(ErrorKind::kNotFound, "open /x", ENOENT));
  EXPECT_EQ(response.error().message(), std::string("open /x: ") + std::strerror(ENOENT));
}

}  // namespace
}  // namespace cryo
