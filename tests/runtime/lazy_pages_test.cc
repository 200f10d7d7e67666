// SPDX-License-Identifier: Apache-2.0
// Pagemap parsing, and the page server against a client that speaks CRIU's
// side of the protocol as criu lazy-pages does (criu/page-xfer.c: 32-byte
// page_server_iov requests, answers of the same header and the pages). The
// end-to-end tests restore real jobs through real criu lazy-pages.
#include "cryo/lazy_pages.h"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <atomic>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cryo/file_util.h"
#include "fakes/memory_store.h"
#include "image_test_data.h"
#include "temp_dir.h"

namespace cryo {
namespace {

constexpr uint32_t kPresent = PagemapRun::kPresent;
constexpr uint32_t kLazy = PagemapRun::kLazy;

void Varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

void Field(std::string& msg, int number, uint64_t value) {
  Varint(msg, static_cast<uint64_t>(number) << 3);
  Varint(msg, value);
}

void Record(std::string& image, const std::string& msg) {
  uint32_t len = static_cast<uint32_t>(msg.size());
  image.append(reinterpret_cast<const char*>(&len), sizeof len);
  image += msg;
}

struct Entry {
  uint64_t vaddr;
  uint64_t pages;
  std::optional<uint32_t> flags;
  bool in_parent = false;
  bool big = false;  // nr_pages (field 5) rather than compat_nr_pages
};

// A pagemap image as CRIU writes it (images/pagemap.proto).
std::string PagemapImage(uint32_t pages_id, const std::vector<Entry>& entries) {
  std::string image;
  for (uint32_t magic : {0x54564319u, 0x56084025u}) {
    image.append(reinterpret_cast<const char*>(&magic), sizeof magic);
  }
  std::string head;
  Field(head, 1, pages_id);
  Record(image, head);
  for (const auto& e : entries) {
    std::string msg;
    Field(msg, 1, e.vaddr);
    Field(msg, 2, e.big ? 0 : e.pages);
    if (e.in_parent) Field(msg, 3, 1);
    if (e.flags) Field(msg, 4, *e.flags);
    if (e.big) Field(msg, 5, e.pages);
    Record(image, msg);
  }
  return image;
}

TEST(PagemapTest, RunsGetTheirOffsetsInThePagesImage) {
  auto map = ParsePagemap(PagemapImage(3, {{0x10000, 4, kPresent | kLazy},
                                           {0x20000, 2, std::nullopt},  // old image: present
                                           {0x30000, 8, 0},             // a hole: zero pages
                                           {0x40000, 1, std::nullopt, /*in_parent=*/true},
                                           {0x50000, 70000, kPresent | kLazy, false, true}}));
  ASSERT_TRUE(map.has_value()) << map.error().ToString();
  EXPECT_EQ(map->pages_id, 3u);
  ASSERT_EQ(map->runs.size(), 5u);
  EXPECT_EQ(map->runs[0].offset, 0u);
  EXPECT_TRUE(map->runs[0].lazy());
  EXPECT_EQ(map->runs[1].offset, 4 * kPageBytes);
  EXPECT_TRUE(map->runs[1].present());
  EXPECT_FALSE(map->runs[1].lazy());
  EXPECT_FALSE(map->runs[2].present());
  EXPECT_EQ(map->runs[3].flags, PagemapRun::kParent);
  EXPECT_EQ(map->runs[4].offset, 6 * kPageBytes);
  EXPECT_EQ(map->runs[4].pages, 70000u);
  LazyTasks tasks{{1, {*map, nullptr}}};
  EXPECT_EQ(LazyBytes(tasks), (4 + 70000) * kPageBytes);
}

TEST(PagemapTest, DamagedImagesAreCorrupt) {
  std::string good = PagemapImage(1, {{0x10000, 4, kPresent}, {0x20000, 4, kPresent}});
  ASSERT_TRUE(ParsePagemap(good).has_value());
  std::string bad_magic = good;
  bad_magic[4] ^= 1;
  std::string overlap = PagemapImage(1, {{0x10000, 32, kPresent}, {0x20000, 4, kPresent}});
  std::string unaligned = PagemapImage(1, {{0x10001, 1, kPresent}});
  std::string beyond = PagemapImage(1, {{uint64_t{1} << 57, 1, kPresent}});
  std::string wrapping = PagemapImage(1, {{0x10000, uint64_t{1} << 52, kPresent, false, true}});
  for (const auto& [what, image] : std::vector<std::pair<std::string, std::string>>{
           {"bad magic", bad_magic},
           {"truncated", good.substr(0, good.size() - 2)},
           {"overlapping", overlap},
           {"unaligned", unaligned},
           {"beyond the address space", beyond},
           {"wrapping around", wrapping},
           {"no head", good.substr(0, 8)},
           {"empty", ""}}) {
    auto map = ParsePagemap(image);
    ASSERT_FALSE(map.has_value()) << what;
    EXPECT_EQ(map.error().kind(), ErrorKind::kCorrupt) << what;
  }
}

TEST(PagemapTest, ImageNames) {
  EXPECT_EQ(PagemapImageId("pagemap-12.img"), 12u);
  EXPECT_EQ(PagemapImageId("pagemap-shmem-5.img"), std::nullopt);
  EXPECT_EQ(PagemapImageId("pagemap-.img"), std::nullopt);
  EXPECT_EQ(PagemapImageId("pages-1.img"), std::nullopt);
  EXPECT_EQ(PagesImageName(4), "pages-4.img");
}

TEST(PagemapTest, OnlyChunksWhollyInsideLazyPagesAreLazyOnly) {
  // Pages image: 8 lazy pages, 2 eager ones, 6 lazy ones.
  auto map = ParsePagemap(PagemapImage(
      1, {{0x10000, 8, kPresent | kLazy}, {0x18000, 2, kPresent}, {0x1a000, 6, kPresent | kLazy}}));
  ASSERT_TRUE(map.has_value());
  ImageFile pages{.name = "pages-1.img", .size = 16 * kPageBytes, .chunks = {}};
  for (uint64_t pages_in_chunk : {4, 4, 3, 1, 4}) {  // the third holds eager pages
    pages.chunks.push_back({std::string(64, 'a'), pages_in_chunk * kPageBytes});
  }
  EXPECT_EQ(LazyOnlyChunks(*map, pages), (std::vector<bool>{true, true, false, true, true}));
}

// criu lazy-pages' side of the connection.
struct Iov {
  uint32_t cmd;
  uint32_t padding;
  uint64_t nr_pages;
  uint64_t vaddr;
  uint64_t dst_id;
};
static_assert(sizeof(Iov) == 32);
constexpr uint32_t kGet = 7, kAddF = 6, kForceClose = 0x1024;

class LazyPageServerTest : public ::testing::Test {
 protected:
  // Task 7's memory: 64 lazy pages, then 4 eager ones right after, a hole,
  // then 40 lazy pages; its pages image holds 108 pages of random bytes.
  void SetUp() override {
    std::mt19937_64 rng(5);
    image_.resize(108 * kPageBytes);
    for (auto& c : image_) c = static_cast<char>(rng());
    ASSERT_TRUE(WriteFileAtomic(dir_.Join("pages-2.img"), image_).has_value());
    auto files = StoreImages(dir_.path(), store_, key_, nullptr);
    ASSERT_TRUE(files.has_value());
    files_ = *files;
    ASSERT_GT(files_[0].chunks.size(), 2u);  // pieces of answers span chunks
    auto map = ParsePagemap(PagemapImage(2, {{0x100000, 64, kPresent | kLazy},
                                             {0x140000, 4, kPresent},
                                             {0x144000, 16, 0},
                                             {0x200000, 40, kPresent | kLazy}}));
    ASSERT_TRUE(map.has_value());
    tasks_[7] = {*map, &files_[0]};
    StartServer();
  }

