// SPDX-License-Identifier: Apache-2.0
#include "cryo/file_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cerrno>
#include <string>
#include <thread>
#include <vector>

#include "temp_dir.h"

namespace cryo {
namespace {

std::vector<std::string> ListDir(const std::string& path) {
  std::vector<std::string> names;
  DIR* d = ::opendir(path.c_str());
  EXPECT_NE(d, nullptr) << path;
  if (d == nullptr) return names;
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  ::closedir(d);
  return names;
}

mode_t ModeOf(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode;
}

std::string ReadOrDie(const std::string& path) {
  auto text = ReadFileToString(path);
  EXPECT_TRUE(text.has_value()) << text.error().ToString();
  return text.value_or("");
}

TEST(WriteFileAtomicTest, WritesContentWithRequestedMode) {
  TempDir dir;
  std::string path = dir.Join("f");
  ASSERT_TRUE(WriteFileAtomic(path, "hello\n", 0640).has_value());
  EXPECT_EQ(ReadOrDie(path), "hello\n");
  EXPECT_EQ(ModeOf(path) & 0777, 0640u);

  ASSERT_TRUE(WriteFileAtomic(dir.Join("g"), "x").has_value());
  EXPECT_EQ(ModeOf(dir.Join("g")) & 0777, 0600u) << "default mode";
}

TEST(WriteFileAtomicTest, ModeIsNotNarrowedByUmask) {
  TempDir dir;
  mode_t old = ::umask(077);
  auto s = WriteFileAtomic(dir.Join("f"), "x", 0644);
  ::umask(old);
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(ModeOf(dir.Join("f")) & 0777, 0644u);
}

TEST(WriteFileAtomicTest, ReplacesExistingContentAndMode) {
  TempDir dir;
  std::string path = dir.Join("f");
  ASSERT_TRUE(WriteFileAtomic(path, "a much longer first version\n", 0644).has_value());
  ASSERT_TRUE(WriteFileAtomic(path, "v2", 0600).has_value());
  EXPECT_EQ(ReadOrDie(path), "v2");
  EXPECT_EQ(ModeOf(path) & 0777, 0600u);
}

TEST(WriteFileAtomicTest, LeavesNoTempFilesBehind) {
  TempDir dir;
  for (int i = 0; i < 3; ++i)
    ASSERT_TRUE(WriteFileAtomic(dir.Join("f"), std::to_string(i)).has_value());
  EXPECT_EQ(ListDir(dir.path()), std::vector<std::string>{"f"});
}

TEST(WriteFileAtomicTest, MissingDirectoryFailsWithoutLeftovers) {
  TempDir dir;
  auto s = WriteFileAtomic(dir.Join("no/such/f"), "x");
  ASSERT_FALSE(s.has_value());
  EXPECT_EQ(s.error().kind(), ErrorKind::kNotFound);
  EXPECT_TRUE(ListDir(dir.path()).empty());
}

TEST(WriteFileAtomicTest, BinaryContentSurvives) {
  TempDir dir;
  std::string data("\0\x01\xff\n\0", 5);
  data += std::string(200'000, 'z');  // more than one read buffer
  ASSERT_TRUE(WriteFileAtomic(dir.Join("f"), data).has_value());
  EXPECT_EQ(ReadOrDie(dir.Join("f")), data);
}

TEST(MakeDirsTest, CreatesNestedDirectories) {
  TempDir dir;
  std::string deep = dir.Join("a/b/c");
  mode_t old = ::umask(022);
  auto s = MakeDirs(deep, 0750);
  ::umask(old);
  ASSERT_TRUE(s.has_value()) << s.error().ToString();
  for (const char* sub : {"a", "a/b", "a/b/c"}) {
    EXPECT_TRUE(S_ISDIR(ModeOf(dir.Join(sub)))) << sub;
    EXPECT_EQ(ModeOf(dir.Join(sub)) & 0777, 0750u) << sub;
  }
}

TEST(MakeDirsTest, ExistingDirectoriesAreFine) {
  TempDir dir;
  ASSERT_TRUE(MakeDirs(dir.Join("a/b")).has_value());
  ASSERT_TRUE(MakeDirs(dir.Join("a/b")).has_value());
  ASSERT_TRUE(MakeDirs(dir.Join("a/b/c/")).has_value());
  EXPECT_TRUE(S_ISDIR(ModeOf(dir.Join("a/b/c"))));
}

TEST(MakeDirsTest, FileInTheWayFails) {
  TempDir dir;
  ASSERT_TRUE(WriteFileAtomic(dir.Join("file"), "x").has_value());
  auto s = MakeDirs(dir.Join("file/sub"));
  ASSERT_FALSE(s.has_value());
  EXPECT_EQ(s.error().sys_errno(), ENOTDIR);
}

TEST(RemoveTreeTest, RemovesTreeAndToleratesMissingPath) {
  TempDir dir;
  ASSERT_TRUE(MakeDirs(dir.Join("t/u")).has_value());
  ASSERT_TRUE(WriteFileAtomic(dir.Join("t/u/f"), "x").has_value());
  ASSERT_TRUE(RemoveTree(dir.Join("t")).has_value());
  EXPECT_TRUE(ListDir(dir.path()).empty());
  EXPECT_TRUE(RemoveTree(dir.Join("t")).has_value());
}

TEST(ReadFileToStringTest, MissingFileIsNotFoundWithEnoent) {
  TempDir dir;
  auto r = ReadFileToString(dir.Join("missing"));
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().kind(), ErrorKind::kNotFound);
  EXPECT_EQ(r.error().sys_errno(), ENOENT);
  EXPECT_NE(r.error().message().find(dir.Join("missing")), std::string::npos)
      << r.error().message();
}

TEST(ReadToEndTest, ReadsWholeFilesOfAnySizeAndPipes) {
  TempDir dir;
  for (size_t size : {size_t{0}, size_t{1}, size_t{65535}, size_t{65536}, size_t{300000}}) {
    std::string data(size, '\0');
    for (size_t i = 0; i < size; ++i) data[i] = static_cast<char>(i * 7 + 3);
    std::string path = dir.Join("f" + std::to_string(size));
    ASSERT_TRUE(WriteFileAtomic(path, data).has_value());
    auto fd = OpenFile(path, O_RDONLY);
    ASSERT_TRUE(fd.has_value());
    auto got = ReadToEnd(fd->get());
    ASSERT_TRUE(got.has_value()) << got.error().ToString();
    EXPECT_TRUE(*got == data) << size;
  }
  // A pipe has no size to go by: more than one step's worth.
  auto pipe = MakePipe();
  ASSERT_TRUE(pipe.has_value());
  auto& [r, w] = *pipe;
  std::string data(200000, 'x');
  std::thread writer([&data, w = std::move(w)]() mutable {
    (void)WriteAll(w.get(), data);
    w.reset();  // end of file for the reader
  });
  auto got = ReadToEnd(r.get());
  writer.join();
  ASSERT_TRUE(got.has_value()) << got.error().ToString();
  EXPECT_TRUE(*got == data);
}

TEST(MakePipeTest, CarriesBytesAndIsCloseOnExec) {
  auto pipe = MakePipe();
  ASSERT_TRUE(pipe.has_value()) << pipe.error().ToString();
  auto& [r, w] = *pipe;
  EXPECT_NE(::fcntl(r.get(), F_GETFD) & FD_CLOEXEC, 0);
  EXPECT_NE(::fcntl(w.get(), F_GETFD) & FD_CLOEXEC, 0);
  ASSERT_TRUE(WriteAll(w.get(), "ping").has_value());
  w.reset();
  auto got = ReadToEnd(r.get());
  ASSERT_TRUE(got.has_value()) << got.error().ToString();
  EXPECT_EQ(*got, "ping");
}

}  // namespace
}  // namespace cryo
