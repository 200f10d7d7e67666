// SPDX-License-Identifier: Apache-2.0
// Content-defined chunking of checkpoint images (runtime/FORMAT.md): a
// rolling gear hash, normalised FastCDC cuts, 64 KiB min, ~256 KiB average,
// 1 MiB max. Internal to libcryo; ChunkBoundaries() in cryo/image_store.h is
// the public face.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

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

// Cutting in parallel. Whether a chunk may end at a byte depends on the
// gear hash of the kGearWindow bytes up to it, not on where the chunk
// starts (except within kGearWindow bytes of kMinChunk into it). So the
// bytes where a cut can fall, the candidates, can be found by several
// threads, each in its own part of a buffer; choosing among them is then
// cheap work for one thread.
inline constexpr size_t kGearWindow = 64;

struct CutCandidate {
  uint32_t pos;  // of the byte a chunk would end with
  bool hard;     // whether it ends a chunk before the normal size too
};

// Appends to `out` the candidates among p[0, n), in order, as base + their
// position. `before` holds the bytes just before p[0], from the start of
// their chunk or kGearWindow - 1 of them (more are ignored): fewer only if p
// is within kGearWindow - 1 bytes of a chunk's start. Returns false, having
// appended an unspecified part of them, once `out` would hold more than
// `max_count` (data that repeats with a short period can make every few
// bytes a candidate): those bytes must then be cut by ChunkLength.
bool FindCutCandidates(std::span<const unsigned char> before, const unsigned char* p, size_t n,
                       size_t base, size_t max_count, std::vector<CutCandidate>& out);

// ChunkLength(p, n), from `candidates`: those among p[0, n), in order,
// positions counted from p - base (so p[i] is at base + i), complete at
// least from p[kMinChunk] to p[min(n, kMaxChunk)).
size_t ChunkLengthFrom(const unsigned char* p, size_t n, std::span<const CutCandidate> candidates,
                       size_t base);

}  // namespace cryo
