// SPDX-License-Identifier: Apache-2.0
#include "cryo/image_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <blake3.h>
#include <openssl/hmac.h>
#include <sodium.h>

#include "cryo/file_util.h"
#include "cryo/unique_fd.h"
#include "fakes/memory_store.h"
#include "image_test_data.h"
#include "temp_dir.h"

namespace cryo {
namespace {

constexpr size_t kKiB = 1024;
constexpr size_t kMiB = 1024 * kKiB;

void WriteOrDie(const std::string& path, std::string_view data) {
  ASSERT_TRUE(WriteFileAtomic(path, data).has_value()) << path;
}

std::string ReadOrDie(const std::string& path) {
  auto text = ReadFileToString(path);
  EXPECT_TRUE(text.has_value()) << text.error().ToString();
  return text.value_or("");
}

std::vector<std::string> ListDir(const std::string& path) {
  std::vector<std::string> names;
  DIR* d = ::opendir(path.c_str());
  if (d == nullptr) return names;
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

// The chunks of `data` as strings, in order.
std::vector<std::string> Chunks(const std::string& data) {
  std::vector<std::string> chunks;
  size_t start = 0;
  for (size_t end : ChunkBoundaries(data)) {
    chunks.push_back(data.substr(start, end - start));
    start = end;
  }
  return chunks;
}

// ---------------------------------------------------------------------------
// Chunking

TEST(ChunkBoundariesTest, EmptyInputHasNoChunks) { EXPECT_TRUE(ChunkBoundaries("").empty()); }

TEST(ChunkBoundariesTest, SmallInputIsOneChunk) {
  std::string data = RandomBytes(10 * kKiB, 1);
  EXPECT_EQ(ChunkBoundaries(data), std::vector<size_t>{data.size()});
}

TEST(ChunkBoundariesTest, RespectMinimumAndMaximumSizes) {
  // Random data cuts by content; zeros never match and are cut at the maximum.
  std::string data =
      RandomBytes(24 * kMiB, 2) + std::string(5 * kMiB + 123, '\0') + RandomBytes(kMiB + 17, 3);
  std::vector<size_t> ends = ChunkBoundaries(data);
  ASSERT_FALSE(ends.empty());
  EXPECT_EQ(ends.back(), data.size());
  size_t start = 0;
  for (size_t i = 0; i < ends.size(); ++i) {
    ASSERT_GT(ends[i], start) << "chunk " << i;
    size_t size = ends[i] - start;
    EXPECT_LE(size, 1 * kMiB) << "chunk " << i;
    if (i + 1 < ends.size()) {
      EXPECT_GE(size, 64 * kKiB) << "chunk " << i;
    }
    start = ends[i];
  }
  double average = static_cast<double>(24 * kMiB) /
                   static_cast<double>(ChunkBoundaries(data.substr(0, 24 * kMiB)).size());
  EXPECT_GT(average, 160.0 * kKiB);
  EXPECT_LT(average, 384.0 * kKiB);
}

TEST(ChunkBoundariesTest, AreDeterministic) {
  std::string data = RandomBytes(8 * kMiB, 4);
  std::string copy = data;  // another address, same content
  EXPECT_EQ(ChunkBoundaries(data), ChunkBoundaries(copy));
  EXPECT_EQ(ChunkBoundaries(data), ChunkBoundaries(data));
}

// Boundaries are part of the format: were they to change, new checkpoints
// would share no chunks with old ones. These were computed with a plain
// byte-by-byte implementation of the algorithm (which also proves the
// shortcut over runs of zeros exact).
TEST(ChunkBoundariesTest, AreStableAcrossVersions) {
  std::string data =
      RandomBytes(3 * kMiB, 42) + std::string(2 * kMiB + 5000, '\0') + RandomBytes(kMiB + 100, 43);
  std::vector<size_t> expected = {652025,  803836,  1032827, 1475514, 1750111, 1833395,
                                  2005148, 2178497, 2393041, 2778985, 3827561, 4876137,
                                  5382825, 5677481, 5787900, 6296556};
  EXPECT_EQ(ChunkBoundaries(data), expected);
}

TEST(ChunkBoundariesTest, ResynchroniseAfterAnInsertion) {
  std::string data = RandomBytes(8 * kMiB, 5);
  std::string pages = RandomBytes(12 * kKiB, 6);
  std::vector<std::string> before = Chunks(data);
  std::set<std::string> before_set(before.begin(), before.end());
  ASSERT_GT(before.size(), 16u);
  for (size_t at : {size_t{4 * kMiB}, 4 * kMiB + 100 * kKiB, size_t{2 * kMiB + 4096}}) {
    std::string edited = data;
    edited.insert(at, pages);
    std::vector<std::string> after = Chunks(edited);
    size_t lost = 0;
    for (const auto& chunk : before)
      lost += after.end() == std::find(after.begin(), after.end(), chunk);
    size_t fresh = 0;
    for (const auto& chunk : after) fresh += !before_set.contains(chunk);
    EXPECT_LE(lost, 3u) << "insertion at " << at << ": chunks of the original no longer present";
    EXPECT_LE(fresh, 3u) << "insertion at " << at << ": new chunks";
    EXPECT_GE(fresh, 1u);
  }
}

// ---------------------------------------------------------------------------
// Object names

TEST(ImageStoreKeysTest, LayOutTheStore) {
  std::string hash(64, 'a');
  hash[0] = '3';
  hash[1] = 'f';
  EXPECT_EQ(ChunkKey(hash), "chunks/3f/" + hash);
  EXPECT_EQ(ManifestKey("0123abcd"), "manifests/0123abcd");
  EXPECT_EQ(LatestRefKey("web"), "refs/web/latest");
}

// ---------------------------------------------------------------------------
// StoreImages / FetchImages / VerifyImages

// A CRIU-like images directory, with things StoreImages must skip.
class ImagesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    files_["core-1.img"] = "core of process 1\n";
    files_["empty.img"] = "";
    files_["mm-1.img"] = RandomBytes(100 * kKiB + 3, 10);
    files_["pages-1.img"] = RandomBytes(3 * kMiB, 11) + std::string(3 * kMiB, '\0');
    for (const auto& [name, data] : files_) WriteOrDie(images_.Join(name), data);
    ASSERT_EQ(::mkdir(images_.Join("subdir").c_str(), 0700), 0);
    WriteOrDie(images_.Join("subdir/inner.img"), "not an image of this directory");
    ASSERT_EQ(::symlink("core-1.img", images_.Join("link.img").c_str()), 0);
  }

