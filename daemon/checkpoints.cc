// SPDX-License-Identifier: Apache-2.0
#include "checkpoints.h"

#include <linux/capability.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/utsname.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <random>
#include <set>
#include <thread>
#include <utility>

#include "criu_image_fixes.h"
#include "criu_proc_dir.h"
#include "criu_stats.h"
#include "cryo/cgroup.h"
#include "cryo/checkpointer.h"
#include "cryo/file_util.h"
#include "cryo/image_streamer.h"
#include "cryo/lazy_pages.h"
#include "cryo/log.h"
#include "cryo/process.h"
#include "tcp_sockets.h"

namespace cryo {
namespace {

using Clock = std::chrono::steady_clock;

int64_t MillisSince(Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
}

// Where cryo-monitor finds the sockets it passes to CRIU for a restore.
constexpr int kFirstInheritedFd = 10;
// A streamed restore stages only CRIU's log and stats.
constexpr uint64_t kStreamScratchBytes = uint64_t{16} << 20;

bool IsCheckpointId(std::string_view s) {
  return s.size() == 16 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

// The bytes of the regular files in `dir` so far (CRIU writing images).
uint64_t DirectoryBytes(const std::string& dir) {
  uint64_t total = 0;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (!entry.is_regular_file(ec)) continue;
    uintmax_t size = entry.file_size(ec);
    if (!ec) total += size;
  }
  return total;
}

// How long a job may take to freeze clear of vfork() children: CRIU's own
// timeout for freezing.
constexpr std::chrono::seconds kFreezeTimeout{10};

// Dumps tried when one fails in a way worth another (a collision on CRIU's
// proc directory, memory scratch that ran out), and the age past which such
// a directory is a leftover (criu_proc_dir.h).
constexpr int kDumpAttempts = 4;
constexpr std::chrono::seconds kStaleProcDirAge{30};

// How long gc waits for other cryods sharing the store to end the
// checkpoints, restores and verifies under way (their Store guards), and
// how long a start after an unclean stop waits before it leaves torn chunks
// unchecked (it takes no requests meanwhile).
constexpr std::chrono::milliseconds kCollectWait{30'000};
constexpr std::chrono::milliseconds kStartCollectWait{5'000};

// Whether a failed dump ran out of space (CRIU's log, which the error
// carries, says so with strerror(ENOSPC)).
bool IsNoSpace(const Error& error) {
  return error.sys_errno() == ENOSPC ||
         error.message().find("No space left on device") != std::string::npos;
}

uint64_t RandomBelow(uint64_t bound) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  return std::uniform_int_distribution<uint64_t>(0, bound - 1)(rng);
}

// A phase's time for the log ("" when there is none).
std::string PhaseMs(const PhaseTimes& phases, const std::string& phase) {
  auto it = phases.find(phase);
  return it == phases.end() ? "" : std::to_string(it->second);
}

// The pagemaps of a checkpoint's tasks with their pages images, for a
// lazy restore (each pagemap read from the store and verified).
Result<LazyTasks> LoadLazyTasks(const Manifest& m, Store& store, const Key& key) {
  LazyTasks tasks;
  ChunkReader reader(store, key, m.chunk_hash);
  for (const auto& file : m.files) {
    auto id = PagemapImageId(file.name);
    if (!id) continue;
    std::string image;
    for (size_t i = 0; i < file.chunks.size(); ++i) {
      auto plain = reader.Read(file, i);
      if (!plain) return std::unexpected(plain.error());
      image.append(*plain);
    }
    auto pagemap = ParsePagemap(image);
    if (!pagemap) return std::unexpected(pagemap.error().WithContext("image " + file.name));
    uint64_t present = 0;
    for (const auto& run : pagemap->runs) present += run.present() ? run.bytes() : 0;
    if (present == 0) continue;
    std::string name = PagesImageName(pagemap->pages_id);
    auto pages = std::find_if(m.files.begin(), m.files.end(),
                              [&](const ImageFile& f) { return f.name == name; });
    if (pages == m.files.end() || pages->size < present) {
      return Fail(ErrorKind::kCorrupt, "image " + file.name + ": its pages are not all in " + name);
    }
    tasks[*id] = {std::move(*pagemap), &*pages};
  }
  return tasks;
}

// Bytes of lazy pages that more than one task of the checkpoint holds (by
// chunk): memory processes share after a fork, copy-on-write. CRIU restores
// such pages shared, but through userfaultfd each task gets its own copy.
uint64_t LazyBytesShared(const LazyTasks& tasks) {
  std::map<std::string_view, std::pair<uint64_t, const ImageFile*>> seen;  // hash: size, owner
  uint64_t shared = 0;
  for (const auto& [id, task] : tasks) {
    auto lazy_only = LazyOnlyChunks(task.pagemap, *task.pages);
    for (size_t i = 0; i < lazy_only.size(); ++i) {
      if (!lazy_only[i]) continue;
      const ChunkRef& c = task.pages->chunks[i];
      auto [it, fresh] = seen.try_emplace(c.hash, c.size, task.pages);
      if (!fresh && it->second.second != task.pages) shared += c.size;
    }
  }
  return shared;
}

void BeginPhase(ProgressMeter* progress, std::string phase, uint64_t total_bytes = 0,
                std::function<uint64_t()> poll = {}) {
  if (progress) progress->BeginPhase(std::move(phase), total_bytes, std::move(poll));
}

// The dump phase cryod timed began with its own freeze (`frozen_before`)
// and CRIU's seizing of the frozen job (CRIU's own measure): both make the
// freeze phase. Without CRIU's stats (an older CRIU) its part stays in the
// dump phase.
void SplitFreezeFromDump(PhaseTimes& phases, const std::string& work_dir,
                         std::chrono::milliseconds frozen_before) {
  int64_t freeze_ms = frozen_before.count();
  auto stats = ReadCriuDumpStats(work_dir + "/" + std::string(kCriuDumpStatsFile));
  if (stats) {
    freeze_ms += (stats->freezing_us + 500) / 1000;
  } else {
    LogDebug("no freeze time from CRIU", {{"error", stats.error().ToString()}});
  }
  phases["freeze"] = freeze_ms;
  phases["dump"] = std::max<int64_t>(0, phases["dump"] - freeze_ms);
}

// Whether the checkpoint was dumped with CRIU's tcp_established (and its
// network lock), which the restore must repeat. Checkpoints from before
// cryod chose (see tcp_sockets.h) all were.
bool DumpedWithTcp(const Manifest& m) {
  auto it = m.criu_options.find("tcp_established");
  return it == m.criu_options.end() || it->second != "false";
}

void Describe(Manifest& m) {
  utsname u{};
  ::uname(&u);
  m.host = u.nodename;
  m.kernel = u.release;
}

}  // namespace

CheckpointService::CheckpointService(Supervisor& supervisor, std::unique_ptr<Store> store, Key key,
                                     std::unique_ptr<ScratchSpace> scratch, Options options)
    : supervisor_(supervisor),
      store_(std::move(store)),
      key_(key),
      scratch_(std::move(scratch)),
      options_(std::move(options)) {}

Status CheckpointService::Publish(Manifest& m, const std::string& images_dir,
                                  ImageStoreSession& storing, ProgressMeter* progress) {
  auto start = Clock::now();
  // A correction that cannot be made leaves the images as CRIU wrote them:
  // they restore as well as CRIU alone would restore them.
  if (auto fixed = FixDumpedImages(images_dir); !fixed) {
    LogWarn("CRIU's images left uncorrected",
            {{"job", m.job}, {"error", fixed.error().ToString()}});
  } else if (*fixed > 0) {
    LogInfo("expired periodic timerfds re-armed in the images",
            {{"job", m.job}, {"count", std::to_string(*fixed)}});
  }
  StoreStats stats;
  BeginPhase(progress, "store", DirectoryBytes(images_dir));
  if (progress) storing.SetProgress(progress->Counter());
  auto files = storing.Finish(&stats);
  if (!files) return std::unexpected(files.error().WithContext("store images in " + store_->url()));
  m.files = std::move(*files);
  m.image_bytes = stats.bytes;
  m.stored_bytes = stats.new_bytes;
  m.phases["store"] = MillisSince(start);

  // Chunks, then the manifest, then the reference: a crash at any point
  // leaves the previous checkpoint as `latest` and the store consistent.
  start = Clock::now();
  BeginPhase(progress, "publish");
  if (auto s = store_->Flush(); !s) return s;
  if (auto s = store_->Put(ManifestKey(m.id), EncodeManifest(m, key_)); !s) return s;
  if (auto s = store_->Flush(); !s) return s;
  std::optional<std::string> expected;
  if (auto cur = store_->Get(LatestRefKey(m.job))) expected = *cur;
  if (auto s = store_->CompareAndSwap(LatestRefKey(m.job), expected, m.id); !s) {
    return std::unexpected(s.error().WithContext("update the latest reference of '" + m.job + "'"));
  }
  if (auto s = store_->Flush(); !s) return s;
  m.phases["publish"] = MillisSince(start);
  return {};
}

Result<Manifest> CheckpointService::Checkpoint(const Caller& caller, std::string_view name,
                                               bool stop, ProgressMeter* progress) {
  std::shared_lock store_lock(store_mu_);
  // Before anything is frozen: waits while another cryod sharing the store
  // removes chunks, which this checkpoint may find there and reuse.
  auto guard = store_->Guard(Store::GuardMode::kUse);
  if (!guard) return std::unexpected(guard.error().WithContext("checkpoint " + std::string(name)));
  auto job = supervisor_.BeginCheckpoint(caller, name, stop);
  if (!job) return std::unexpected(job.error());
  std::string published;
  struct End {
    Supervisor& s;
    const std::string& id;
    const std::string& published;
    ~End() { s.EndCheckpoint(id, published); }
  } end{supervisor_, job->id, published};
  std::string context = "checkpoint '" + job->name + "'";
  // CRIU reads the rlimits of every task with prlimit(), which for another
  // uid's task needs CAP_SYS_RESOURCE. Say so before freezing anything.
  if (job->uid != 0 && !HasCapability(CAP_SYS_RESOURCE)) {
    return Fail(ErrorKind::kFailedPrecondition,
                context +
                    ": cryod lacks CAP_SYS_RESOURCE, which CRIU needs to checkpoint jobs of "
                    "users other than root; run cryod with full root capabilities (this "
                    "machine's bounding set drops it)");
  }

  Manifest m;
  m.id = NewJobId();
  m.job = job->name;
  m.created_unix_ms = UnixMillis();
  m.uid = job->uid;
  m.gid = job->gid;
  m.groups = job->groups;
  m.argv = job->argv;
  m.env = job->env;
  m.cwd = job->cwd;
  m.stdout_key = job->stdout_key;
  m.stderr_key = job->stderr_key;
  m.on_sigterm = std::string(OnSigtermName(job->on_sigterm));
  if (auto parent = store_->Get(LatestRefKey(m.job))) m.parent = *parent;
  Describe(m);

  // The shim's API connections get ready (hooks, holds) and are dumped as
  // external sockets. They hear when the job runs again: right after the
  // dump, or when anything fails before; not when --stop ended the job.
  if (participants_) m.shim_sockets = participants_->Prepare(*job);
  struct Resume {
    CheckpointParticipants* participants;
    const JobRecord& job;
    bool done = false;
    void operator()(int status, const std::string& id) {
      if (participants && !std::exchange(done, true)) participants->Resumed(job, status, id);
    }
    ~Resume() { (*this)(EIO, ""); }
  } resume{participants_, *job};
  std::vector<std::string> external;
  for (uint64_t inode : m.shim_sockets) external.push_back("unix[" + std::to_string(inode) + "]");

  // The images go to memory when they fit: the job stands frozen for less
  // time, and storing them reads no disk.
  std::optional<uint64_t> estimate;
  if (auto pids = CgroupPids(job->cgroup)) estimate = EstimateImageBytes(*pids);
  auto work = scratch_->Allocate(m.id, estimate);
  if (!work) return std::unexpected(work.error().WithContext(context));
  auto criu = CreateCriuCheckpointer(options_.criu_path);
  if (!criu) return std::unexpected(criu.error().WithContext(context));
  // The memory images are stored as CRIU writes them, on the core the
  // frozen job leaves idle. They are read once: their memory (or disk
  // space) goes back as they are read, and the chunks written next reuse
  // it. In a VM whose balloon returns freed memory to the host, fresh
  // memory costs a slow fault per page; reused, it does not (4 GiB: the
  // store phase took 7.1-7.5 s instead of 9.4-9.6 s, with a quarter less
  // CPU).
  std::unique_ptr<ImageStoreSession> storing;
  auto store_as_dumped = [&] {
    storing = std::make_unique<ImageStoreSession>(work->images(), *store_, key_, m.chunk_hash,
                                                  /*consume=*/true);
    storing->Follow();
  };
  auto criu_version = (*criu)->Version();
  if (!criu_version) return std::unexpected(criu_version.error().WithContext(context));
  m.criu_version = std::move(*criu_version);

  // With --stop the job dies once CRIU is told the checkpoint is committed:
  // store and publish while it is frozen. Otherwise let it run again as
  // soon as the images are complete and store afterwards.
  auto start = Clock::now();
  BeginPhase(progress, "dump", 0, [dir = work->images()] { return DirectoryBytes(dir); });
  store_as_dumped();
  Status stored;
  bool published_in_commit = false;
  auto commit = [&]() -> Status {
    m.phases["dump"] = MillisSince(start);
    LogInfo("images dumped", {{"job", job->name},
                              {"id", m.id},
                              {"dump_ms", std::to_string(m.phases["dump"])},
                              {"stop", stop ? "true" : "false"}});
    if (stop) {
      stored = Publish(m, work->images(), *storing, progress);
      published_in_commit = stored.has_value();
    }
    return stored;
  };
  // cryod freezes the job itself, at a moment CRIU can seize every task.
  // With its TCP sockets, if it has any, kept in CRIU's way (see
  // tcp_sockets.h); the manifest tells the restore which way it was.
  auto dump_frozen = [&](const auto& frozen) -> Status {
    if (!frozen) return std::unexpected(frozen.error().WithContext("freeze the job"));
    bool tcp = true;
    if (auto pids = CgroupPids(job->cgroup)) {
      auto holds = HoldsTcpSockets(*pids);
      if (!holds) {
        LogWarn("cannot tell whether the job has TCP sockets; dumping as if it had",
                {{"job", job->name}, {"error", holds.error().ToString()}});
      }
      tcp = holds.value_or(true);
    }
    m.criu_options = {{"tcp_established", tcp ? "true" : "false"}};
    if (tcp) m.criu_options["network_lock"] = "nftables";
    return (*criu)->Dump({.pid = job->init_pid,
                          .images_dir = work->images(),
                          .work_dir = work->path(),
                          .freeze_cgroup = job->cgroup,
                          .leave_running = !stop,
                          .tcp_established = tcp,
                          .external = external},
                         commit);
  };
  auto frozen = FreezeForDump(job->cgroup, kFreezeTimeout);
  Status dumped = dump_frozen(frozen);
  // Two failures that leave nothing behind are worth another dump: a
  // collision on CRIU's proc directory (criu_proc_dir.h), which fails the
  // dump before any image, and memory scratch that filled up (the estimate
  // counts resident memory; memfds and tmpfs files a job holds count in
  // the images too). The job runs a moment in between.
  auto prepare_retry = [&](const Error& error, int attempt) -> bool {
    bool collided = IsCriuProcDirCollision(error);
    bool memory_full = work->in_memory() && IsNoSpace(error);
    if (!collided && !memory_full) return false;
    storing.reset();  // what it stored is of the failed dump
    (void)ThawIfFrozen(job->cgroup);
    if (memory_full) {
      auto disk = scratch_->Allocate(m.id, std::nullopt);  // an unknown size goes to disk
      if (!disk) return false;
      LogWarn("memory scratch ran out during the dump; dumping again on disk",
              {{"job", job->name}, {"attempt", std::to_string(attempt)}});
      work = std::move(disk);
      BeginPhase(progress, "dump", 0, [dir = work->images()] { return DirectoryBytes(dir); });
      store_as_dumped();
      return true;
    }
    bool removed = RemoveStaleCriuProcDir(job->init_pid, kStaleProcDirAge);
    LogInfo("CRIU's dump collided on its proc directory; dumping again",
            {{"job", job->name},
             {"attempt", std::to_string(attempt)},
             {"stale_removed", removed ? "true" : "false"}});
    std::error_code ignored;
    for (const auto& e : std::filesystem::directory_iterator(work->images(), ignored)) {
      std::filesystem::remove(e.path(), ignored);
    }
    // Random, so that two colliding dumps part.
    std::this_thread::sleep_for(std::chrono::milliseconds(20 + RandomBelow(100)));
    store_as_dumped();
    return true;
  };
  for (int attempt = 2; !dumped && !published_in_commit && attempt <= kDumpAttempts &&
                        prepare_retry(dumped.error(), attempt);
       ++attempt) {
    frozen = FreezeForDump(job->cgroup, kFreezeTimeout);
    dumped = dump_frozen(frozen);
  }
  if (!dumped && published_in_commit) {
    // CRIU died after the --stop checkpoint was durable but before it ended
    // the job: end it as CRIU would have, or two copies of it would diverge.
    LogWarn("CRIU failed after the checkpoint was stored; ending the job as --stop asked",
            {{"job", job->name}, {"id", m.id}, {"error", dumped.error().ToString()}});
    if (auto pids = CgroupPids(job->cgroup)) {
      for (pid_t pid : *pids) ::kill(pid, SIGKILL);
    }
    dumped = {};
  }
  // CRIU leaves the job frozen as it found it, also when it fails (and a
  // task killed above dies only once thawed).
  if (auto thawed = ThawIfFrozen(job->cgroup); !thawed && (!dumped || !stop)) {
    LogError("cannot thaw the job after its dump",
             {{"job", job->name}, {"error", thawed.error().ToString()}});
  }
  if (!dumped || !stop) resume(dumped ? 0 : EIO, dumped ? m.id : "");
  if (!dumped && IsCriuProcDirCollision(dumped.error())) {
    dumped = std::unexpected(dumped.error().WithContext(
        "CRIU could not make its directory '/" + std::string(kCriuProcDir) +
        "' (in the working directory of the job's init), also when tried again: it is there "
        "already (another checkpoint on this machine kept it, or a CRIU that was killed left "
        "it; remove it if no checkpoint is running)"));
  }
  if (!dumped) {
    LogWarn("checkpoint failed", {{"job", job->name}, {"error", dumped.error().ToString()}});
    return std::unexpected(dumped.error().WithContext(context));
  }
  // CRIU's stats exist once the dump is over: in time for the manifest
  // unless --stop published it during the dump.
  SplitFreezeFromDump(m.phases, work->path(), *frozen);
  if (!stop) {
    if (auto s = Publish(m, work->images(), *storing, progress); !s) {
      LogWarn("checkpoint not stored", {{"job", job->name}, {"error", s.error().ToString()}});
      return std::unexpected(s.error().WithContext(context));
    }
  }
  m.phases["total"] = MillisSince(start);
  published = m.id;
  resume.done = resume.done || stop;  // the job is gone
  LogInfo("checkpoint stored", {{"job", m.job},
                                {"id", m.id},
                                {"bytes", std::to_string(m.image_bytes)},
                                {"stored_bytes", std::to_string(m.stored_bytes)},
                                {"freeze_ms", PhaseMs(m.phases, "freeze")},
                                {"dump_ms", PhaseMs(m.phases, "dump")},
                                {"store_ms", PhaseMs(m.phases, "store")},
                                {"publish_ms", PhaseMs(m.phases, "publish")},
                                {"total_ms", PhaseMs(m.phases, "total")},
                                {"stop", stop ? "true" : "false"},
                                {"scratch", work->in_memory() ? "memory" : "disk"}});
  // CRIU has killed the tree, but its monitor reports the end a moment
  // later: answer once the job shows as checkpointed, so that a client's
  // next request (ps, restore) sees it ended. The images and the store are
  // not needed for that.
  if (stop) {
    work = std::unexpected(Error(ErrorKind::kInternal, "released"));
    store_lock.unlock();
    if (!supervisor_.WaitForEnd(job->id, std::chrono::seconds(10))) {
      LogWarn("job not ended 10 s after its --stop checkpoint", {{"job", job->name}});
    }
  }
  return m;
}

Result<Manifest> CheckpointService::Resolve(const Caller& caller, std::string_view ref) {
  std::string text(ref);
  std::string id;
  auto not_found = [&] {
    return Fail(ErrorKind::kNotFound, "no checkpoint '" + text + "' (see 'cryo checkpoints')");
  };
  if (IsCheckpointId(text) && store_->Exists(ManifestKey(text)).value_or(false)) {
    id = text;
  } else {
    std::string job = text;
    if (size_t at = text.find('@'); at != std::string::npos) {
      if (text.substr(at + 1) != "latest") {
        return Fail(ErrorKind::kInvalidArgument,
                    "bad reference '" + text + "': use NAME, NAME@latest or a checkpoint id");
      }
      job = text.substr(0, at);
    }
    if (!IsValidJobName(job)) return not_found();
    auto latest = store_->Get(LatestRefKey(job));
    if (!latest) {
      if (latest.error().kind() == ErrorKind::kNotFound) return not_found();
      return std::unexpected(latest.error());
    }
    id = *latest;
    if (!IsCheckpointId(id)) {
      return Fail(ErrorKind::kCorrupt,
                  "the latest reference of '" + job + "' in " + store_->url() + " is corrupt");
    }
  }
  auto data = store_->Get(ManifestKey(id));
  if (!data) {
    if (data.error().kind() == ErrorKind::kNotFound) return not_found();
    return std::unexpected(data.error());
  }
  auto m = DecodeManifest(*data, key_);
  if (!m) {
    return std::unexpected(Error(m.error().kind(), "checkpoint " + id + " in " + store_->url() +
                                                       ": " + m.error().message()));
  }
  if (m->id != id) return Fail(ErrorKind::kCorrupt, "checkpoint " + id + " carries another id");
  // Another user's checkpoints are invisible, not forbidden.
  if (!caller.is_root() && m->uid != caller.uid) return not_found();
  return m;
}

bool CheckpointService::LazyRestoreWorks() {
  std::call_once(lazy_checked_, [this] {
    auto criu = CreateCriuCheckpointer(options_.criu_path);
    auto works = criu ? (*criu)->SupportsLazyPages() : std::unexpected(criu.error());
    lazy_works_ = works && *works;
    if (!lazy_works_) {
      LogWarn("restores will copy every page themselves: CRIU cannot restore lazily here",
              {{"why",
                works ? "no userfaultfd with non-cooperative events" : works.error().ToString()}});
    } else {
      LogInfo("large restores bring memory back through userfaultfd",
              {{"min_lazy_bytes", std::to_string(options_.lazy_restore_min_bytes.value_or(0))}});
    }
  });
  return lazy_works_;
}

void CheckpointService::CheckLazyRestoreSoon() {
  if (!options_.lazy_restore_min_bytes || lazy_check_.joinable()) return;
  try {
    lazy_check_ = std::jthread([this] { (void)LazyRestoreWorks(); });
  } catch (const std::system_error&) {
    // The first restore asks instead.
  }
}

Result<CheckpointService::Restored> CheckpointService::Restore(const Caller& caller,
                                                               std::string_view ref,
                                                               std::string_view name,
                                                               ProgressMeter* progress) {
  std::shared_lock store_lock(store_mu_);
  auto guard = store_->Guard(Store::GuardMode::kUse);
  if (!guard) return std::unexpected(guard.error().WithContext("restore " + std::string(ref)));
  auto m = Resolve(caller, ref);
  if (!m) return std::unexpected(m.error().WithContext("restore " + std::string(ref)));
  std::string context = "restore " + m->id;
  auto begin = Clock::now();
  auto start = begin;
  PhaseTimes phases;
  auto verify_hint = " (run 'cryo verify " + m->id + "' for details)";
  // Memory through userfaultfd when there is enough of it: everything but the
  // lazy pages is staged, and cryod fills those in through userfaultfd.
  LazyTasks lazy_tasks;
  uint64_t lazy_bytes = 0;
  std::string job_id = NewJobId();
  if (options_.lazy_restore_min_bytes && LazyRestoreWorks()) {
    auto tasks = LoadLazyTasks(*m, *store_, key_);
    if (!tasks) return std::unexpected(tasks.error().WithContext(context + verify_hint));
    lazy_bytes = LazyBytes(*tasks);
    uint64_t shared = lazy_bytes > 0 ? LazyBytesShared(*tasks) : 0;
    if (lazy_bytes > 0 && lazy_bytes >= *options_.lazy_restore_min_bytes &&
        shared * 8 <= lazy_bytes) {
      lazy_tasks = std::move(*tasks);
    } else {
      if (shared * 8 > lazy_bytes) {
        LogInfo("restoring memory the ordinary way: processes share much of it",
                {{"checkpoint", m->id}, {"shared_bytes", std::to_string(shared)}});
      }
      lazy_bytes = 0;
    }
  }
  // Otherwise CRIU reads the images from a stream we feed from the store,
  // each chunk verified first: nothing is staged, and restoring overlaps
  // fetching. The work directory holds only the socket and CRIU's log.
  auto work = scratch_->Allocate(NewJobId(), kStreamScratchBytes);
  if (!work) return std::unexpected(work.error().WithContext(context));
  BeginPhase(progress, "fetch", m->image_bytes - lazy_bytes);
  // Progress: "fetch" while chunks go to CRIU (which restores meanwhile),
  // "restore" once the last one went. Declared before the server, which
  // calls it from its threads until it is destroyed.
  std::atomic<uint64_t> fed{0};
  ImageProgress on_fed;
  if (progress) {
    on_fed = [&, total = m->image_bytes](uint64_t bytes) {
      uint64_t before = fed.fetch_add(bytes);
      if (before >= total) return;
      progress->Add(std::min(bytes, total - before));
      if (before + bytes >= total) progress->BeginPhase("restore");
    };
  }
  std::unique_ptr<ImageStreamServer> stream;
  std::unique_ptr<LazyMemoryFiller> pages;
  UniqueFd pages_theirs;
  if (lazy_bytes > 0) {
    work = scratch_->Allocate(NewJobId(), m->image_bytes - lazy_bytes, m->image_bytes);
    if (!work) return std::unexpected(work.error().WithContext(context));
    std::map<size_t, std::vector<bool>> lazy_only;  // by file index
    for (const auto& [id, task] : lazy_tasks) {
      lazy_only[static_cast<size_t>(task.pages - m->files.data())] =
          LazyOnlyChunks(task.pagemap, *task.pages);
    }
    auto want = [&](size_t file, size_t chunk) {
      auto it = lazy_only.find(file);
      return it == lazy_only.end() || !it->second[chunk];
    };
    if (auto s = FetchImages(m->files, m->chunk_hash, *store_, key_, work->images(),
                             progress ? progress->Counter() : nullptr, want);
        !s) {
      return std::unexpected(s.error().WithContext(context + verify_hint));
    }
    phases["fetch"] = MillisSince(start);
    start = Clock::now();
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) {
      return std::unexpected(SysFail("socketpair").error().WithContext(context));
    }
    pages_theirs.reset(pair[1]);
    BeginPhase(progress, "restore", lazy_bytes);
    ImageProgress on_page;
    if (progress) on_page = [progress](uint64_t bytes) { progress->Add(bytes); };
    auto filler = LazyMemoryFiller::Start(work->images() + "/lazy-pages.socket", UniqueFd(pair[0]),
                                          lazy_tasks, m->chunk_hash, *store_, key_, on_page);
    if (!filler) return std::unexpected(filler.error().WithContext(context));
    pages = std::move(*filler);
  } else if (auto server = ImageStreamServer::Listen(work->images(), m->files, m->chunk_hash,
                                                     *store_, key_, on_fed)) {
    stream = std::move(*server);
  } else {
    // Staged instead (a socket path too long, say): in memory if the images
    // fit beside the restored process.
    LogWarn("restore staged, not streamed", {{"error", server.error().ToString()}});
    work = scratch_->Allocate(NewJobId(), m->image_bytes, m->image_bytes);
    if (!work) return std::unexpected(work.error().WithContext(context));
    if (auto s = FetchImages(m->files, m->chunk_hash, *store_, key_, work->images(),
                             progress ? progress->Counter() : nullptr);
        !s) {
      return std::unexpected(
          s.error().WithContext(context + " (run 'cryo verify " + m->id + "' for details)"));
    }
    phases["fetch"] = MillisSince(start);
    start = Clock::now();
  }