  void StartServer() {
    server_.reset();
    int pair[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
    client_.reset(pair[1]);
    failures_ = 0;
    auto server = LazyPageServer::Start(UniqueFd(pair[0]), tasks_, kCurrentChunkHash, store_, key_,
                                        {}, [this] { ++failures_; });
    ASSERT_TRUE(server.has_value());
    server_ = std::move(*server);
  }

  void Send(uint32_t cmd, uint64_t vaddr, uint64_t pages, uint64_t task = 7) {
    Iov req{cmd, 0, pages, vaddr, task};
    ASSERT_TRUE(WriteAll(client_.get(), {reinterpret_cast<char*>(&req), sizeof req}).has_value());
  }

  // Asks for pages and checks the answer against the pages image.
  void ExpectPages(uint64_t vaddr, uint64_t pages, uint64_t image_page) {
    Send(kGet, vaddr, pages);
    Iov head{};
    ASSERT_EQ(ReadFull(client_.get(), {reinterpret_cast<char*>(&head), sizeof head}).value_or(0),
              sizeof head);
    EXPECT_EQ(head.cmd, kAddF | (kPresent << 16));
    EXPECT_EQ(head.nr_pages, pages);
    EXPECT_EQ(head.vaddr, vaddr);
    EXPECT_EQ(head.dst_id, 7u);
    std::string got(pages * kPageBytes, '\0');
    ASSERT_EQ(ReadFull(client_.get(), got).value_or(0), got.size());
    EXPECT_TRUE(got == image_.substr(image_page * kPageBytes, got.size()))
        << pages << " pages at " << std::hex << vaddr;
  }

  // The server hung up on us.
  void ExpectHangUp() {
    char c;
    EXPECT_EQ(ReadFull(client_.get(), {&c, 1}).value_or(1), 0u);
  }

  TempDir dir_;
  MemoryStore store_;
  Key key_ = TestKey();
  std::string image_;
  std::vector<ImageFile> files_;
  LazyTasks tasks_;
  UniqueFd client_;
  std::unique_ptr<LazyPageServer> server_;
  std::atomic<int> failures_{0};
};

TEST_F(LazyPageServerTest, AnswersFaultsAndBackgroundRequestsInAnyOrder) {
  ExpectPages(0x200000 + 5 * kPageBytes, 1, 68 + 5);  // a fault far ahead
  ExpectPages(0x100000, 16, 0);                       // background, front to back
  ExpectPages(0x100000 + 16 * kPageBytes, 48, 16);
  ExpectPages(0x100000 + 60 * kPageBytes, 8, 60);  // across two runs
  ExpectPages(0x200000, 40, 68);
  ExpectPages(0x100000 + 3 * kPageBytes, 2, 3);  // back again
  Send(kForceClose, 0, 0);
  int32_t status = -1;
  ASSERT_EQ(ReadFull(client_.get(), {reinterpret_cast<char*>(&status), sizeof status}).value_or(0),
            sizeof status);
  EXPECT_EQ(status, 0);
  EXPECT_TRUE(server_->Finish().has_value());
  EXPECT_EQ(server_->served_bytes(), (1 + 16 + 48 + 8 + 40 + 2) * kPageBytes);
  EXPECT_EQ(failures_, 0);
}

TEST_F(LazyPageServerTest, RequestsForPagesItDoesNotHoldEndIt) {
  for (auto [vaddr, pages, task] : std::vector<std::tuple<uint64_t, uint64_t, uint64_t>>{
           {0x144000, 1, 7},                     // a hole
           {0x100000, 1, 8},                     // another task
           {0x200000 + 39 * kPageBytes, 2, 7},   // past the end of a run
           {0x100000 + 8, 1, 7},                 // not a page's address
           {0x100000, 64 * 1024, 7},             // more than lazy-pages ever asks for
           {0x100000, uint64_t{1} << 40, 7}}) {  // absurdly many
    SetUp();
    Send(kGet, vaddr, pages, task);
    ExpectHangUp();
    auto s = server_->Finish();
    ASSERT_FALSE(s.has_value());
    EXPECT_EQ(s.error().kind(), ErrorKind::kInvalidArgument) << s.error().ToString();
    EXPECT_FALSE(server_->chunk_failed());
    EXPECT_EQ(failures_, 1) << "the restored processes were not killed first";
  }
}

TEST_F(LazyPageServerTest, AChunkThatFailsItsCheckEndsItAndIsNamed) {
  const auto& victim = files_[0].chunks[1];
  ASSERT_TRUE(
      store_.Put(ChunkKey(victim.hash), std::string(1, '\0') + "not the chunk").has_value());
  StartServer();  // one that has not fetched it ahead already
  uint64_t page = files_[0].chunks[0].size / kPageBytes + 1;  // inside chunk 1
  Send(kGet, 0x100000 + page * kPageBytes, 1);
  ExpectHangUp();
  auto s = server_->Finish();
  ASSERT_FALSE(s.has_value());
  EXPECT_TRUE(server_->chunk_failed());
  EXPECT_NE(s.error().ToString().find(victim.hash.substr(0, 12)), std::string::npos)
      << s.error().ToString();
  EXPECT_EQ(failures_, 1);
}

// Fetched ahead but never asked for (the process unmapped it, say): a bad
// chunk there fails nothing.
TEST_F(LazyPageServerTest, ABadChunkNobodyAsksForFailsNothing) {
  const auto& last = files_[0].chunks.back();
  ASSERT_TRUE(store_.Put(ChunkKey(last.hash), std::string(1, '\0') + "not the chunk").has_value());
  StartServer();
  ExpectPages(0x100000, 16, 0);
  Send(kForceClose, 0, 0);
  int32_t status = -1;
  ASSERT_EQ(ReadFull(client_.get(), {reinterpret_cast<char*>(&status), sizeof status}).value_or(0),
            sizeof status);
  EXPECT_TRUE(server_->Finish().has_value());
  EXPECT_FALSE(server_->chunk_failed());
  EXPECT_EQ(failures_, 0);
}

TEST_F(LazyPageServerTest, AClientGoneBeforeItIsDoneIsAFailure) {
  ExpectPages(0x100000, 4, 0);
  client_.reset();
  auto s = server_->Finish();
  ASSERT_FALSE(s.has_value());
  EXPECT_NE(s.error().ToString().find("hung up"), std::string::npos) << s.error().ToString();
  EXPECT_EQ(failures_, 1);
}

}  // namespace
}  // namespace cryo
