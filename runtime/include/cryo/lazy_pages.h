// SPDX-License-Identifier: Apache-2.0
// Restoring memory through userfaultfd: CRIU restores the tree with
// --lazy-pages, leaving out the pages its pagemaps mark lazy (private
// anonymous memory) and registering them with a userfaultfd per task, which
// it hands to cryod. cryod fills them from the store with UFFDIO_COPY, every
// chunk verified first, in parallel, before any restored task runs. No page
// is staged anywhere, nor copied through a socket.
//
// Why: on a VM where every first touch of memory is an expensive fault, an
// ordinary restore spends most of its time faulting in the pages it copies;
// UFFDIO_COPY fills them without a fault (measured here: 1 GiB in 0.25 s
// instead of 2.9 s). cryod in place of `criu lazy-pages` fed by cryod's
// page server: a whole 1 GiB restore in 0.36-0.42 s instead of 0.65-0.71 s
// (README, runs S and T against R).
#pragma once

#include <cstdint>
#include <functional>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "cryo/error.h"
#include "cryo/image_store.h"
#include "cryo/store.h"
#include "cryo/unique_fd.h"

namespace cryo {

inline constexpr uint64_t kPageBytes = 4096;

// One pagemap_entry (images/pagemap.proto): `pages` pages from `vaddr`.
struct PagemapRun {
  static constexpr uint32_t kParent = 1;   // PE_PARENT: in a parent checkpoint
  static constexpr uint32_t kLazy = 2;     // PE_LAZY: may be restored lazily
  static constexpr uint32_t kPresent = 4;  // PE_PRESENT: in the pages image
  uint64_t vaddr = 0;
  uint64_t pages = 0;
  uint32_t flags = 0;
  uint64_t offset = 0;  // of its first page in the pages image, if present
  bool present() const { return (flags & kPresent) != 0; }
  bool lazy() const { return (flags & kLazy) != 0; }
  uint64_t bytes() const { return pages * kPageBytes; }
};

struct Pagemap {
  uint32_t pages_id = 0;         // its pages are in pages-<pages_id>.img
  std::vector<PagemapRun> runs;  // in image order: ascending addresses
};

// Parses a pagemap image (two magic words, then u32-length-prefixed
// pagemap_head and pagemap_entry messages). kCorrupt if it is not one, or
// its runs overlap or are out of order.
Result<Pagemap> ParsePagemap(std::string_view image);

// The task image id N of "pagemap-N.img"; nullopt for other names
// (pagemap-shmem-*.img included).
std::optional<uint64_t> PagemapImageId(std::string_view name);
std::string PagesImageName(uint32_t pages_id);

// A task's memory as restored lazily: its pagemap and its pages image.
struct LazyTask {
  Pagemap pagemap;
  const ImageFile* pages = nullptr;  // among the checkpoint's files
};
using LazyTasks = std::map<uint64_t, LazyTask>;  // by task image id

// Bytes of lazy pages in `tasks`.
uint64_t LazyBytes(const LazyTasks& tasks);
// For each chunk of a task's pages image, whether it holds lazy pages only:
// a lazy restore need not stage it.
std::vector<bool> LazyOnlyChunks(const Pagemap& pagemap, const ImageFile& pages);

// Fills the lazy pages of a restore from the store, every chunk verified
// first, straight into the restored processes with UFFDIO_COPY.
//
// `criu restore --lazy-pages` connects to lazy-pages.socket in its work
// directory (the images directory here) and sends each task's userfaultfd
// (criu/uffd.c send_uffd: the task's pid as an int32, then one byte with the
// fd as SCM_RIGHTS; a negative pid, no fd, for a zombie; 0x52535446 once the
// tree runs). The filler listens there in place of `criu lazy-pages`. Its
// lazy memory is registered when the tasks leave CRIU's restorer, so it is
// filled at CRIU's post-restore notification, while every task still waits
// in the restorer: the monitor that received the notification sends "F" on
// `control` (a SOCK_SEQPACKET socket), and acknowledges it once the answer,
// "K" (all in) or "E" and the reason, came back. A failure makes CRIU kill
// the tree: no restored process ever runs with a hole in its memory, and
// none ever faults on one (the fds are closed before the answer).
class LazyMemoryFiller {
 public:
  // Listens on `socket_path` and serves `control` from a thread of its own.
  // `tasks`, `store` and `key` must outlive this object. `progress` hears of
  // every page range filled, from several threads.
  static Result<std::unique_ptr<LazyMemoryFiller>> Start(const std::string& socket_path,
                                                         UniqueFd control, const LazyTasks& tasks,
                                                         ChunkHash hash, Store& store,
                                                         const Key& key,
                                                         ImageProgress progress = {});
  virtual ~LazyMemoryFiller() = default;
  // Stops listening and waits for the thread. The failure of the filling,
  // if it was asked for and failed: a chunk that failed its check or could
  // not be fetched (see chunk_failed()), a task whose userfaultfd never
  // came, a copy the kernel refused. Idempotent.
  virtual Status Finish() = 0;
  // Whether every lazy page went in.
  virtual bool filled() const = 0;
  virtual bool chunk_failed() const = 0;
  virtual uint64_t filled_bytes() const = 0;
};

// The monitor's side of `control`: asks for the memory to be filled and
// waits for the answer.
Status AskToFillLazyMemory(int control);

}  // namespace cryo