  JobRecord job;
  job.id = job_id;
  job.name = name.empty() ? m->job : std::string(name);
  job.argv = m->argv;
  job.env = m->env;
  job.cwd = m->cwd;
  job.uid = m->uid;
  job.gid = m->gid;
  job.groups = m->groups;
  job.restored_from = m->id;
  job.last_checkpoint = m->id;
  job.on_sigterm = ParseOnSigterm(m->on_sigterm).value_or(OnSigterm::kCheckpoint);
  std::vector<std::string> monitor_args{
      "--restore",    work->images(),     "--criu",       options_.criu_path,
      "--stdout-key", m->stdout_key,      "--stderr-key", m->stderr_key,
      "--stream",     stream ? "1" : "0", "--tcp",        DumpedWithTcp(*m) ? "1" : "0"};
  // The shim's API sockets: a fresh connected pair for each, the program's
  // end put in place of the dumped one (inherit-fd), ours kept.
  std::vector<std::pair<UniqueFd, uint64_t>> ours;
  std::vector<UniqueFd> theirs;
  std::vector<std::pair<int, int>> monitor_fds;
  for (uint64_t inode : m->shim_sockets) {
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
      return std::unexpected(SysFail("socketpair").error().WithContext(context));
    }
    struct stat st {};
    ::fstat(pair[1], &st);
    ours.emplace_back(UniqueFd(pair[0]), st.st_ino);
    theirs.emplace_back(pair[1]);
    int target = kFirstInheritedFd + static_cast<int>(monitor_fds.size());
    monitor_fds.push_back({target, pair[1]});
    monitor_args.push_back("--inherit");
    monitor_args.push_back("socket:[" + std::to_string(inode) + "]=" + std::to_string(target));
  }
  if (pages) {
    int target = kFirstInheritedFd + static_cast<int>(monitor_fds.size());
    monitor_fds.push_back({target, pages_theirs.get()});
    monitor_args.push_back("--lazy-pages");
    monitor_args.push_back(std::to_string(target));
  }
  if (!stream && !pages) BeginPhase(progress, "restore");
  auto restored = supervisor_.StartRestored(caller, job, monitor_args, monitor_fds);
  theirs.clear();
  pages_theirs.reset();
  if (pages) {
    // CRIU is done: it asked for the memory at its post-restore
    // notification, and killed the tree if filling it failed. A job that
    // runs without (never so far) is ended before the userfaultfds close
    // and would let it read zeros.
    bool all_in = pages->filled();
    if (restored && !all_in) (void)supervisor_.Remove(caller, restored->name, /*force=*/true);
    auto filled = pages->Finish();
    if (!restored && pages->chunk_failed()) {
      return std::unexpected(filled.error().WithContext(context + verify_hint));
    }
    if (!restored) return std::unexpected(restored.error().WithContext(context));
    if (!filled || !all_in) {
      std::string why = filled ? "CRIU never asked for it" : filled.error().ToString();
      LogWarn("ended a job whose memory was not all filled",
              {{"job", restored->name}, {"error", why}});
      return std::unexpected(
          Error(ErrorKind::kInternal, "the restored memory was not filled: " + why)
              .WithContext(context));
    }
  }
  if (stream) {
    // CRIU is done: every file it asked for was fed, or cut short by CRIU
    // hanging up (no failure of the stream) or by the stream's failure.
    auto served = stream->Finish();
    if (!served) {
      // CRIU may have taken a file cut short at a record boundary for a
      // whole one: a restored job that lacks part of its images must not run.
      if (restored) {
        LogWarn("ending a job restored from an image stream that failed",
                {{"job", restored->name}, {"error", served.error().ToString()}});
        (void)supervisor_.Remove(caller, restored->name, /*force=*/true);
      }
      // A chunk that failed its check (or could not be fetched) is what made
      // CRIU fail; otherwise CRIU's own error says most, and ours follows.
      if (stream->chunk_failed()) {
        return std::unexpected(
            served.error().WithContext(context + " (run 'cryo verify " + m->id + "' for details)"));
      }
      if (restored) return std::unexpected(served.error().WithContext(context));
      const Error& criu = restored.error();
      return std::unexpected(
          Error(criu.kind(),
                criu.ToString() + "\nthe image stream failed too: " + served.error().ToString())
              .WithContext(context));
    }
  }
  if (!restored) return std::unexpected(restored.error().WithContext(context));
  if (stream) {
    // The two overlap: fetch is until the last chunk went to CRIU, restore
    // the rest, until the job runs.
    int64_t total = MillisSince(begin);
    phases["fetch"] = std::min(stream->fed_ms(), total);
    phases["restore"] = total - phases["fetch"];
  } else {
    phases["restore"] = MillisSince(start);
  }
  if (participants_ && !ours.empty()) participants_->Restored(*restored, std::move(ours), m->id);
  phases["total"] = MillisSince(begin);
  LogInfo("job restored", {{"job", restored->name},
                           {"checkpoint", m->id},
                           {"fetch_ms", PhaseMs(phases, "fetch")},
                           {"restore_ms", PhaseMs(phases, "restore")},
                           {"total_ms", PhaseMs(phases, "total")},
                           {"scratch", work->in_memory() ? "memory" : "disk"},
                           {"images", stream  ? "streamed"
                                      : pages ? "staged, memory lazily"
                                              : "staged"},
                           {"lazy_bytes", std::to_string(lazy_bytes)}});
  return Restored{std::move(*restored), std::move(phases)};
}

