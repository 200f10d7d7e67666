// SPDX-License-Identifier: Apache-2.0
#include "cryo/error.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace cryo {
namespace {

TEST(ErrorTest, SysFailMapsErrnoToKind) {
  EXPECT_EQ(SysFail("x", EACCES).error().kind(), ErrorKind::kPermissionDenied);
  EXPECT_EQ(SysFail("x", EPERM).error().kind(), ErrorKind::kPermissionDenied);
  EXPECT_EQ(SysFail("x", EEXIST).error().kind(), ErrorKind::kAlreadyExists);
  EXPECT_EQ(SysFail("x", ENOENT).error().kind(), ErrorKind::kNotFound);
  EXPECT_EQ(SysFail("x", EIO).error().kind(), ErrorKind::kIo);
  EXPECT_EQ(SysFail("x", EACCES).error().sys_errno(), EACCES);
}

TEST(ErrorTest, SysFailReadsErrnoWhenNoneGiven) {
  errno = EEXIST;
  Error e = SysFail("mkdir /x").error();
  EXPECT_EQ(e.kind(), ErrorKind::kAlreadyExists);
  EXPECT_EQ(e.sys_errno(), EEXIST);
}

TEST(ErrorTest, WithContextPrefixesMessageAndKeepsKindAndErrno) {
  Error e = Error(ErrorKind::kIo, "write", EIO).WithContext("/var/lib/cryo/jobs/x/job.json");
  EXPECT_EQ(e.message(), "/var/lib/cryo/jobs/x/job.json: write");
  EXPECT_EQ(e.kind(), ErrorKind::kIo);
  EXPECT_EQ(e.sys_errno(), EIO);
}

TEST(ErrorTest, ToStringAddsErrnoText) {
  EXPECT_EQ(Error(ErrorKind::kIo, "read").ToString(), "read");
  EXPECT_EQ(Error(ErrorKind::kNotFound, "open /x", ENOENT).ToString(),
            std::string("open /x: ") + std::strerror(ENOENT));
}

TEST(ErrorTest, KindNamesRoundTrip) {
  EXPECT_EQ(ErrorKindName(ErrorKind::kNotFound), "not_found");
  EXPECT_EQ(ErrorKindFromName("permission_denied"), ErrorKind::kPermissionDenied);
  EXPECT_EQ(ErrorKindFromName("no_such_kind"), ErrorKind::kInternal);
}

}  // namespace
}  // namespace cryo