  std::vector<ImageFile> StoreOrDie(StoreStats* stats = nullptr) {
    auto files = StoreImages(images_.path(), store_, key_, stats);
    EXPECT_TRUE(files.has_value()) << files.error().ToString();
    return files.value_or(std::vector<ImageFile>{});
  }

  // The first chunk of pages-1.img (random data, stored raw).
  std::string PagesChunkKey(const std::vector<ImageFile>& files) {
    for (const auto& f : files) {
      if (f.name == "pages-1.img" && !f.chunks.empty()) return ChunkKey(f.chunks[0].hash);
    }
    ADD_FAILURE() << "no pages-1.img";
    return "";
  }

  // Fetch and verify both fail with kCorrupt, naming the image and `words`,
  // and fetch leaves nothing behind.
  void ExpectDamageDetected(const std::vector<ImageFile>& files, const std::string& words) {
    auto verified = VerifyImages(files, kCurrentChunkHash, store_, key_);
    ASSERT_FALSE(verified.has_value());
    EXPECT_EQ(verified.error().kind(), ErrorKind::kCorrupt);
    EXPECT_NE(verified.error().message().find("image pages-1.img: chunk "), std::string::npos)
        << verified.error().message();
    EXPECT_NE(verified.error().message().find(words), std::string::npos)
        << verified.error().message();

    TempDir out;
    auto fetched = FetchImages(files, kCurrentChunkHash, store_, key_, out.path());
    ASSERT_FALSE(fetched.has_value());
    EXPECT_EQ(fetched.error().message(), verified.error().message());
    EXPECT_TRUE(ListDir(out.path()).empty()) << "partial images left behind";
  }

