// SPDX-License-Identifier: Apache-2.0
// Large buffers for reading checkpoint images, reused from one checkpoint to
// the next. Memory a process has touched once is cheap to touch again; fresh
// memory costs a page fault per 4 KiB page (in a VM, often a trip to the
// host). Reading images through mmap paid that for every page of every
// image, and cost a checkpoint as much CPU as hashing them. Internal to
// libcryo.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <vector>

namespace cryo {

// Thread-safe. Every buffer Take() handed out must be released before the
// pool is destroyed.
class BufferPool {
 public:
  static constexpr size_t kBufferBytes = size_t{8} << 20;

  // Borrows `count` buffers from those kept by the process (up to
  // kKeptBuffers), allocating the ones it lacks.
  explicit BufferPool(size_t count);
  // Gives the buffers back to the process.
  ~BufferPool();
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  // A buffer of kBufferBytes, of unspecified content; blocks until one is
  // free. It returns to the pool when the last copy of the pointer goes.
  std::shared_ptr<char> Take();

 private:
  std::mutex mu_;
  std::condition_variable freed_;
  std::vector<std::unique_ptr<char[]>> owned_;
  std::vector<char*> free_;
};

}  // namespace cryo
