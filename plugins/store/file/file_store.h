// SPDX-License-Identifier: Apache-2.0
// store.file: a Store in a local directory (or an NFS mount). Each object is
// a file at root/<key>; files are 0600 and directories 0700, because
// checkpoints hold every secret of the checkpointed program.
//
// Keys are relative '/'-separated paths: not empty, not absolute, no "..",
// no "//", no NUL, no trailing '/', and no component starting with '.'
// (names starting with '.' belong to the store itself: ".tmp-*" files being
// written, the ".lock" file and the ".guard" file). Other keys fail with
// kInvalidArgument.
//
// Beyond the Store contract:
// - Put and PutIfAbsent write a temp file and rename it into place, without
//   fsync but with its writeback started (sync_file_range), so that disk
//   writes overlap the caller's work; Flush() is one syncfs() of the file
//   system holding the root.
// - PutIfAbsent and CompareAndSwap are atomic against other threads and
//   other processes using the same root (CompareAndSwap takes an flock on
//   root/.lock and publishes with fsync of the file and its directory).
//   Put and Delete on a key that is also changed by CompareAndSwap are not
//   serialised with it: references are only changed by CompareAndSwap.
// - Guard() is an flock() on root/.guard: shared for kUse, exclusive for
//   kCollect, across threads, processes and (over NFS) hosts.
// - Directories left empty by Delete stay; List skips them.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "cryo/error.h"
#include "cryo/store.h"

namespace cryo {

struct FileStoreConfig {
  std::string root;  // absolute path of the store's directory
};

// The plugin's stable name in the registry.
inline constexpr std::string_view kFileStorePluginName = "store.file";

// Opens the store at config.root, creating the directory (0700) and its
// parents when missing. kInvalidArgument for a relative or empty root,
// kFailedPrecondition when root exists and is not a directory.
Result<std::unique_ptr<Store>> CreateFileStore(const FileStoreConfig& config);

// Parses "file:///absolute/path" into a config; kInvalidArgument (saying
// what a valid URL looks like) for anything else.
Result<FileStoreConfig> FileStoreConfigFromUrl(std::string_view url);

}  // namespace cryo