  TempDir images_;
  std::map<std::string, std::string> files_;
  MemoryStore store_;
  Key key_ = TestKey();
};

TEST_F(ImagesTest, StoreThenFetchRoundTripsEveryRegularFile) {
  StoreStats stats;
  std::vector<ImageFile> files = StoreOrDie(&stats);
  ASSERT_EQ(files.size(), files_.size()) << "subdirectories and symlinks are skipped";
  uint64_t total = 0;
  auto expected = files_.begin();
  for (const auto& f : files) {
    EXPECT_EQ(f.name, expected->first) << "sorted by name";
    EXPECT_EQ(f.size, expected->second.size());
    uint64_t sum = 0;
    for (const auto& c : f.chunks) {
      EXPECT_EQ(c.hash.size(), 64u);
      sum += c.size;
    }
    EXPECT_EQ(sum, f.size) << f.name;
    total += f.size;
    ++expected;
  }
  EXPECT_TRUE(files[1].chunks.empty()) << "an empty file has no chunks";
  EXPECT_EQ(stats.bytes, total);
  EXPECT_GT(stats.chunks, 0u);
  EXPECT_EQ(stats.new_chunks, store_.object_count());
  EXPECT_EQ(store_.put_calls(), 0u);
  // The zeros compress; the 3 MiB of random bytes do not.
  EXPECT_LT(stats.new_bytes, stats.bytes - 2 * kMiB);
  EXPECT_GT(stats.new_bytes, 3 * kMiB);

  ASSERT_TRUE(VerifyImages(files, kCurrentChunkHash, store_, key_).has_value());
  TempDir out;
  auto fetched = FetchImages(files, kCurrentChunkHash, store_, key_, out.path());
  ASSERT_TRUE(fetched.has_value()) << fetched.error().ToString();
  std::vector<std::string> names;
  for (const auto& [name, data] : files_) {
    names.push_back(name);
    EXPECT_EQ(ReadOrDie(out.Join(name)), data) << name;
    struct stat st {};
    ASSERT_EQ(::stat(out.Join(name).c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u) << name;
  }
  EXPECT_EQ(ListDir(out.path()), names);
}

// Stores `data` as the pages image of a checkpoint: its chunks must end at
// `ends`, and it must come back whole.
void ExpectStoredAsChunks(const std::string& data, const std::vector<size_t>& ends) {
  TempDir images;
  WriteOrDie(images.Join("pages-1.img"), data);
  MemoryStore store;
  Key key = TestKey();
  auto files = StoreImages(images.path(), store, key, nullptr);
  ASSERT_TRUE(files.has_value()) << files.error().ToString();
  ASSERT_EQ(files->size(), 1u);
  std::vector<size_t> got;
  uint64_t end = 0;
  for (const auto& chunk : (*files)[0].chunks) got.push_back(end += chunk.size);
  EXPECT_EQ(got, ends);
  TempDir out;
  ASSERT_TRUE(FetchImages(*files, kCurrentChunkHash, store, key, out.path()).has_value());
  EXPECT_TRUE(ReadOrDie(out.Join("pages-1.img")) == data);
}

// Files are read a buffer (8 MiB) at a time: their chunks must be those of
// the whole file, wherever the buffers end, and every byte must survive.
TEST(StoreImagesTest, FilesLargerThanAReadBufferAreCutAsAWhole) {
  std::string data;
  for (uint64_t i = 0; data.size() < 27 * kMiB; ++i) {
    data += RandomBytes((i * 7919 + 1) % (3 * kMiB), i);
    data += std::string((i * 104729) % (2 * kMiB), '\0');
  }
  data += RandomBytes(12345, 99);
  ExpectStoredAsChunks(data, ChunkBoundaries(data));
}

// The store searches for cut points in parallel, over 1 MiB parts of each
// buffer, and falls back to cutting byte by byte where they are too dense
// to keep. Whatever the data, its chunks are those of ChunkBoundaries.
TEST(StoreImagesTest, ChunksCutInParallelAreThoseOfChunkBoundaries) {
  // Repeating 92 7a 00 makes every third byte a place where a chunk may end
  // (found by search; the chunk sizes below check that it still does).
  std::string dense;
  while (dense.size() < 3 * kMiB) dense += std::string("\x92\x7a\0", 3);
  std::string text;
  const std::string line = "The quick brown fox jumps over the lazy dog, 0123456789.\n";
  while (text.size() < 4 * kMiB) text += line;
  std::string data = RandomBytes(36 * kMiB + 3, 31);
  // The parts are searched apart (1 MiB each), each after hashing the bytes
  // before it. Before a part, these 63 bytes make its first candidate the
  // 31st byte of the dense ones after them, not the 63rd (found by search):
  // the cuts there tell if it did not.
  const std::string before_part = RandomBytes(63, 4968);
  for (size_t part = kMiB; part + 200 < data.size(); part += kMiB) {
    data.replace(part - before_part.size(), before_part.size(), before_part);
    data.replace(part, 200, dense.substr(0, 200));
  }
  data.replace(3 * kMiB + 17, 3 * kMiB - 17, dense.substr(0, 3 * kMiB - 17));
  // Dense up to where the second buffer's reading ends (each reads 7 MiB
  // after what it carries over): what it carries into the third must be
  // searched again.
  data.replace(13 * kMiB, kMiB, dense.substr(0, kMiB));
  data.replace(22 * kMiB + 5, text.size(), text);
  data.replace(29 * kMiB, 2 * kMiB, std::string(2 * kMiB, '\0'));
  data.replace(32 * kMiB + kMiB / 2, 2 * kMiB, dense.substr(0, 2 * kMiB));
  std::vector<size_t> want = ChunkBoundaries(data);
  size_t small = 0;
  for (size_t i = 1; i < want.size(); ++i) small += want[i] - want[i - 1] < 65 * kKiB;
  EXPECT_GT(small, 70u) << "the dense pattern no longer makes dense cut points";
  ExpectStoredAsChunks(data, want);
}

// Consuming the images gives the same chunks, and leaves the files holes
// of their size: their space went back as they were read.
TEST(StoreImagesTest, ConsumedImagesGiveTheSameChunksAndTheirSpaceBack) {
  std::string pages = RandomBytes(19 * kMiB + 11, 21) + std::string(2 * kMiB, '\0');
  std::string core = RandomBytes(70 * kKiB, 22);
  TempDir kept, consumed;
  for (const TempDir* dir : {&kept, &consumed}) {
    WriteOrDie(dir->Join("pages-1.img"), pages);
    WriteOrDie(dir->Join("core-1.img"), core);
  }
  MemoryStore store;
  Key key = TestKey();
  auto want = StoreImages(kept.path(), store, key, nullptr);
  ASSERT_TRUE(want.has_value()) << want.error().ToString();
  MemoryStore other;
  auto got = StoreImages(consumed.path(), other, key, nullptr, {}, kCurrentChunkHash,
                         /*consume=*/true);
  ASSERT_TRUE(got.has_value()) << got.error().ToString();
  ASSERT_EQ(got->size(), want->size());
  for (size_t i = 0; i < got->size(); ++i) {
    EXPECT_EQ((*got)[i].size, (*want)[i].size);
    ASSERT_EQ((*got)[i].chunks.size(), (*want)[i].chunks.size());
    for (size_t c = 0; c < (*got)[i].chunks.size(); ++c)
      EXPECT_EQ((*got)[i].chunks[c].hash, (*want)[i].chunks[c].hash) << (*got)[i].name;
  }
  EXPECT_EQ(other.object_count(), store.object_count());
  for (const auto& [name, data] : {std::pair{"pages-1.img", &pages}, {"core-1.img", &core}}) {
    struct stat st {};
    ASSERT_EQ(::stat(consumed.Join(name).c_str(), &st), 0);
    EXPECT_EQ(static_cast<size_t>(st.st_size), data->size()) << name;
    EXPECT_LT(st.st_blocks * 512, 64 * 1024) << name << " still holds its data";
    EXPECT_EQ(ReadOrDie(consumed.Join(name)), std::string(data->size(), '\0')) << name;
  }
  TempDir out;
  ASSERT_TRUE(FetchImages(*got, kCurrentChunkHash, other, key, out.path()).has_value());
  EXPECT_TRUE(ReadOrDie(out.Join("pages-1.img")) == pages);
}

TEST_F(ImagesTest, ChunksAreStoredRawOrCompressed) {
  std::vector<ImageFile> files = StoreOrDie();
  auto random_chunk = store_.Get(PagesChunkKey(files));
  ASSERT_TRUE(random_chunk.has_value());
  EXPECT_EQ((*random_chunk)[0], '\0') << "random bytes are stored raw";
  EXPECT_EQ(random_chunk->size(), 1 + files[3].chunks[0].size);
  const ChunkRef& zeros = files[3].chunks.back();
  auto zero_chunk = store_.Get(ChunkKey(zeros.hash));
  ASSERT_TRUE(zero_chunk.has_value());
  EXPECT_EQ((*zero_chunk)[0], '\1') << "zeros are stored compressed";
  EXPECT_LT(zero_chunk->size(), zeros.size / 100);
}

TEST_F(ImagesTest, SecondStoreOfTheSameImagesWritesNothing) {
  StoreStats first;
  std::vector<ImageFile> files = StoreOrDie(&first);
  size_t objects = store_.object_count();
  StoreStats second;
  std::vector<ImageFile> again = StoreOrDie(&second);
  EXPECT_EQ(second.new_chunks, 0u);
  EXPECT_EQ(second.new_bytes, 0u);
  EXPECT_EQ(second.chunks, first.chunks);
  EXPECT_EQ(second.bytes, first.bytes);
  EXPECT_EQ(store_.object_count(), objects);
  ASSERT_EQ(again.size(), files.size());
  for (size_t i = 0; i < files.size(); ++i) {
    ASSERT_EQ(again[i].chunks.size(), files[i].chunks.size());
    for (size_t c = 0; c < files[i].chunks.size(); ++c)
      EXPECT_EQ(again[i].chunks[c].hash, files[i].chunks[c].hash);
  }
}

TEST_F(ImagesTest, ChunkNamesDependOnTheKey) {
  std::vector<ImageFile> files = StoreOrDie();
  MemoryStore other_store;
  auto other = StoreImages(images_.path(), other_store, TestKey(99), nullptr);
  ASSERT_TRUE(other.has_value());
  EXPECT_NE((*other)[3].chunks[0].hash, files[3].chunks[0].hash);
  EXPECT_EQ((*other)[3].chunks[0].size, files[3].chunks[0].size) << "boundaries do not";
}

TEST_F(ImagesTest, ProgressCountsEveryByteStoredAndFetched) {
  std::atomic<uint64_t> stored{0};
  StoreStats stats;
  auto files = StoreImages(images_.path(), store_, key_, &stats, [&](uint64_t n) { stored += n; });
  ASSERT_TRUE(files.has_value()) << files.error().ToString();
  EXPECT_EQ(stored.load(), stats.bytes);
  std::atomic<uint64_t> fetched{0};
  TempDir out;
  auto s = FetchImages(*files, kCurrentChunkHash, store_, key_, out.path(),
                       [&](uint64_t n) { fetched += n; });
  ASSERT_TRUE(s.has_value()) << s.error().ToString();
  EXPECT_EQ(fetched.load(), stats.bytes);
}

TEST(StoreImagesTest, InsertedPagesCostLittleToStoreAgain) {
  TempDir images;
  MemoryStore store;
  Key key = TestKey();
  std::string data = RandomBytes(16 * kMiB, 20);
  WriteOrDie(images.Join("pages-1.img"), data);
  StoreStats first;
  ASSERT_TRUE(StoreImages(images.path(), store, key, &first).has_value());

  data.insert(8 * kMiB, RandomBytes(12 * kKiB, 21));
  WriteOrDie(images.Join("pages-1.img"), data);
  StoreStats second;
  ASSERT_TRUE(StoreImages(images.path(), store, key, &second).has_value());
  EXPECT_GT(second.new_chunks, 0u);
  EXPECT_LT(second.new_bytes, first.new_bytes / 10)
      << "first " << first.new_bytes << " bytes, second " << second.new_bytes;
}

TEST(StoreImagesTest, MissingDirectoryIsAnError) {
  MemoryStore store;
  auto files = StoreImages("/nonexistent/cryo/images", store, TestKey(), nullptr);
  ASSERT_FALSE(files.has_value());
  EXPECT_EQ(files.error().kind(), ErrorKind::kNotFound);
}

// A session follows a memory image as CRIU writes it: chunks are stored
// before the dump ends, their bytes go back (consume), and Finish gives the
// file list that StoreImages gives for the finished directory.
TEST(ImageStoreSessionTest, StoresAGrowingMemoryImageAsItIsWritten) {
  std::string pages;
  for (uint64_t i = 0; pages.size() < 30 * kMiB; ++i) {
    pages += RandomBytes((i * 7919 + 1) % (3 * kMiB), i + 40);
    pages += std::string((i * 104729) % (2 * kMiB), '\0');
  }
  std::string core = RandomBytes(70 * kKiB, 23);
  TempDir kept, growing;
  WriteOrDie(kept.Join("pages-1.img"), pages);
  WriteOrDie(kept.Join("core-1.img"), core);
  MemoryStore store;
  Key key = TestKey();
  auto want = StoreImages(kept.path(), store, key, nullptr);
  ASSERT_TRUE(want.has_value()) << want.error().ToString();

  MemoryStore other;
  ImageStoreSession session(growing.path(), other, key, kCurrentChunkHash, /*consume=*/true);
  session.Follow();
  std::string path = growing.Join("pages-1.img");
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0600));
  ASSERT_GE(fd.get(), 0);
  // Written in uneven pieces, as CRIU does, waiting until the session has
  // stored something of the first 20 MiB before writing the rest.
  size_t written = 0;
  auto write_up_to = [&](size_t end) {
    for (size_t piece = 1; written < end; piece = piece * 3 % 1000003) {
      size_t n = std::min(end - written, (piece % 7 + 1) * 300 * kKiB + piece % 4096);
      ASSERT_EQ(::write(fd.get(), pages.data() + written, n), static_cast<ssize_t>(n));
      written += n;
    }
  };
  write_up_to(20 * kMiB);
  size_t stored_before_end = 0;
  for (int i = 0; i < 500 && stored_before_end == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    stored_before_end = other.List("chunks/").value_or(std::vector<std::string>{}).size();
  }
  EXPECT_GT(stored_before_end, 0u) << "nothing stored while the image grew";
  write_up_to(pages.size());
  fd.reset();
  WriteOrDie(growing.Join("core-1.img"), core);

