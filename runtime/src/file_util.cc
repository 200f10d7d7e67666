// SPDX-License-Identifier: Apache-2.0
#include "cryo/file_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <random>

namespace cryo {

Status WriteAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return SysFail("write");
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return {};
}

Result<size_t> ReadFull(int fd, std::span<char> buf) {
  size_t done = 0;
  while (done < buf.size()) {
    ssize_t n = ::read(fd, buf.data() + done, buf.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return SysFail("read");
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return done;
}

Result<std::string> ReadToEnd(int fd) {
  // A regular file is read straight into a string of its size (one
  // allocation, one copy: chunks are read this way), anything else in
  // growing steps.
  size_t want = 65536;
  struct stat st {};
  if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) want = static_cast<size_t>(st.st_size) + 1;
  std::string out;
  size_t len = 0;
  for (;;) {
    bool eof = false;
    int error = 0;
    out.resize_and_overwrite(std::max(want, len + 1), [&](char* p, size_t room) {
      while (len < room) {
        ssize_t n = ::read(fd, p + len, room - len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
          eof = n == 0;
          error = n < 0 ? errno : 0;
          break;
        }
        len += static_cast<size_t>(n);
      }
      return len;
    });
    if (error != 0) return SysFail("read", error);
    if (eof) return out;
    want = 2 * len;
  }
}

Result<UniqueFd> OpenFile(const std::string& path, int flags, mode_t mode) {
  int fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
  if (fd < 0) return SysFail("open " + path);
  return UniqueFd(fd);
}

Result<std::string> ReadFileToString(const std::string& path) {
  auto fd = OpenFile(path, O_RDONLY);
  if (!fd) return std::unexpected(fd.error());
  auto data = ReadToEnd(fd->get());
  if (!data) return std::unexpected(data.error().WithContext(path));
  return data;
}

Status WriteFileAtomic(const std::string& path, std::string_view data, mode_t mode) {
  std::random_device rd;
  std::string tmp = path + ".tmp." + std::to_string(rd());
  auto fd = OpenFile(tmp, O_WRONLY | O_CREAT | O_EXCL, mode);
  if (!fd) return std::unexpected(fd.error());
  auto cleanup = [&](Error e) {
    ::unlink(tmp.c_str());
    return std::unexpected(std::move(e));
  };
  if (::fchmod(fd->get(), mode) != 0) return cleanup(SysFail("chmod " + tmp).error());
  if (auto w = WriteAll(fd->get(), data); !w) return cleanup(w.error().WithContext(tmp));
  if (::fsync(fd->get()) != 0) return cleanup(SysFail("fsync " + tmp).error());
  fd->reset();
  if (::rename(tmp.c_str(), path.c_str()) != 0)
    return cleanup(SysFail("rename to " + path).error());
  std::string dir = std::filesystem::path(path).parent_path().string();
  auto dfd = OpenFile(dir.empty() ? "." : dir, O_RDONLY | O_DIRECTORY);
  if (!dfd) return std::unexpected(dfd.error());
  if (::fsync(dfd->get()) != 0) return SysFail("fsync " + dir);
  return {};
}

Status MakeDirs(const std::string& path, mode_t mode) {
  std::filesystem::path p(path);
  std::filesystem::path cur;
  for (const auto& part : p) {
    cur /= part;
    if (::mkdir(cur.c_str(), mode) != 0 && errno != EEXIST) return SysFail("mkdir " + cur.string());
  }
  return {};
}

Status RemoveTree(const std::string& path) {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
  if (ec) return SysFail("remove " + path, ec.value());
  return {};
}

Result<std::pair<UniqueFd, UniqueFd>> MakePipe() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return SysFail("pipe");
  return std::pair{UniqueFd(fds[0]), UniqueFd(fds[1])};
}

}  // namespace cryo
