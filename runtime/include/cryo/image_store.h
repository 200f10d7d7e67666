// SPDX-License-Identifier: Apache-2.0
// cryo's checkpoint format on top of a Store: a directory of CRIU image files
// becomes content-addressed chunks plus a manifest authenticated with a MAC.
// Documented in runtime/FORMAT.md.
//
//   chunks/<h[0:2]>/<h>    h = hex keyed hash of the plaintext chunk (HMAC-SHA-256;
//                          BLAKE2b-256 in format version 1);
//                          content: 1 byte codec (0 raw, 1 zstd) + payload
//   manifests/<id>         "cryo-manifest 2 <hex MAC>\n" + JSON body (1: format 1)
//   refs/<job>/latest      the id of the job's newest checkpoint
//
// Chunk boundaries are content-defined (a rolling gear hash; 64 KiB min,
// ~256 KiB average, 1 MiB max), so pages inserted in the middle of a pages
// image shift nothing else: unchanged memory dedups across checkpoints.
#pragma once

#include <sys/types.h>

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "cryo/error.h"
#include "cryo/store.h"

namespace cryo {

// The daemon's secret key: names chunks (keyed hash) and authenticates
// manifests (MAC). 32 bytes.
class Key {
 public:
  static constexpr size_t kBytes = 32;
  // Reads the key file, or creates it (0600, random) if it does not exist.
  // Refuses a key file readable or writable by others.
  static Result<Key> LoadOrCreate(const std::string& path);
  static Key FromBytes(const std::array<unsigned char, kBytes>& bytes) { return Key(bytes); }
  const std::array<unsigned char, kBytes>& bytes() const { return bytes_; }

 private:
  explicit Key(const std::array<unsigned char, kBytes>& bytes) : bytes_(bytes) {}
  std::array<unsigned char, kBytes> bytes_;
};

// How chunk names are made: a keyed hash of the chunk's plaintext, with a
// subkey of the daemon's key. A manifest records which one its chunks use.
enum class ChunkHash {
  kBlake2b,     // keyed BLAKE2b-256 (libsodium): format version 1
  kHmacSha256,  // HMAC-SHA-256 (OpenSSL; ~1.75x BLAKE2b's speed with SHA extensions)
  kBlake3,      // keyed BLAKE3-256 (~4x HMAC-SHA-256's speed with AVX-512)
};
inline constexpr ChunkHash kChunkHashes[] = {ChunkHash::kBlake3, ChunkHash::kHmacSha256,
                                             ChunkHash::kBlake2b};
inline constexpr ChunkHash kCurrentChunkHash = ChunkHash::kBlake3;

struct ChunkRef {
  std::string hash;   // hex, 64 characters
  uint64_t size = 0;  // plaintext bytes
};

struct ImageFile {
  std::string name;  // file name inside the images directory, no '/'
  uint64_t size = 0;
  std::vector<ChunkRef> chunks;
};

// Durations of the phases of a checkpoint or restore, in milliseconds.
using PhaseTimes = std::map<std::string, int64_t>;

struct Manifest {
  // Version 2 added chunk_hash; version 1 manifests (BLAKE2b) still read.
  static constexpr int kFormatVersion = 2;
  int format_version = kFormatVersion;
  ChunkHash chunk_hash = kCurrentChunkHash;
  std::string id;
  std::string job;     // job name at checkpoint time
  std::string parent;  // id of the job's previous checkpoint, or empty
  int64_t created_unix_ms = 0;
  std::string host;
  std::string kernel;
  std::string criu_version;
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;
  std::vector<std::string> argv;
  std::vector<std::string> env;
  std::string cwd;
  // CRIU options that restore must repeat ("tcp_established": "true", ...).
  std::map<std::string, std::string> criu_options;
  // inherit-fd keys of the job's stdout/stderr pipes ("pipe:[123]").
  std::string stdout_key;
  std::string stderr_key;
  // Inodes of the shim's API sockets (unix, connected to cryod), dumped as
  // external: a restore passes fresh ones with inherit-fd "socket:[N]".
  std::vector<uint64_t> shim_sockets;
  std::string on_sigterm;  // the job's --on-sigterm mode
  std::vector<ImageFile> files;
  uint64_t image_bytes = 0;   // sum of file sizes
  uint64_t stored_bytes = 0;  // bytes of new chunks this checkpoint wrote
  PhaseTimes phases;
};

// Serialises and authenticates a manifest.
std::string EncodeManifest(const Manifest& manifest, const Key& key);
// Parses a manifest, refusing (kCorrupt) one whose MAC does not verify or
// whose format version is unknown. Nothing of an unverified manifest is used.
Result<Manifest> DecodeManifest(std::string_view data, const Key& key);

// Whether `stored` (an object under ChunkKey(hash)) decodes to a chunk whose
// name is `hash` under one of the chunk hashes: a chunk torn by a crash, or
// altered, is not.
bool IsIntactChunk(std::string_view hash, std::string_view stored, const Key& key);

// "hmac-sha256", "blake2b-256": the names in manifests.
std::string_view ChunkHashName(ChunkHash hash);
std::optional<ChunkHash> ParseChunkHash(std::string_view name);

std::string ChunkKey(std::string_view hash);
std::string ManifestKey(std::string_view id);
std::string LatestRefKey(std::string_view job);

struct StoreStats {
  uint64_t bytes = 0;      // plaintext bytes seen
  uint64_t new_bytes = 0;  // stored bytes (after compression) of chunks not already present
  uint64_t chunks = 0;
  uint64_t new_chunks = 0;
};

// Told that StoreImages or FetchImages has handled `bytes` more plaintext
// bytes (a chunk's worth). Called from their worker threads, concurrently:
// it must be thread-safe and quick.
using ImageProgress = std::function<void(uint64_t bytes)>;

// Chunks every regular file in `dir` (sorted by name), names the chunks with
// `hash`, compresses new chunks with zstd and puts them into `store`
// (PutIfAbsent), in parallel. Does not Flush. Returns the file list for the
// manifest. With `consume`, the files' space is given back as they are read
// (hole punching): they keep their size but read as zeros afterwards.
Result<std::vector<ImageFile>> StoreImages(const std::string& dir, Store& store, const Key& key,
                                           StoreStats* stats, const ImageProgress& progress = {},
                                           ChunkHash hash = kCurrentChunkHash,
                                           bool consume = false);

// StoreImages for a directory that CRIU is still dumping into: between
// Follow() and Finish(), a thread stores the memory images (pages-*.img,
// which CRIU writes from start to end and never rewrites) as they grow,
// every chunk whose bytes and the bytes that decide its end are written, at
// the lowest CPU priority, so that CRIU keeps its core and the store uses
// the one the frozen job leaves idle. Finish(), once the dump is complete,
// stores the rest at full speed. The file list (and every chunk) is the
// same as StoreImages of the finished directory would give.
//
// Not thread-safe: one thread calls the methods. Destroying a session that
// was not finished stops it; chunks it stored stay in the store,
// unreferenced, until `cryo gc`.
class ImageStoreSession {
 public:
  ImageStoreSession(std::string dir, Store& store, const Key& key,
                    ChunkHash hash = kCurrentChunkHash, bool consume = false);
  ~ImageStoreSession();
  ImageStoreSession(const ImageStoreSession&) = delete;
  ImageStoreSession& operator=(const ImageStoreSession&) = delete;