  StoreStats stats;
  std::atomic<uint64_t> reported{0};
  session.SetProgress([&](uint64_t n) { reported += n; });
  auto got = session.Finish(&stats);
  ASSERT_TRUE(got.has_value()) << got.error().ToString();
  ASSERT_EQ(got->size(), want->size());
  for (size_t i = 0; i < got->size(); ++i) {
    EXPECT_EQ((*got)[i].name, (*want)[i].name);
    EXPECT_EQ((*got)[i].size, (*want)[i].size);
    ASSERT_EQ((*got)[i].chunks.size(), (*want)[i].chunks.size()) << (*got)[i].name;
    for (size_t c = 0; c < (*got)[i].chunks.size(); ++c)
      EXPECT_EQ((*got)[i].chunks[c].hash, (*want)[i].chunks[c].hash) << (*got)[i].name << " " << c;
  }
  EXPECT_EQ(stats.bytes, pages.size() + core.size());
  EXPECT_EQ(reported.load(), pages.size() + core.size()) << "progress before SetProgress is lost";
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(static_cast<size_t>(st.st_size), pages.size());
  EXPECT_LT(static_cast<uint64_t>(st.st_blocks) * 512, kMiB) << "the image's space stayed";
  TempDir out;
  ASSERT_TRUE(FetchImages(*got, kCurrentChunkHash, other, key, out.path()).has_value());
  EXPECT_TRUE(ReadOrDie(out.Join("pages-1.img")) == pages);
}