Result<std::vector<Manifest>> CheckpointService::List(const Caller& caller, std::string_view job) {
  std::shared_lock store_lock(store_mu_);
  auto keys = store_->List("manifests/");
  if (!keys) return std::unexpected(keys.error());
  std::vector<Manifest> out;
  for (const auto& key : *keys) {
    auto data = store_->Get(key);
    if (!data) continue;
    auto m = DecodeManifest(*data, key_);
    if (!m) {
      LogWarn("unreadable manifest", {{"key", key}, {"error", m.error().ToString()}});
      continue;
    }
    if (!caller.is_root() && m->uid != caller.uid) continue;
    if (!job.empty() && m->job != job) continue;
    out.push_back(std::move(*m));
  }
  std::sort(out.begin(), out.end(), [](const Manifest& a, const Manifest& b) {
    return a.created_unix_ms > b.created_unix_ms;
  });
  return out;
}

std::string CheckpointService::LatestOf(std::string_view job) {
  auto latest = store_->Get(LatestRefKey(job));
  return latest ? *latest : "";
}

Result<Manifest> CheckpointService::Verify(const Caller& caller, std::string_view ref) {
  std::shared_lock store_lock(store_mu_);
  auto guard = store_->Guard(Store::GuardMode::kUse);
  if (!guard) return std::unexpected(guard.error().WithContext("verify " + std::string(ref)));
  auto m = Resolve(caller, ref);
  if (!m) return std::unexpected(m.error());
  if (auto s = VerifyImages(m->files, m->chunk_hash, *store_, key_); !s) {
    return std::unexpected(s.error().WithContext("checkpoint " + m->id));
  }
  return m;
}

