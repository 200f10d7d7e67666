// SPDX-License-Identifier: Apache-2.0
// cryod's configuration: a file of `key = value` lines (# starts a comment),
// then command-line flags on top. Keys: state_dir, socket, store, criu,
// memory_scratch, log_level, lazy_restore.
#pragma once

#include <string>
#include <string_view>

#include "cryo/error.h"

namespace cryo {

inline constexpr char kDefaultConfigPath[] = "/etc/cryo/cryod.conf";

struct DaemonConfig {
  std::string state_dir = "/var/lib/cryo";
  std::string socket_path = "/run/cryo/cryod.sock";
  std::string store_url;  // empty: file://<state_dir>/store
  std::string criu_path;  // empty: the CRIU that tools/setup.sh installed
  std::string log_level = "info";
  // A tmpfs directory where images are staged when they fit in memory
  // (daemon/scratch.h), or "off" to stage them on disk only.
  std::string memory_scratch = "/dev/shm";
  // How a restore brings memory back (cryo/lazy_pages.h): "auto" through
  // userfaultfd when the checkpoint has at least 64 MiB of lazy pages,
  // "always" whenever it has any, "off" never (CRIU copies every page).
  std::string lazy_restore = "auto";

  std::string EffectiveStoreUrl() const;
};

// Applies the settings in `text` on top of `base`. Unknown keys, missing '='
// and relative paths are errors naming the line.
Result<DaemonConfig> ParseDaemonConfig(std::string_view text, DaemonConfig base);
// Reads and parses a config file. The file runs code as root indirectly (it
// names the CRIU binary), so it must be owned by root and not writable by
// group or others; anything else is refused.
Result<DaemonConfig> LoadDaemonConfig(const std::string& path, DaemonConfig base);

}  // namespace cryo