// A memory image that shrinks was not written from start to end: what the
// session stored of it may be stale, so the session fails.
TEST(ImageStoreSessionTest, AMemoryImageThatShrinksFailsTheSession) {
  TempDir images;
  std::string path = images.Join("pages-1.img");
  WriteOrDie(path, RandomBytes(12 * kMiB, 50));
  MemoryStore store;
  ImageStoreSession session(images.path(), store, TestKey(), kCurrentChunkHash);
  session.Follow();
  for (int i = 0; i < 500 && store.List("chunks/").value_or(std::vector<std::string>{}).empty();
       ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(::truncate(path.c_str(), 3 * kMiB), 0);
  auto files = session.Finish(nullptr);
  ASSERT_FALSE(files.has_value());
  EXPECT_NE(files.error().message().find("shrank"), std::string::npos) << files.error().ToString();
}

// A dump that failed ends its session unfinished: that must not hang, and
// what was stored stays unreferenced (for gc).
TEST(ImageStoreSessionTest, AnUnfinishedSessionStopsWhenDestroyed) {
  TempDir images;
  WriteOrDie(images.Join("pages-1.img"), RandomBytes(40 * kMiB, 51));
  MemoryStore store;
  {
    ImageStoreSession session(images.path(), store, TestKey(), kCurrentChunkHash);
    session.Follow();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(store.List("manifests/").value_or(std::vector<std::string>{"?"}).empty());
}

TEST_F(ImagesTest, FlippedByteInAChunkIsDetected) {
  std::vector<ImageFile> files = StoreOrDie();
  std::string key = PagesChunkKey(files);
  std::string chunk = store_.Get(key).value();
  chunk[chunk.size() / 2] ^= 0x01;
  ASSERT_TRUE(store_.Put(key, chunk).has_value());
  ExpectDamageDetected(files, "is corrupt (hash mismatch)");
}

TEST_F(ImagesTest, TruncatedChunkIsDetected) {
  std::vector<ImageFile> files = StoreOrDie();
  std::string key = PagesChunkKey(files);
  std::string chunk = store_.Get(key).value();
  ASSERT_TRUE(store_.Put(key, chunk.substr(0, chunk.size() - 1000)).has_value());
  ExpectDamageDetected(files, "is corrupt");
}

TEST_F(ImagesTest, LengthenedChunkIsDetected) {
  std::vector<ImageFile> files = StoreOrDie();
  std::string key = PagesChunkKey(files);
  std::string chunk = store_.Get(key).value();
  ASSERT_TRUE(store_.Put(key, chunk + std::string(5000, 'x')).has_value());
  ExpectDamageDetected(files,
                       "is corrupt (" + std::to_string(chunk.size() + 5000) + " bytes stored for ");
}

TEST_F(ImagesTest, DamagedCompressedChunkIsDetected) {
  std::vector<ImageFile> files = StoreOrDie();
  std::string key = ChunkKey(files[3].chunks.back().hash);
  std::string chunk = store_.Get(key).value();
  ASSERT_EQ(chunk[0], '\1');
  chunk[chunk.size() / 2] ^= 0x40;
  ASSERT_TRUE(store_.Put(key, chunk).has_value());
  ExpectDamageDetected(files, "is corrupt");
}

TEST_F(ImagesTest, DeletedChunkIsDetected) {
  std::vector<ImageFile> files = StoreOrDie();
  ASSERT_TRUE(store_.Delete(PagesChunkKey(files)).has_value());
  ExpectDamageDetected(files, "is missing from memory://test");
}

TEST_F(ImagesTest, FetchRefusesFileNamesThatAreNotPlainNames) {
  std::vector<ImageFile> files = StoreOrDie();
  for (const char* bad : {"../escape.img", "a/b", ".", "..", ""}) {
    std::vector<ImageFile> tampered = files;
    tampered.back().name = bad;
    TempDir out;
    auto fetched = FetchImages(tampered, kCurrentChunkHash, store_, key_, out.path());
    ASSERT_FALSE(fetched.has_value()) << bad;
    EXPECT_EQ(fetched.error().kind(), ErrorKind::kCorrupt) << bad;
    EXPECT_TRUE(ListDir(out.path()).empty()) << "nothing is created before the names are checked";
  }
}

TEST_F(ImagesTest, FetchRefusesSizesThatDisagreeWithTheChunks) {
  std::vector<ImageFile> files = StoreOrDie();
  files[3].size += 1;
  TempDir out;
  auto fetched = FetchImages(files, kCurrentChunkHash, store_, key_, out.path());
  ASSERT_FALSE(fetched.has_value());
  EXPECT_EQ(fetched.error().kind(), ErrorKind::kCorrupt);
  EXPECT_NE(fetched.error().message().find("pages-1.img"), std::string::npos);
  EXPECT_FALSE(VerifyImages(files, kCurrentChunkHash, store_, key_).has_value());
}

TEST_F(ImagesTest, FetchRefusesToOverwriteAFile) {
  std::vector<ImageFile> files = StoreOrDie();
  TempDir out;
  WriteOrDie(out.Join("pages-1.img"), "mine");
  auto fetched = FetchImages(files, kCurrentChunkHash, store_, key_, out.path());
  ASSERT_FALSE(fetched.has_value());
  EXPECT_EQ(ReadOrDie(out.Join("pages-1.img")), "mine");
  EXPECT_EQ(ListDir(out.path()), std::vector<std::string>{"pages-1.img"});
}

// ---------------------------------------------------------------------------
// Chunk names, computed here from runtime/FORMAT.md's description alone

std::string Hex(const unsigned char* p, size_t n) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    out += kDigits[p[i] >> 4];
    out += kDigits[p[i] & 15];
  }
  return out;
}

// The 32-byte subkey libsodium's KDF derives with id 1 and `context`.
std::array<unsigned char, 32> SubKey(const Key& key, const char* context) {
  std::array<unsigned char, 32> sub;
  EXPECT_EQ(crypto_kdf_derive_from_key(sub.data(), sub.size(), 1, context, key.bytes().data()), 0);
  return sub;
}

std::string DocumentedHmacName(const Key& key, std::string_view data) {
  auto sub = SubKey(key, "cryohmac");
  unsigned char out[32];
  unsigned int len = 0;
  HMAC(EVP_sha256(), sub.data(), 32, reinterpret_cast<const unsigned char*>(data.data()),
       data.size(), out, &len);
  return Hex(out, len);
}

std::string DocumentedBlake2bName(const Key& key, std::string_view data) {
  auto sub = SubKey(key, "cryochnk");
  unsigned char out[32];
  crypto_generichash(out, 32, reinterpret_cast<const unsigned char*>(data.data()), data.size(),
                     sub.data(), sub.size());
  return Hex(out, 32);
}

std::string DocumentedBlake3Name(const Key& key, std::string_view data) {
  auto sub = SubKey(key, "cryoblk3");
  blake3_hasher hasher;
  blake3_hasher_init_keyed(&hasher, sub.data());
  blake3_hasher_update(&hasher, data.data(), data.size());
  unsigned char out[32];
  blake3_hasher_finalize(&hasher, out, 32);
  return Hex(out, 32);
}

