// SPDX-License-Identifier: Apache-2.0
// Serves a checkpoint's image files to `criu restore --stream` over CRIU's
// image-streamer protocol (criu/img-streamer.c, images/img-streamer.proto),
// straight from the store: nothing is staged on disk or in memory, and CRIU
// restores while the chunks are still being fetched. Every chunk is
// verified against its name before a byte of it is written to CRIU; a chunk
// that fails ends that file early, so CRIU's restore fails.
//
// Protocol (restore side): we listen on <images_dir>/streamer-serve.sock;
// CRIU connects once. For each file it sends a little-endian u32 length and
// an img_streamer_request_entry{filename}; we answer with a u32 length and
// an img_streamer_reply_entry{exists}; if it exists, CRIU sends the write end
// of a fresh pipe (SCM_RIGHTS, one dummy byte) and reads the file's bytes
// from it until end of file. Files are asked for in any order and several
// are read at once, so each is fed by a thread of its own.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "cryo/error.h"
#include "cryo/image_store.h"
#include "cryo/store.h"

namespace cryo {

class ImageStreamServer {
 public:
  // Starts listening in `images_dir` (an existing directory; the socket's
  // path must fit a sockaddr_un). `files`, `store` and `key` must outlive
  // this object. `progress`, if given, hears of every chunk fed.
  static Result<std::unique_ptr<ImageStreamServer>> Listen(const std::string& images_dir,
                                                           const std::vector<ImageFile>& files,
                                                           ChunkHash hash, Store& store,
                                                           const Key& key,
                                                           ImageProgress progress = {});
  virtual ~ImageStreamServer() = default;
  // Stops serving (the connection, if any, is shut down) and waits for the
  // feeding threads. Returns the first failure: a chunk that did not verify,
  // a protocol error of the peer. Idempotent.
  virtual Status Finish() = 0;
  // Milliseconds from Listen until the last file CRIU asked for was fed
  // (0 if none was).
  virtual int64_t fed_ms() const = 0;
};

// The name of the socket CRIU connects to, in the images directory.
inline constexpr char kStreamerServeSocket[] = "streamer-serve.sock";

}  // namespace cryo
