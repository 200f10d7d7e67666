// SPDX-License-Identifier: Apache-2.0
// Content-defined chunking of checkpoint images (runtime/FORMAT.md): a
// rolling gear hash, normalised FastCDC cuts, 64 KiB min, ~256 KiB average,
// 1 MiB max. Internal to libcryo; ChunkBoundaries() in cryo/image_store.h is
// the public face.
#pragma once

#include <cstddef>
#include <cstdint>

namespace cryo {

inline constexpr size_t kMinChunk = size_t{64} << 10;
inline constexpr size_t kMaxChunk = size_t{1} << 20;

// Whether the n bytes at p are all zero (false when n is 0).
inline bool IsAllZero(const unsigned char* p, size_t n) {
  return n > 0 && p[0] == 0 && __builtin_memcmp(p, p + 1, n - 1) == 0;
}

// The length of the chunk that starts at p, of the n bytes left: the
// algorithm as FORMAT.md states it, one byte after another. The reference
// that Chunker must agree with.
size_t ChunkLength(const unsigned char* p, size_t n);

}  // namespace cryo
