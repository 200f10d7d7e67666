// SPDX-License-Identifier: Apache-2.0
// Serves a checkpoint's image files to `criu restore --stream` over CRIU's
// image-streamer protocol (criu/img-streamer.c, images/img-streamer.proto),
// straight from the store: nothing is staged on disk or in memory, and CRIU
// restores while the chunks are still being fetched. Every chunk is
// verified against its name before a byte of it is written to CRIU; a chunk
// that fails ends that file early, so CRIU's restore fails.
//
// Protocol (restore side): we listen on <images_dir>/streamer-serve.sock;
// CRIU connects once. For each file it sends a u32 length (in host byte
// order: CRIU writes the uint32_t as it is in memory) and an
// img_streamer_request_entry{filename}; we answer with a u32 length (host
// order too) and an img_streamer_reply_entry{exists}; if it exists, CRIU
// sends the write end of a fresh pipe (SCM_RIGHTS, one dummy byte) and reads
// the file's bytes from it until end of file. Files are asked for in any
// order and several are read at once, so each is fed by a thread of its own
// (and two more that fetch its chunks ahead).
//
// CRIU hanging up (closing a pipe or the connection) is a normal end: CRIU
// failed, or needed no more of that file. Its own log says why.
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
  // path must fit a sockaddr_un) and starts the serving thread (fails if no
  // thread can be started). `files`, `store` and `key` must outlive this
  // object. `progress`, if given, hears of every chunk fed, from the feeding
  // threads.
  static Result<std::unique_ptr<ImageStreamServer>> Listen(const std::string& images_dir,
                                                           const std::vector<ImageFile>& files,
                                                           ChunkHash hash, Store& store,
                                                           const Key& key,
                                                           ImageProgress progress = {});
  virtual ~ImageStreamServer() = default;
  // Stops serving (the connection, if any, is closed) and waits for the
  // feeding threads. Returns promptly: a feeder waiting to write to a pipe
  // CRIU neither reads nor closes gives up, as does a wait for CRIU's next
  // request; only a chunk being fetched from the store is waited for.
  // Returns the failure of the stream, if any: a chunk that failed its check
  // or could not be fetched (this one first, see chunk_failed()), else a
  // file that could not be fed (no thread for it) or that CRIU had not read
  // to its end, or a protocol error of CRIU (a malformed request, an fd that
  // is not a pipe's write end), after which the stream hung up on CRIU. A
  // file may have been cut short by any of these, and CRIU may have taken
  // it for a whole one. Idempotent.
  virtual Status Finish() = 0;
  // After Finish(): whether its failure is a chunk of the checkpoint that
  // failed its check or could not be fetched (the checkpoint's or the
  // store's fault) rather than a failure of the stream itself.
  virtual bool chunk_failed() const = 0;
  // Milliseconds from Listen until the last file CRIU asked for was fed
  // (0 if none was).
  virtual int64_t fed_ms() const = 0;
};

// The name of the socket CRIU connects to, in the images directory.
inline constexpr char kStreamerServeSocket[] = "streamer-serve.sock";

}  // namespace cryo
