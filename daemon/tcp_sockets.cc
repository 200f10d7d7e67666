// SPDX-License-Identifier: Apache-2.0
#include "tcp_sockets.h"

#include <dirent.h>
#include <unistd.h>

#include <charconv>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <string_view>

#include "cryo/file_util.h"

namespace cryo {
namespace {

// The inode of "socket:[12345]", or 0 for any other link.
ino_t SocketInode(std::string_view link) {
  constexpr std::string_view kPrefix = "socket:[";
  if (!link.starts_with(kPrefix) || !link.ends_with(']')) return 0;
  link = link.substr(kPrefix.size(), link.size() - kPrefix.size() - 1);
  ino_t inode = 0;
  auto [end, ec] = std::from_chars(link.data(), link.data() + link.size(), inode);
  return ec == std::errc() && end == link.data() + link.size() ? inode : 0;
}

Result<std::string> ReadLink(const std::string& path) {
  char buf[256];
  ssize_t n = ::readlink(path.c_str(), buf, sizeof buf);
  if (n < 0) return SysFail("readlink " + path);
  return std::string(buf, static_cast<size_t>(n));
}

// Adds the inodes of the sockets `pid` has open to `inodes`.
Status CollectSockets(pid_t pid, std::set<ino_t>& inodes) {
  std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir.c_str()), ::closedir);
  if (!d) return SysFail("open " + dir);
  while (dirent* e = ::readdir(d.get())) {
    if (e->d_name[0] == '.') continue;
    // An fd closed since readdir is no socket of ours any more.
    auto link = ReadLink(dir + "/" + e->d_name);
    if (link) {
      if (ino_t inode = SocketInode(*link)) inodes.insert(inode);
    }
  }
  return {};
}

// Whether the table at `path` (/proc/PID/net/tcp or tcp6: a header line,
// then one socket per line, its inode in the tenth column) lists one of
// `inodes`.
Result<bool> ListsOneOf(const std::string& path, const std::set<ino_t>& inodes) {
  auto text = ReadFileToString(path);
  if (!text) {
    // A kernel without IPv6 has no tcp6 table.
    if (text.error().sys_errno() == ENOENT) return false;
    return std::unexpected(text.error());
  }
  std::istringstream in(*text);
  std::string line;
  std::getline(in, line);  // header
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string field;
    for (int column = 0; column < 10; ++column) fields >> field;  // the tenth: the inode
    if (!fields) continue;
    ino_t inode = 0;
    auto [end, ec] = std::from_chars(field.data(), field.data() + field.size(), inode);
    if (ec == std::errc() && inodes.contains(inode)) return true;
  }
  return false;
}

}  // namespace

Result<bool> HoldsTcpSockets(const std::vector<pid_t>& pids) {
  std::set<ino_t> sockets;
  for (pid_t pid : pids) {
    if (auto s = CollectSockets(pid, sockets); !s) return std::unexpected(s.error());
  }
  if (sockets.empty()) return false;
  // Each network namespace's tables once.
  std::set<std::string> namespaces;
  for (pid_t pid : pids) {
    std::string proc = "/proc/" + std::to_string(pid);
    auto ns = ReadLink(proc + "/ns/net");
    if (!ns) return std::unexpected(ns.error());
    if (!namespaces.insert(*ns).second) continue;
    for (const char* table : {"/net/tcp", "/net/tcp6"}) {
      auto listed = ListsOneOf(proc + table, sockets);
      if (!listed || *listed) return listed;
    }
  }
  return false;
}

}  // namespace cryo