Result<Manifest> CheckpointService::Remove(const Caller& caller, std::string_view ref) {
  std::shared_lock store_lock(store_mu_);
  auto m = Resolve(caller, ref);
  if (!m) return std::unexpected(m.error());
  // The reference first: `latest` must never name a missing manifest.
  auto latest = store_->Get(LatestRefKey(m->job));
  if (latest && *latest == m->id) {
    bool parent_kept = !m->parent.empty() && store_->Exists(ManifestKey(m->parent)).value_or(false);
    Status s = parent_kept ? store_->CompareAndSwap(LatestRefKey(m->job), *latest, m->parent)
                           : store_->Delete(LatestRefKey(m->job));
    if (!s) return std::unexpected(s.error().WithContext("remove checkpoint " + m->id));
  }
  if (auto s = store_->Delete(ManifestKey(m->id)); !s) return std::unexpected(s.error());
  if (auto s = store_->Flush(); !s) return std::unexpected(s.error());
  LogInfo("checkpoint removed", {{"job", m->job}, {"id", m->id}});
  return m;
}

Result<CheckpointService::Referenced> CheckpointService::ReferencedChunks(bool strict) {
  Referenced out;
  auto manifests = store_->List("manifests/");
  if (!manifests) return std::unexpected(manifests.error());
  for (const auto& key : *manifests) {
    auto data = store_->Get(key);
    auto m = data ? DecodeManifest(*data, key_) : std::unexpected(data.error());
    if (!m) {
      if (!strict) {
        ++out.unreadable;
        continue;
      }
      return Fail(ErrorKind::kCorrupt,
                  key + " in " + store_->url() + " cannot be read (" + m.error().ToString() +
                      "); its chunks would look unreferenced. Remove or repair it first (or, if "
                      "another cryod shares the store with its own key, give both one key)");
    }
    ++out.manifests;
    for (const auto& f : m->files) {
      for (const auto& c : f.chunks) out.chunk_keys.insert(ChunkKey(c.hash));
    }
  }
  return out;
}

