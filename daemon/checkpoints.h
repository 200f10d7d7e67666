// SPDX-License-Identifier: Apache-2.0
// The checkpoint service of cryod: checkpoint a job (freeze, CRIU dump,
// chunks into the store, manifest, `latest` reference), restore one
// (verify, fetch, CRIU restore through a new cryo-monitor), list, verify and
// remove checkpoints. Every method checks the caller's rights: a checkpoint
// belongs to the uid recorded in its authenticated manifest; other non-root
// uids cannot see it at all.
//
// Thread-safe; the methods block for as long as the work takes.
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#include "cryo/error.h"
#include "cryo/image_store.h"
#include "cryo/store.h"
#include "cryo/unique_fd.h"
#include "progress.h"
#include "scratch.h"
#include "supervisor.h"

namespace cryo {

// Processes of a job that take part in its checkpoints: the LD_PRELOAD
// shim's API connections (daemon/shim_service.h).
class CheckpointParticipants {
 public:
  virtual ~CheckpointParticipants() = default;
  // Before the freeze: lets the job's processes get ready (hooks, holds;
  // bounded). Returns the inodes of their sockets to cryod, which CRIU must
  // dump as external.
  virtual std::vector<uint64_t> Prepare(const JobRecord& job) = 0;
  // The checkpoint is over and the job runs on; `status` is 0 or an errno.
  virtual void Resumed(const JobRecord& job, int status, const std::string& id) = 0;
  // A restored job's processes got `sockets` ({our end, inode of theirs})
  // in place of the dumped ones.
  virtual void Restored(const JobRecord& job, std::vector<std::pair<UniqueFd, uint64_t>> sockets,
                        const std::string& id) = 0;
};

class CheckpointService {
 public:
  struct Options {
    std::string criu_path;
    // A restore brings back memory through userfaultfd (cryo/lazy_pages.h)
    // when the checkpoint has at least this many bytes of lazy pages;
    // nullopt: never.
    std::optional<uint64_t> lazy_restore_min_bytes = uint64_t{64} << 20;
  };

  // Images are dumped to and fetched into `scratch`.
  CheckpointService(Supervisor& supervisor, std::unique_ptr<Store> store, Key key,
                    std::unique_ptr<ScratchSpace> scratch, Options options);
  // Releases the store if Quiesce() took it.
  ~CheckpointService();

  // Checkpoints the running job `name`. The job keeps running unless `stop`,
  // in which case it is ended only after the checkpoint is durable. On any
  // failure the job is left running as before and nothing becomes visible.
  // The result's `phases` (ms): freeze, dump, store, publish, total. The
  // stored manifest has those over when it is written: freeze, dump, store;
  // a `stop` checkpoint's is written before CRIU reports its freeze time,
  // so has no freeze and its dump includes it. Reports its phases ("dump",
  // "store", "publish") to `progress` if given.
  Result<Manifest> Checkpoint(const Caller& caller, std::string_view name, bool stop,
                              ProgressMeter* progress = nullptr);
  struct Restored {
    JobRecord job;
    PhaseTimes phases;  // fetch, restore, total (ms)
  };
  // Restores REF (NAME, NAME@latest or an id) as job `name` (default: the
  // checkpointed job's name). Reports its phases ("fetch", "restore") to
  // `progress` if given.
  Result<Restored> Restore(const Caller& caller, std::string_view ref, std::string_view name,
                           ProgressMeter* progress = nullptr);
  // The caller's checkpoints (of `job`, if not empty), newest first.
  Result<std::vector<Manifest>> List(const Caller& caller, std::string_view job);
  // Re-reads every chunk of REF and checks every hash.
  Result<Manifest> Verify(const Caller& caller, std::string_view ref);
  // Removes REF's manifest (its chunks go with the next `gc`); `latest`
  // falls back to its parent.
  Result<Manifest> Remove(const Caller& caller, std::string_view ref);
  struct GcStats {
    uint64_t manifests = 0;
    uint64_t chunks_kept = 0;
    uint64_t chunks_removed = 0;
  };
  // Removes every chunk no manifest references (root only). Refuses to run
  // if a manifest cannot be read: its chunks would look unreferenced. Waits
  // (up to 30 s, then fails) while other processes sharing the store use it
  // (Store::Guard): their checkpoints may rely on chunks no manifest names
  // yet.
  Result<GcStats> CollectGarbage(const Caller& caller);

  // For an orderly stop: if nothing uses the store now, takes it for good
  // (no checkpoint, restore or gc can start after it), flushes it, removes
  // the memory scratch and returns true. Only then may the stop be recorded
  // as clean.
  bool Quiesce();

  // After an unclean stop: chunks no checkpoint names yet were written after
  // the last sync and may be torn, and a new checkpoint would reuse them as
  // they are. Re-reads each of them and removes those that are not intact
  // (intact ones may belong to another cryod's checkpoint in progress).
  // Returns how many it removed. Removes nothing, and says why, when another
  // process uses the store (Store::Guard) for more than a few seconds, or
  // when a manifest cannot be read with our key: then the chunks failing
  // our check may be another cryod's, named with its own key.
  Result<uint64_t> RemoveTornChunks();

  // The id `job`'s latest reference names ("" if none or unreadable).
  std::string LatestOf(std::string_view job);
  // Whether `manifest` is the newest checkpoint of its job.
  bool IsLatest(const Manifest& manifest) { return LatestOf(manifest.job) == manifest.id; }

  // Asks CRIU now, in the background, whether it can restore lazily here,
  // so that the first restore does not wait for the answer (a `criu swrk`
  // started and asked: about 50 ms). No-op if lazy restores are off.
  void CheckLazyRestoreSoon();

  Store& store() { return *store_; }
  // Set once at startup, before any request.
  void SetParticipants(CheckpointParticipants* participants) { participants_ = participants; }

 private:
  // Loads and authenticates the manifest REF names, if the caller may see it.
  Result<Manifest> Resolve(const Caller& caller, std::string_view ref);
  // Stores the dumped images (`storing` has followed them since the dump
  // began), then publishes the manifest and the job's latest reference.
  Status Publish(Manifest& manifest, const std::string& images_dir, ImageStoreSession& storing,
                 ProgressMeter* progress);
  struct Referenced {
    std::set<std::string> chunk_keys;  // ChunkKey()s the manifests name
    uint64_t manifests = 0;            // readable manifests
    uint64_t unreadable = 0;           // manifests skipped (not `strict`)
  };
  // What the store's manifests reference; with `strict`, an unreadable
  // manifest is an error, else it is skipped. Caller holds store_mu_.
  Result<Referenced> ReferencedChunks(bool strict);
  // Whether CRIU can restore lazily on this machine (asked once).
  bool LazyRestoreWorks();

  Supervisor& supervisor_;
  // Checkpoints, restores and the rest share the store; gc excludes them all
  // (a checkpoint's chunks are stored before its manifest names them).
  std::shared_mutex store_mu_;
  std::unique_ptr<Store> store_;
  Key key_;
  std::unique_ptr<ScratchSpace> scratch_;
  Options options_;
  CheckpointParticipants* participants_ = nullptr;
  bool quiesced_ = false;  // Quiesce() holds store_mu_
  std::once_flag lazy_checked_;
  bool lazy_works_ = false;
  std::jthread lazy_check_;  // last: joined before the rest is destroyed
};

}  // namespace cryo
