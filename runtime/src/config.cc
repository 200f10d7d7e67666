// SPDX-License-Identifier: Apache-2.0
#include "cryo/config.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <string>

#include "cryo/file_util.h"

namespace cryo {
namespace {

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

struct Key {
  std::string_view name;
  std::string DaemonConfig::*field;
  bool is_path;
};

constexpr Key kKeys[] = {
    {"state_dir", &DaemonConfig::state_dir, true},
    {"socket", &DaemonConfig::socket_path, true},
    {"store", &DaemonConfig::store_url, false},
    {"criu", &DaemonConfig::criu_path, true},
    {"log_level", &DaemonConfig::log_level, false},
    {"memory_scratch", &DaemonConfig::memory_scratch, false},
    {"lazy_restore", &DaemonConfig::lazy_restore, false},
};

}  // namespace

std::string DaemonConfig::EffectiveStoreUrl() const {
  return store_url.empty() ? "file://" + state_dir + "/store" : store_url;
}

Result<DaemonConfig> ParseDaemonConfig(std::string_view text, DaemonConfig base) {
  int line_no = 0;
  while (!text.empty()) {
    size_t eol = text.find('\n');
    std::string_view line = text.substr(0, eol);
    text = eol == std::string_view::npos ? std::string_view() : text.substr(eol + 1);
    ++line_no;
    if (size_t hash = line.find('#'); hash != std::string_view::npos) line = line.substr(0, hash);
    line = Trim(line);
    if (line.empty()) continue;
    std::string where = "line " + std::to_string(line_no);
    size_t eq = line.find('=');
    if (eq == std::string_view::npos) {
      return Fail(ErrorKind::kInvalidArgument, where + ": expected 'key = value'");
    }
    std::string_view key = Trim(line.substr(0, eq));
    std::string_view value = Trim(line.substr(eq + 1));
    const Key* known = nullptr;
    for (const auto& k : kKeys) {
      if (k.name == key) known = &k;
    }
    if (known == nullptr) {
      return Fail(ErrorKind::kInvalidArgument, where + ": unknown key '" + std::string(key) + "'");
    }
    if (known->is_path && (value.empty() || value.front() != '/')) {
      return Fail(ErrorKind::kInvalidArgument,
                  where + ": " + std::string(key) + " must be an absolute path");
    }
    base.*(known->field) = std::string(value);
  }
  if (base.memory_scratch != "off" &&
      (base.memory_scratch.empty() || base.memory_scratch.front() != '/')) {
    return Fail(
        ErrorKind::kInvalidArgument,
        "memory_scratch must be an absolute path or 'off' (not '" + base.memory_scratch + "')");
  }
  if (base.lazy_restore != "auto" && base.lazy_restore != "always" && base.lazy_restore != "off") {
    return Fail(ErrorKind::kInvalidArgument,
                "lazy_restore must be one of auto, always, off (not '" + base.lazy_restore + "')");
  }
  if (base.log_level != "debug" && base.log_level != "info" && base.log_level != "warn" &&
      base.log_level != "error") {
    return Fail(ErrorKind::kInvalidArgument,
                "log_level must be one of debug, info, warn, error (not '" + base.log_level + "')");
  }
  return base;
}

Result<DaemonConfig> LoadDaemonConfig(const std::string& path, DaemonConfig base) {
  auto fd = OpenFile(path, O_RDONLY);
  if (!fd) return std::unexpected(fd.error());
  struct stat st;
  if (::fstat(fd->get(), &st) != 0) return SysFail("stat " + path);
  if (st.st_uid != 0 || (st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    return Fail(ErrorKind::kPermissionDenied,
                path + " must be owned by root and writable only by root (chown root " + path +
                    "; chmod go-w " + path + ")");
  }
  auto text = ReadToEnd(fd->get());
  if (!text) return std::unexpected(text.error().WithContext(path));
  auto config = ParseDaemonConfig(*text, std::move(base));
  if (!config) return std::unexpected(config.error().WithContext(path));
  return config;
}

}  // namespace cryo