Result<uint64_t> CheckpointService::RemoveTornChunks() {
  std::unique_lock store_lock(store_mu_);
  auto guard = store_->Guard(Store::GuardMode::kCollect, kStartCollectWait);
  if (!guard) return std::unexpected(guard.error());
  auto referenced = ReferencedChunks(/*strict=*/false);
  if (!referenced) return std::unexpected(referenced.error());
  // A manifest this cryod cannot read may be another cryod's, made with
  // another key, whose chunks all fail our check: leave every chunk alone.
  if (referenced->unreadable > 0) {
    return Fail(ErrorKind::kFailedPrecondition,
                std::to_string(referenced->unreadable) + " manifest(s) in " + store_->url() +
                    " cannot be read with this cryod's key (another cryod sharing the store "
                    "with its own key?); unreferenced chunks were left as they are. Cryods "
                    "sharing a store should share its key (also needed to restore each "
                    "other's checkpoints)");
  }
  auto chunks = store_->List("chunks/");
  if (!chunks) return std::unexpected(chunks.error());
  uint64_t removed = 0;
  for (const auto& key : *chunks) {
    if (referenced->chunk_keys.contains(key)) continue;
    std::string hash = key.substr(key.rfind('/') + 1);
    auto data = store_->Get(key);
    if (data && IsIntactChunk(hash, *data, key_)) continue;
    if (auto s = store_->Delete(key); !s) return std::unexpected(s.error());
    ++removed;
  }
  return removed;
}