std::string DocumentedName(ChunkHash hash, const Key& key, std::string_view data) {
  switch (hash) {
    case ChunkHash::kBlake2b:
      return DocumentedBlake2bName(key, data);
    case ChunkHash::kHmacSha256:
      return DocumentedHmacName(key, data);
    case ChunkHash::kBlake3:
      break;
  }
  return DocumentedBlake3Name(key, data);
}

// The BLAKE3 build (its assembly for this CPU included) against answers of
// an independent implementation (Debian's b3sum, in Rust: `b3sum --keyed`):
// the empty input and 300,000 bytes (i % 251), which spans many 1 KiB
// BLAKE3 chunks and so the SIMD paths.
TEST(ChunkHashTest, KeyedBlake3GivesTheReferenceAnswers) {
  const char key[] = "whats the Elvish word for friend";
  static_assert(sizeof key - 1 == BLAKE3_KEY_LEN);
  std::string pattern(300000, '\0');
  for (size_t i = 0; i < pattern.size(); ++i) pattern[i] = static_cast<char>(i % 251);
  for (auto [input, expected] :
       {std::pair<std::string, std::string>{
            "", "92b2b75604ed3c761f9d6f62392c8a9227ad0ea3f09573e783f1498a4ed60d26"},
        {pattern, "818aa0dfd8683fa9d75c1db145b3dd2ce9cdb72ca44a33c84355c4b55dc63b18"}}) {
    blake3_hasher hasher;
    blake3_hasher_init_keyed(&hasher, reinterpret_cast<const uint8_t*>(key));
    blake3_hasher_update(&hasher, input.data(), input.size());
    unsigned char out[32];
    blake3_hasher_finalize(&hasher, out, 32);
    EXPECT_EQ(Hex(out, 32), expected) << input.size() << " bytes";
  }
}

TEST_F(ImagesTest, ChunksAreNamedAsDocumentedForEveryHash) {
  for (ChunkHash hash : kChunkHashes) {
    SCOPED_TRACE(std::string(ChunkHashName(hash)));
    MemoryStore store;
    auto files = StoreImages(images_.path(), store, key_, nullptr, {}, hash);
    ASSERT_TRUE(files.has_value()) << files.error().ToString();
    for (const auto& file : *files) {
      if (file.name != "core-1.img") continue;
      ASSERT_EQ(file.chunks.size(), 1u);
      std::string data = files_["core-1.img"];
      EXPECT_EQ(file.chunks[0].hash, DocumentedName(hash, key_, data));
    }
    // The images come back only when read with the hash they were named by.
    TempDir out;
    ASSERT_TRUE(FetchImages(*files, hash, store, key_, out.path()).has_value());
    EXPECT_EQ(ReadOrDie(out.path() + "/pages-1.img"), files_["pages-1.img"]);
    for (ChunkHash other : kChunkHashes) {
      if (other == hash) continue;
      auto wrong = VerifyImages(*files, other, store, key_);
      ASSERT_FALSE(wrong.has_value());
      EXPECT_NE(wrong.error().message().find("hash mismatch"), std::string::npos)
          << wrong.error().message();
    }
  }
}

TEST_F(ImagesTest, IntactChunksAreToldFromTornOrAlteredOnes) {
  auto files = StoreOrDie();
  int checked = 0;
  for (const auto& file : files) {
    for (const auto& chunk : file.chunks) {
      auto stored = store_.Get(ChunkKey(chunk.hash));
      ASSERT_TRUE(stored.has_value());
      EXPECT_TRUE(IsIntactChunk(chunk.hash, *stored, key_)) << file.name;
      EXPECT_FALSE(IsIntactChunk(chunk.hash, stored->substr(0, stored->size() / 2), key_));
      EXPECT_FALSE(IsIntactChunk(chunk.hash, "", key_));
      std::string flipped = *stored;
      flipped[flipped.size() - 1] ^= 1;
      EXPECT_FALSE(IsIntactChunk(chunk.hash, flipped, key_));
      EXPECT_FALSE(IsIntactChunk(chunk.hash, *stored, TestKey(99))) << "another key's";
      ++checked;
    }
  }
  EXPECT_GT(checked, 3);
}

TEST(ChunkHashTest, NamesRoundTrip) {
  for (ChunkHash hash : kChunkHashes) {
    EXPECT_EQ(ParseChunkHash(ChunkHashName(hash)), hash);
  }
  EXPECT_EQ(ChunkHashName(ChunkHash::kBlake3), "blake3-keyed");
  EXPECT_EQ(ChunkHashName(ChunkHash::kHmacSha256), "hmac-sha256");
  EXPECT_EQ(ChunkHashName(ChunkHash::kBlake2b), "blake2b-256");
  EXPECT_FALSE(ParseChunkHash("md5").has_value());
}

// ---------------------------------------------------------------------------
// Manifest

Manifest FullManifest() {
  Manifest m;
  m.id = "20261123T200102-0123abcd";
  m.job = "web";
  m.parent = "20261123T190102-89abcdef";
  m.created_unix_ms = 1'700'000'000'123;
  m.host = "node-7";
  m.kernel = "6.1.0-13-amd64";
  m.criu_version = "3.19";
  m.uid = 1000;
  m.gid = 1001;
  m.groups = {1001, 27, 100};
  m.argv = {"/usr/bin/python3", "-m", "http.server", "with space", "q\"uote"};
  m.env = {"PATH=/usr/bin:/bin", "UNICODE=h\xc3\xa9"};
  m.cwd = "/srv/web";
  m.criu_options = {{"tcp_established", "true"}, {"file_locks", "false"}};
  m.stdout_key = "pipe:[123]";
  m.stderr_key = "pipe:[124]";
  m.files = {
      {"core-1.img", 18, {{std::string(64, 'a'), 18}}},
      {"empty.img", 0, {}},
      {"pages-1.img", 300000, {{std::string(64, '0'), 200000}, {std::string(64, 'f'), 100000}}},
  };
  m.image_bytes = 300018;
  m.stored_bytes = 12345;
  m.phases = {{"freeze", 3}, {"dump", 420}, {"upload", 97}};
  return m;
}

