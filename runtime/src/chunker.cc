// SPDX-License-Identifier: Apache-2.0
#include "chunker.h"

#include <algorithm>
#include <array>

namespace cryo {
namespace {

// Normalized chunking (FastCDC): up to kNormalChunk bytes a cut needs 18 zero
// bits, after that 17, which narrows the spread of sizes around the average
// (~250 KiB on random data). Stronger normalisation (more bits apart) makes
// the cut points depend on where a chunk starts rather than on content, and
// chunking then takes many chunks to resynchronise after an insertion.
// The bits are the top ones because bit k of a gear hash depends on the last
// k+1 bytes only: the top bits see a window of ~50 bytes. The easy mask is a
// subset of the hard one, so a cut point stays one when its chunk's start
// moves.
constexpr size_t kNormalChunk = size_t{160} << 10;
constexpr uint64_t kMaskHard = ~uint64_t{0} << (64 - 18);
constexpr uint64_t kMaskEasy = ~uint64_t{0} << (64 - 17);

// The gear table is fixed (splitmix64 from a fixed seed), not derived from
// the key: boundaries are a function of the content alone.
constexpr std::array<uint64_t, 256> MakeGearTable() {
  std::array<uint64_t, 256> table{};
  uint64_t state = 0x6372796f67656172;  // "cryogear"
  for (auto& entry : table) {
    state += 0x9e3779b97f4a7c15;
    uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9;
    z = (z ^ (z >> 27)) * 0x94d049bb133111eb;
    entry = z ^ (z >> 31);
  }
  return table;
}
constexpr std::array<uint64_t, 256> kGear = MakeGearTable();

// A zero byte maps this gear hash to itself ((h << 1) + g0 == h for h = -g0),
// and any 64 zero bytes lead to it. It matches neither mask, so a block of
// zeros hashed from this state holds no cut and leaves the state as it was:
// runs of zero pages, common in memory images, are skipped at memcmp speed.
constexpr uint64_t kZeroRunHash = uint64_t{0} - kGear[0];
static_assert((kZeroRunHash << 1) + kGear[0] == kZeroRunHash);
static_assert((kZeroRunHash & kMaskEasy) != 0 && (kZeroRunHash & kMaskHard) != 0);
constexpr size_t kZeroBlock = 4096;

// Runs the gear hash `h` over p[from, to) and calls on_match(i, hash) for
// each byte i whose hash meets `mask`, until it returns true; returns
// whether one did.
template <typename OnMatch>
inline bool ScanGear(const unsigned char* p, size_t from, size_t to, uint64_t mask, uint64_t& h,
                     OnMatch on_match) {
  size_t i = from;
  while (i < to) {
    size_t block_end = std::min(to, i + kZeroBlock);
    if (h == kZeroRunHash && IsAllZero(p + i, block_end - i)) {
      i = block_end;
      continue;
    }
    // Two bytes per step: h advances by one shift and one add per two bytes,
    // which halves the loop's dependency chain; the odd position's hash is
    // computed off that chain.
    for (; i + 2 <= block_end; i += 2) {
      uint64_t g0 = kGear[p[i]];
      uint64_t g1 = kGear[p[i + 1]];
      uint64_t h0 = (h << 1) + g0;
      h = (h << 2) + ((g0 << 1) + g1);
      if ((h0 & mask) == 0 && on_match(i, h0)) return true;
      if ((h & mask) == 0 && on_match(i + 1, h)) return true;
    }
    for (; i < block_end; ++i) {
      h = (h << 1) + kGear[p[i]];
      if ((h & mask) == 0 && on_match(i, h)) return true;
    }
  }
  return false;
}

// Scans p[from, to) for a cut point under `mask`, updating the gear hash `h`.
// Returns the chunk length (the cut's offset + 1), or 0 if there is none.
inline size_t FindCut(const unsigned char* p, size_t from, size_t to, uint64_t mask, uint64_t& h) {
  size_t cut = 0;
  ScanGear(p, from, to, mask, h, [&](size_t i, uint64_t) {
    cut = i + 1;
    return true;
  });
  return cut;
}

}  // namespace

size_t ChunkLength(const unsigned char* p, size_t n) {
  if (n <= kMinChunk) return n;
  size_t limit = std::min(n, kMaxChunk);
  size_t normal = std::min(limit, kNormalChunk);
  uint64_t h = 0;  // no cut can fall in the first kMinChunk bytes: skip them
  if (size_t cut = FindCut(p, kMinChunk, normal, kMaskHard, h)) return cut;
  if (size_t cut = FindCut(p, normal, limit, kMaskEasy, h)) return cut;
  return limit;
}

bool FindCutCandidates(std::span<const unsigned char> before, const unsigned char* p, size_t n,
                       size_t base, size_t max_count, std::vector<CutCandidate>& out) {
  uint64_t h = 0;
  for (unsigned char b : before.last(std::min(before.size(), kGearWindow - 1))) {
    h = (h << 1) + kGear[b];
  }
  // The hard mask holds the easy one: every hard candidate is an easy one.
  return !ScanGear(p, 0, n, kMaskEasy, h, [&](size_t i, uint64_t hash) {
    if (out.size() >= max_count) return true;
    out.push_back({static_cast<uint32_t>(base + i), (hash & kMaskHard) == 0});
    return false;
  });
}

size_t ChunkLengthFrom(const unsigned char* p, size_t n, std::span<const CutCandidate> candidates,
                       size_t base) {
  // Up to here, the hash ChunkLength computes from p[kMinChunk] on differs
  // from the one over the last kGearWindow bytes: hash those bytes again.
  constexpr size_t kFirstWindowed = kMinChunk + kGearWindow - 1;
  if (n <= kFirstWindowed) return ChunkLength(p, n);
  size_t limit = std::min(n, kMaxChunk);
  size_t normal = std::min(limit, kNormalChunk);
  uint64_t h = 0;
  if (size_t cut = FindCut(p, kMinChunk, kFirstWindowed, kMaskHard, h)) return cut;
  for (const CutCandidate& c : candidates) {
    if (c.pos < base + kFirstWindowed) continue;
    size_t i = c.pos - base;
    if (i >= limit) break;
    if (i >= normal || c.hard) return i + 1;
  }
  return limit;
}

}  // namespace cryo
