// SPDX-License-Identifier: Apache-2.0
// Cutting from candidates found in parallel (FindCutCandidates and
// ChunkLengthFrom) against the byte-by-byte reference, ChunkLength.
#include "chunker.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "image_test_data.h"

namespace cryo {
namespace {

constexpr size_t kKiB = 1024;
constexpr size_t kMiB = 1024 * kKiB;

const unsigned char* Bytes(const std::string& s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}

// FindCutCandidates over data[from, to), with the bytes before as `before`.
bool Find(const std::string& data, size_t from, size_t to, size_t max_count,
          std::vector<CutCandidate>& out) {
  return FindCutCandidates({Bytes(data), from}, Bytes(data) + from, to - from, from, max_count,
                           out);
}

// Repeating 92 7a 00: a candidate every third byte (found by search).
std::string Dense(size_t n) {
  std::string out;
  while (out.size() < n) out += std::string("\x92\x7a\0", 3);
  out.resize(n);
  return out;
}

// The chunk ends of `data`, cut from candidates found in parts of
// `part` bytes (one search if 0); empty if a part had too many to keep.
std::vector<size_t> EndsFromCandidates(const std::string& data, size_t part) {
  std::vector<CutCandidate> candidates;
  size_t step = part == 0 ? data.size() : part;
  for (size_t from = 0; from < data.size(); from += step) {
    size_t to = std::min(data.size(), from + step);
    std::vector<CutCandidate> found;
    if (!Find(data, from, to, (to - from) / 256 + 8, found)) return {};
    candidates.insert(candidates.end(), found.begin(), found.end());
  }
  std::vector<size_t> ends;
  size_t next = 0;
  for (size_t offset = 0; offset < data.size();) {
    offset += ChunkLengthFrom(Bytes(data) + offset, data.size() - offset,
                              std::span(candidates).subspan(next), offset);
    while (next < candidates.size() && candidates[next].pos < offset) ++next;
    ends.push_back(offset);
  }
  return ends;
}

TEST(ChunkerTest, CandidatesGiveTheReferenceCutsWhereverThePartsEnd) {
  std::string data =
      RandomBytes(9 * kMiB + 5, 1) + std::string(kMiB + 7, '\0') + RandomBytes(3 * kMiB, 2);
  std::vector<size_t> want = ChunkBoundaries({data.data(), data.size()});
  EXPECT_GT(want.size(), 40u);
  for (size_t part : {size_t{0}, kMiB, kMiB + 1, 64 * kKiB + 63, 333 * kKiB, 63 * size_t{1}}) {
    EXPECT_EQ(EndsFromCandidates(data, part), want) << "parts of " << part << " bytes";
  }
}

// Within kGearWindow bytes of kMinChunk into a chunk, its hash is not the
// hash of the last kGearWindow bytes: a candidate there does not count, and
// a cut the reference finds there has no candidate. Dense cut points put
// both just after kMinChunk, for every phase.
TEST(ChunkerTest, CutsJustAfterTheMinimumSizeAreTheReferenceOnes) {
  for (size_t shift = 0; shift < kGearWindow + 8; ++shift) {
    std::string data = RandomBytes(kMinChunk - 40 + shift, shift) + Dense(70 * kKiB);
    std::vector<CutCandidate> candidates;
    ASSERT_TRUE(Find(data, 0, data.size(), data.size(), candidates));
    EXPECT_EQ(ChunkLengthFrom(Bytes(data), data.size(), candidates, 0),
              ChunkLength(Bytes(data), data.size()))
        << "shift " << shift;
  }
}

TEST(ChunkerTest, TooManyCandidatesAreReported) {
  std::string data = RandomBytes(kMiB, 3) + Dense(kMiB);
  std::vector<CutCandidate> candidates;
  EXPECT_TRUE(Find(data, 0, kMiB, 100, candidates));
  EXPECT_LT(candidates.size(), 30u);
  EXPECT_FALSE(Find(data, kMiB, data.size(), 100, candidates));
  EXPECT_TRUE(EndsFromCandidates(data, kMiB).empty());
}

TEST(ChunkerTest, ZerosHoldNoCandidate) {
  std::string data(4 * kMiB, '\0');
  std::vector<CutCandidate> candidates;
  EXPECT_TRUE(Find(data, 0, data.size(), 0, candidates));
  EXPECT_TRUE(candidates.empty());
}

}  // namespace
}  // namespace cryo