CheckpointService::~CheckpointService() {
  // A mutex must not be destroyed locked.
  if (quiesced_) store_mu_.unlock();
}

bool CheckpointService::Quiesce() {
  if (quiesced_) return store_->Flush().has_value();
  if (!store_mu_.try_lock()) return false;
  quiesced_ = true;
  scratch_->Close();
  return store_->Flush().has_value();
}

Result<CheckpointService::GcStats> CheckpointService::CollectGarbage(const Caller& caller) {
  if (!caller.is_root()) {
    return Fail(ErrorKind::kPermissionDenied, "gc sweeps every user's checkpoints; run it as root");
  }
  std::unique_lock store_lock(store_mu_);
  auto guard = store_->Guard(Store::GuardMode::kCollect, kCollectWait);
  if (!guard) {
    return std::unexpected(guard.error().WithContext("gc (nothing removed; run it again later)"));
  }
  // Refuses if a manifest cannot be read: its chunks would look unreferenced.
  auto referenced = ReferencedChunks(/*strict=*/true);
  if (!referenced) return std::unexpected(referenced.error().WithContext("gc"));
  GcStats stats;
  stats.manifests = referenced->manifests;
  auto chunks = store_->List("chunks/");
  if (!chunks) return std::unexpected(chunks.error());
  for (const auto& key : *chunks) {
    if (referenced->chunk_keys.contains(key)) {
      ++stats.chunks_kept;
      continue;
    }
    if (auto s = store_->Delete(key); !s) return std::unexpected(s.error());
    ++stats.chunks_removed;
  }
  if (auto s = store_->Flush(); !s) return std::unexpected(s.error());
  LogInfo("gc done", {{"manifests", std::to_string(stats.manifests)},
                      {"chunks_kept", std::to_string(stats.chunks_kept)},
                      {"chunks_removed", std::to_string(stats.chunks_removed)}});
  return stats;
}

}  // namespace cryo