TEST(ManifestTest, RoundTripsEveryField) {
  Manifest m = FullManifest();
  std::string encoded = EncodeManifest(m, TestKey());
  EXPECT_TRUE(encoded.starts_with("cryo-manifest 2 ")) << encoded.substr(0, 100);
  EXPECT_NE(encoded.find("\"chunk_hash\":\"blake3-keyed\""), std::string::npos) << encoded;
  auto decoded = DecodeManifest(encoded, TestKey());
  ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
  const Manifest& d = *decoded;
  EXPECT_EQ(d.format_version, Manifest::kFormatVersion);
  EXPECT_EQ(d.chunk_hash, ChunkHash::kBlake3);
  EXPECT_EQ(d.id, m.id);
  EXPECT_EQ(d.job, m.job);
  EXPECT_EQ(d.parent, m.parent);
  EXPECT_EQ(d.created_unix_ms, m.created_unix_ms);
  EXPECT_EQ(d.host, m.host);
  EXPECT_EQ(d.kernel, m.kernel);
  EXPECT_EQ(d.criu_version, m.criu_version);
  EXPECT_EQ(d.uid, m.uid);
  EXPECT_EQ(d.gid, m.gid);
  EXPECT_EQ(d.groups, m.groups);
  EXPECT_EQ(d.argv, m.argv);
  EXPECT_EQ(d.env, m.env);
  EXPECT_EQ(d.cwd, m.cwd);
  EXPECT_EQ(d.criu_options, m.criu_options);
  EXPECT_EQ(d.stdout_key, m.stdout_key);
  EXPECT_EQ(d.stderr_key, m.stderr_key);
  ASSERT_EQ(d.files.size(), m.files.size());
  for (size_t i = 0; i < m.files.size(); ++i) {
    EXPECT_EQ(d.files[i].name, m.files[i].name);
    EXPECT_EQ(d.files[i].size, m.files[i].size);
    ASSERT_EQ(d.files[i].chunks.size(), m.files[i].chunks.size());
    for (size_t c = 0; c < m.files[i].chunks.size(); ++c) {
      EXPECT_EQ(d.files[i].chunks[c].hash, m.files[i].chunks[c].hash);
      EXPECT_EQ(d.files[i].chunks[c].size, m.files[i].chunks[c].size);
    }
  }
  EXPECT_EQ(d.image_bytes, m.image_bytes);
  EXPECT_EQ(d.stored_bytes, m.stored_bytes);
  EXPECT_EQ(d.phases, m.phases);
  EXPECT_EQ(EncodeManifest(d, TestKey()), encoded) << "encoding is stable";
}

TEST(ManifestTest, AnyModifiedByteIsRefused) {
  std::string encoded = EncodeManifest(FullManifest(), TestKey());
  size_t body = encoded.find('\n') + 1;
  std::vector<size_t> positions = {0,
                                   5,
                                   14,
                                   16,
                                   20,
                                   body - 2,
                                   body - 1,
                                   body,
                                   body + 10,
                                   body + 100,
                                   encoded.size() / 2,
                                   encoded.size() - 2,
                                   encoded.size() - 1};
  for (size_t pos : positions) {
    for (unsigned char flip : {0x01, 0x20, 0x80}) {
      std::string tampered = encoded;
      tampered[pos] = static_cast<char>(tampered[pos] ^ flip);
      auto decoded = DecodeManifest(tampered, TestKey());
      ASSERT_FALSE(decoded.has_value()) << "byte " << pos << " ^ " << int{flip};
      EXPECT_EQ(decoded.error().kind(), ErrorKind::kCorrupt) << "byte " << pos;
    }
  }
  EXPECT_FALSE(DecodeManifest(encoded.substr(0, encoded.size() - 1), TestKey()).has_value());
  EXPECT_FALSE(DecodeManifest(encoded + " ", TestKey()).has_value());
  EXPECT_FALSE(DecodeManifest("", TestKey()).has_value());
}

TEST(ManifestTest, TamperedBodyIsRefusedBeforeParsing) {
  std::string encoded = EncodeManifest(FullManifest(), TestKey());
  size_t at = encoded.find("\"uid\":1000");
  ASSERT_NE(at, std::string::npos);
  encoded.replace(at, 10, "\"uid\":0000");  // still valid JSON: a root restore
  auto decoded = DecodeManifest(encoded, TestKey());
  ASSERT_FALSE(decoded.has_value());
  EXPECT_EQ(decoded.error().kind(), ErrorKind::kCorrupt);
  EXPECT_NE(decoded.error().message().find("manifest authentication failed"), std::string::npos)
      << decoded.error().message();
}

TEST(ManifestTest, ManifestOfAnotherKeyIsRefused) {
  std::string encoded = EncodeManifest(FullManifest(), TestKey(1));
  auto decoded = DecodeManifest(encoded, TestKey(2));
  ASSERT_FALSE(decoded.has_value());
  EXPECT_EQ(decoded.error().kind(), ErrorKind::kCorrupt);
  EXPECT_NE(decoded.error().message().find("written with another key"), std::string::npos);
}

// A manifest as cryo wrote them before format version 2: no chunk_hash, its
// chunks named with keyed BLAKE2b. The MAC is computed here as FORMAT.md
// describes it (keyed BLAKE2b-256 of the body, subkey "cryomanf").
std::string VersionOneManifest(const Key& key, const std::string& chunk_hash) {
  std::string body =
      R"({"argv":["/bin/counter"],"created_unix_ms":1700000000000,"criu_options":{},)"
      R"("criu_version":"4.2","cwd":"/","env":[],"files":[{"chunks":[[")" +
      chunk_hash +
      R"(",5]],"name":"core-1.img","size":5}],"format_version":1,"gid":0,"groups":[],)"
      R"("host":"h","id":"0123456789abcdef","image_bytes":5,"job":"old","kernel":"6.1",)"
      R"("parent":"","phases":{},"stderr_key":"pipe:[2]","stdout_key":"pipe:[1]",)"
      R"("stored_bytes":5,"uid":0})"
      "\n";
  auto sub = SubKey(key, "cryomanf");
  unsigned char mac[32];
  crypto_generichash(mac, 32, reinterpret_cast<const unsigned char*>(body.data()), body.size(),
                     sub.data(), sub.size());
  return "cryo-manifest 1 " + Hex(mac, 32) + "\n" + body;
}