  // Starts following the directory's memory images.
  void Follow();
  // Where progress goes from now on; what was stored before is reported to
  // it at once.
  void SetProgress(ImageProgress progress);
  // The dump is complete: stores what is left, at full priority, and
  // returns the file list (sorted by name). Once only.
  Result<std::vector<ImageFile>> Finish(StoreStats* stats);

 private:
  struct State;
  std::unique_ptr<State> state_;
};
// Whether FetchImages fetches chunk `chunk` of files[file].
using ChunkFilter = std::function<bool(size_t file, size_t chunk)>;
// Fetches every chunk of `files` (named with `hash`), verifies it, and writes
// the files into `dir` (which must exist), 0600. An error names the file and
// chunk. With `want`, only the chunks it wants: the others are holes (the
// files still have their full size).
Status FetchImages(const std::vector<ImageFile>& files, ChunkHash hash, Store& store,
                   const Key& key, const std::string& dir, const ImageProgress& progress = {},
                   const ChunkFilter& want = {});
// Reads chunks of a checkpoint's files one at a time, each verified against
// its name before it is returned. One per thread.
class ChunkReader {
 public:
  ChunkReader(Store& store, const Key& key, ChunkHash hash);
  ~ChunkReader();
  ChunkReader(const ChunkReader&) = delete;
  ChunkReader& operator=(const ChunkReader&) = delete;
  // The plaintext of chunk `index` of `file` (valid until the next Read).
  // Errors name the file and the chunk; damage is kCorrupt.
  Result<std::string_view> Read(const ImageFile& file, size_t index);
  // Like Read, but into `out`, which must hold ReadRoom(chunk) bytes: the
  // stored chunk is read there and decoded in place, the plaintext at
  // out.data() + 1 (restore splices it from there, copied no more).
  Result<std::string_view> ReadInto(const ImageFile& file, size_t index, std::span<char> out);
  static size_t ReadRoom(const ChunkRef& chunk) { return 1 + chunk.size; }

 private:
  struct State;
  Store& store_;
  std::unique_ptr<State> state_;
};

// Reads and verifies every chunk of `files` without writing anything.
Status VerifyImages(const std::vector<ImageFile>& files, ChunkHash hash, Store& store,
                    const Key& key);

// The content-defined chunk boundaries of `data`: the end offset of each chunk.
std::vector<size_t> ChunkBoundaries(std::string_view data);

}  // namespace cryo
