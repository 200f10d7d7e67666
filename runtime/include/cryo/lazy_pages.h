// SPDX-License-Identifier: Apache-2.0
// Restoring memory through userfaultfd: CRIU restores the tree with
// --lazy-pages, leaving out the pages its pagemaps mark lazy (private
// anonymous memory), and `criu lazy-pages` copies them in with UFFDIO_COPY.
// It asks for them over CRIU's page-server protocol; cryod answers from the
// store, every chunk verified first. No page is staged anywhere.
//
// Why: on a VM where every first touch of memory is an expensive fault, an
// ordinary restore spends most of its time faulting in the pages it copies;
// UFFDIO_COPY fills them without a fault (measured here: 1 GiB in 0.25 s
// instead of 2.9 s).
//
// Protocol (criu/page-xfer.c, the receiving side of criu lazy-pages with
// --page-server --ps-socket FD): requests are a struct page_server_iov
// {u32 cmd; u64 nr_pages; u64 vaddr; u64 dst_id} in host byte order (32
// bytes with the padding after cmd). PS_IOV_GET asks for nr_pages pages at
// vaddr of the task whose pagemap image is pagemap-<dst_id>.img; the answer
// is the same struct with cmd PS_IOV_ADD_F | PE_PRESENT << 16, followed by
// the pages. Answers go in the order of the requests. PS_IOV_CLOSE or
// PS_IOV_FORCE_CLOSE ends it, answered with an int32 status (0).
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

class LazyPageServer {
 public:
  // Serves `tasks`' pages on `socket` (our end of a stream socket pair whose
  // other end criu lazy-pages gets as --ps-socket) from a thread of its own,
  // with more that fetch ahead. `tasks`, `store` and `key` must outlive this
  // object. `progress` hears of every page range sent. `on_failure` runs
  // when serving fails, before the socket is shut down: while lazy-pages
  // lives, a page it has not copied yet still stops whoever touches it, so
  // the restored processes can be killed before any of them could read a
  // page that lazy-pages' end would turn into zeros.
  static Result<std::unique_ptr<LazyPageServer>> Start(UniqueFd socket, const LazyTasks& tasks,
                                                       ChunkHash hash, Store& store, const Key& key,
                                                       ImageProgress progress = {},
                                                       std::function<void()> on_failure = {});
  virtual ~LazyPageServer() = default;
  // Stops serving (shuts the socket down) and waits for the threads. The
  // failure of the serving, if any: a chunk that failed its check or could
  // not be fetched (see chunk_failed()), a malformed request, or the other
  // side gone before it said it was done. Idempotent.
  virtual Status Finish() = 0;
  virtual bool chunk_failed() const = 0;
  // Page bytes sent.
  virtual uint64_t served_bytes() const = 0;
};

}  // namespace cryo