// Checkpoints written before BLAKE3 names (HMAC-SHA-256) still read.
TEST(ManifestTest, EveryChunkHashRoundTrips) {
  for (ChunkHash hash : kChunkHashes) {
    Manifest m = FullManifest();
    m.chunk_hash = hash;
    auto decoded = DecodeManifest(EncodeManifest(m, TestKey()), TestKey());
    ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
    EXPECT_EQ(decoded->chunk_hash, hash);
  }
}

TEST(ManifestTest, VersionOneManifestsStillReadAndUseBlake2b) {
  std::string name = DocumentedBlake2bName(TestKey(), "hello");
  auto decoded = DecodeManifest(VersionOneManifest(TestKey(), name), TestKey());
  ASSERT_TRUE(decoded.has_value()) << decoded.error().ToString();
  EXPECT_EQ(decoded->format_version, 1);
  EXPECT_EQ(decoded->chunk_hash, ChunkHash::kBlake2b);
  EXPECT_EQ(decoded->job, "old");
  ASSERT_EQ(decoded->files.size(), 1u);
  EXPECT_EQ(decoded->files[0].chunks[0].hash, name);

  // Its chunk, stored the old way, verifies with the hash the manifest names.
  MemoryStore store;
  std::string stored = std::string(1, '\0') + "hello";  // codec 0: raw
  ASSERT_TRUE(store.PutIfAbsent(ChunkKey(name), stored).has_value());
  EXPECT_TRUE(VerifyImages(decoded->files, decoded->chunk_hash, store, TestKey()).has_value());
}

TEST(ManifestTest, UnknownChunkHashIsRefused) {
  std::string encoded = EncodeManifest(FullManifest(), TestKey());
  // Re-authenticate a body naming another hash: refused for the hash, not
  // for the MAC.
  size_t eol = encoded.find('\n');
  std::string body = encoded.substr(eol + 1);
  size_t at = body.find("blake3-keyed");
  ASSERT_NE(at, std::string::npos);
  body.replace(at, 12, "md5");
  auto sub = SubKey(TestKey(), "cryomanf");
  unsigned char mac[32];
  crypto_generichash(mac, 32, reinterpret_cast<const unsigned char*>(body.data()), body.size(),
                     sub.data(), sub.size());
  auto decoded = DecodeManifest("cryo-manifest 2 " + Hex(mac, 32) + "\n" + body, TestKey());
  ASSERT_FALSE(decoded.has_value());
  EXPECT_EQ(decoded.error().kind(), ErrorKind::kCorrupt);
  EXPECT_NE(decoded.error().message().find("chunk hash"), std::string::npos)
      << decoded.error().message();
}

TEST(ManifestTest, UnknownVersionIsRefused) {
  std::string encoded = EncodeManifest(FullManifest(), TestKey());
  encoded[14] = '3';  // "cryo-manifest 3 ..."
  auto decoded = DecodeManifest(encoded, TestKey());
  ASSERT_FALSE(decoded.has_value());
  EXPECT_EQ(decoded.error().kind(), ErrorKind::kCorrupt);
  EXPECT_NE(decoded.error().message().find("version"), std::string::npos);
}

TEST(ManifestTest, AuthenticManifestWithBadContentIsRefused) {
  Manifest no_id = FullManifest();
  no_id.id = "";
  Manifest bad_name = FullManifest();
  bad_name.files[0].name = "../../etc/passwd";
  Manifest bad_hash = FullManifest();
  bad_hash.files[2].chunks[1].hash = "zz";
  Manifest upper_hash = FullManifest();
  upper_hash.files[2].chunks[1].hash = std::string(64, 'F');
  Manifest huge_chunk = FullManifest();
  huge_chunk.files[2].chunks[1].size = (uint64_t{1} << 20) + 1;
  Manifest empty_chunk = FullManifest();
  empty_chunk.files[2].chunks[1].size = 0;
  for (const Manifest* m : {&no_id, &bad_name, &bad_hash, &upper_hash, &huge_chunk, &empty_chunk}) {
    auto decoded = DecodeManifest(EncodeManifest(*m, TestKey()), TestKey());
    ASSERT_FALSE(decoded.has_value());
    EXPECT_EQ(decoded.error().kind(), ErrorKind::kCorrupt);
  }
}

// ---------------------------------------------------------------------------
// Key

TEST(KeyTest, CreatesAPrivateKeyAndLoadsItBack) {
  TempDir dir;
  std::string path = dir.Join("key");
  auto created = Key::LoadOrCreate(path);
  ASSERT_TRUE(created.has_value()) << created.error().ToString();
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(st.st_size, 32);
  std::string on_disk = ReadOrDie(path);
  EXPECT_EQ(on_disk, std::string(reinterpret_cast<const char*>(created->bytes().data()), 32));

  auto loaded = Key::LoadOrCreate(path);
  ASSERT_TRUE(loaded.has_value()) << loaded.error().ToString();
  EXPECT_EQ(loaded->bytes(), created->bytes());

  auto another = Key::LoadOrCreate(dir.Join("key2"));
  ASSERT_TRUE(another.has_value());
  EXPECT_NE(another->bytes(), created->bytes()) << "keys are random";
}

TEST(KeyTest, RefusesAKeyFileOthersCanRead) {
  TempDir dir;
  std::string path = dir.Join("key");
  ASSERT_TRUE(WriteFileAtomic(path, std::string(32, 'k'), 0644).has_value());
  auto key = Key::LoadOrCreate(path);
  ASSERT_FALSE(key.has_value());
  EXPECT_EQ(key.error().kind(), ErrorKind::kPermissionDenied);
  EXPECT_NE(key.error().message().find("chmod 600"), std::string::npos) << key.error().message();
  EXPECT_EQ(ReadOrDie(path), std::string(32, 'k')) << "left alone";
}

TEST(KeyTest, RefusesAKeyFileOfTheWrongSize) {
  TempDir dir;
  for (size_t size : {size_t{0}, size_t{31}, size_t{33}, size_t{4096}}) {
    std::string path = dir.Join("key" + std::to_string(size));
    ASSERT_TRUE(WriteFileAtomic(path, std::string(size, 'k'), 0600).has_value());
    auto key = Key::LoadOrCreate(path);
    ASSERT_FALSE(key.has_value()) << size;
    EXPECT_EQ(key.error().kind(), ErrorKind::kCorrupt) << size;
  }
}

}  // namespace
}  // namespace cryo
