// SPDX-License-Identifier: Apache-2.0
// Pagemap parsing, and the filler of lazy memory against this process's own
// userfaultfd, sent as `criu restore --lazy-pages` sends a restored task's.
// The end-to-end tests restore real jobs through real CRIU.
#include "cryo/lazy_pages.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <random>
#include <string>
#include <thread>
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

// A process restored lazily, as `criu restore --lazy-pages` leaves it and
// talks to the filler: memory registered with a userfaultfd of its own (in
// this test process), the fd sent on lazy-pages.socket (criu/uffd.c).
class LazyMemoryFillerTest : public ::testing::Test {
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
    ASSERT_GT(files_[0].chunks.size(), 2u);
    // Chunk boundaries cut pages: those are put together from two chunks.
    ASSERT_NE(files_[0].chunks[0].size % kPageBytes, 0u);

    memory_bytes_ = 256 * kPageBytes;
    void* memory =
        ::mmap(nullptr, memory_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(memory, MAP_FAILED);
    memory_ = static_cast<char*>(memory);
    base_ = reinterpret_cast<uint64_t>(memory_);
    // Two mappings under the first lazy run (one copy cannot span both).
    ASSERT_EQ(::madvise(memory_ + 32 * kPageBytes, 32 * kPageBytes, MADV_DONTFORK), 0);
    auto map = ParsePagemap(PagemapImage(2, {{base_, 64, kPresent | kLazy},
                                             {base_ + 64 * kPageBytes, 4, kPresent},
                                             {base_ + 68 * kPageBytes, 16, 0},
                                             {base_ + 128 * kPageBytes, 40, kPresent | kLazy}}));
    ASSERT_TRUE(map.has_value());
    tasks_[7] = {*map, &files_[0]};

    uffd_.reset(
        static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY)));
    ASSERT_TRUE(uffd_.valid()) << std::strerror(errno);
    uffdio_api api{};
    api.api = UFFD_API;
    ASSERT_EQ(::ioctl(uffd_.get(), UFFDIO_API, &api), 0) << std::strerror(errno);
    // Pages 200-209: lazy memory the checkpoint holds nothing of (never
    // touched before the dump).
    for (auto [first, pages] : {std::pair<uint64_t, uint64_t>{0, 64}, {128, 40}, {200, 10}}) {
      uffdio_register reg{};
      reg.range.start = base_ + first * kPageBytes;
      reg.range.len = pages * kPageBytes;
      reg.mode = UFFDIO_REGISTER_MODE_MISSING;
      ASSERT_EQ(::ioctl(uffd_.get(), UFFDIO_REGISTER, &reg), 0) << std::strerror(errno);
    }
    StartFiller();
  }

  void TearDown() override {
    if (filler_) (void)filler_->Finish();
    if (memory_ != nullptr) ::munmap(memory_, memory_bytes_);
  }

  void StartFiller() {
    int pair[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair), 0);
    control_.reset(pair[1]);
    auto filler = LazyMemoryFiller::Start(dir_.Join("lazy-pages.socket"), UniqueFd(pair[0]), tasks_,
                                          kCurrentChunkHash, store_, key_,
                                          [this](uint64_t bytes) { progress_ += bytes; });
    ASSERT_TRUE(filler.has_value()) << filler.error().ToString();
    filler_ = std::move(*filler);
  }

  // CRIU's side: connects and sends pids (negative: a zombie) and, for the
  // others, our userfaultfd.
  void SendUffds(const std::vector<int32_t>& pids) {
    criu_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::string path = dir_.Join("lazy-pages.socket");
    std::memcpy(addr.sun_path, path.data(), path.size());
    ASSERT_EQ(::connect(criu_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    for (int32_t pid : pids) {
      ASSERT_EQ(::send(criu_.get(), &pid, sizeof pid, 0), static_cast<ssize_t>(sizeof pid));
      if (pid < 0) continue;
      char dummy = 0;
      iovec iov{&dummy, 1};
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof control;
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int));
      int fd = uffd_.get();
      std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
      ASSERT_EQ(::sendmsg(criu_.get(), &msg, 0), 1);
    }
  }

  // The monitor's side, at CRIU's post-restore notification.
  Status AskToFill() { return AskToFillLazyMemory(control_.get()); }

  // Whether the lazy pages hold the image's bytes (only call once filled:
  // a missing page would wait for the filler forever).
  void ExpectFilled() {
    EXPECT_TRUE(std::string_view(memory_, 64 * kPageBytes) ==
                std::string_view(image_).substr(0, 64 * kPageBytes));
    EXPECT_TRUE(std::string_view(memory_ + 128 * kPageBytes, 40 * kPageBytes) ==
                std::string_view(image_).substr(68 * kPageBytes, 40 * kPageBytes));
  }

  TempDir dir_;
  MemoryStore store_;
  Key key_ = TestKey();
  std::string image_;
  std::vector<ImageFile> files_;
  LazyTasks tasks_;
  char* memory_ = nullptr;
  size_t memory_bytes_ = 0;
  uint64_t base_ = 0;
  UniqueFd uffd_, control_, criu_;
  std::unique_ptr<LazyMemoryFiller> filler_;
  std::atomic<uint64_t> progress_{0};
};

TEST_F(LazyMemoryFillerTest, FillsEveryLazyPageBeforeItAnswers) {
  SendUffds({-3, 7});
  uffd_.reset();  // as CRIU's restorer does: the filler's is the last
  auto s = AskToFill();
  ASSERT_TRUE(s.has_value()) << s.error().ToString();
  EXPECT_TRUE(filler_->filled());
  ExpectFilled();
  // The eager pages were left to CRIU (here: never touched, so zero).
  EXPECT_EQ(std::string_view(memory_ + 64 * kPageBytes, 4 * kPageBytes),
            std::string(4 * kPageBytes, '\0'));
  EXPECT_EQ(filler_->filled_bytes(), 104 * kPageBytes);
  EXPECT_EQ(progress_.load(), 104 * kPageBytes);
  uint32_t finished = 0x52535446;  // CRIU, once the tree runs
  ASSERT_EQ(::send(criu_.get(), &finished, sizeof finished, 0), 4);
  EXPECT_TRUE(filler_->Finish().has_value());
}

// CRIU's restorer touches some lazy pages before its post-restore
// notification (thread areas, rseq): each is answered at once, from the
// checkpoint or with zeros, and kept (with what was written to it since)
// when the rest is filled.
TEST_F(LazyMemoryFillerTest, PagesTouchedBeforeTheFillAreAnsweredAtOnceAndKept) {
  SendUffds({7});
  uffd_.reset();  // once the filler's is closed, untouched pages are zeros
  std::thread restorer([this] {
    memory_[130 * kPageBytes + 5] ^= 0x5a;  // cut by no chunk boundary or one: either
    memory_[205 * kPageBytes] = 1;
  });
  restorer.join();  // would hang if the faults were not answered
  auto s = AskToFill();
  ASSERT_TRUE(s.has_value()) << s.error().ToString();
  std::string expected = image_.substr(68 * kPageBytes, 40 * kPageBytes);
  expected[2 * kPageBytes + 5] ^= 0x5a;
  EXPECT_TRUE(std::string_view(memory_ + 128 * kPageBytes, 40 * kPageBytes) == expected);
  EXPECT_TRUE(std::string_view(memory_, 64 * kPageBytes) ==
              std::string_view(image_).substr(0, 64 * kPageBytes));
  EXPECT_EQ(memory_[205 * kPageBytes], 1);
  EXPECT_EQ(memory_[206 * kPageBytes], 0);
  EXPECT_EQ(filler_->filled_bytes(), 104 * kPageBytes);
}

TEST_F(LazyMemoryFillerTest, AChunkThatFailsItsCheckFailsTheFillAndIsNamed) {
  const auto& victim = files_[0].chunks[1];
  ASSERT_TRUE(
      store_.Put(ChunkKey(victim.hash), std::string(1, '\0') + "not the chunk").has_value());
  SendUffds({7});
  auto s = AskToFill();
  ASSERT_FALSE(s.has_value());
  EXPECT_NE(s.error().ToString().find(victim.hash.substr(0, 12)), std::string::npos)
      << s.error().ToString();
  EXPECT_FALSE(filler_->filled());
  EXPECT_TRUE(filler_->chunk_failed());
  EXPECT_FALSE(filler_->Finish().has_value());
}

TEST_F(LazyMemoryFillerTest, ATaskWhoseUserfaultfdNeverCameFailsTheFill) {
  SendUffds({-7});
  auto s = AskToFill();
  ASSERT_FALSE(s.has_value());
  EXPECT_NE(s.error().ToString().find("no userfaultfd for task 7"), std::string::npos)
      << s.error().ToString();
  EXPECT_FALSE(filler_->filled());
  EXPECT_FALSE(filler_->chunk_failed());
  EXPECT_FALSE(filler_->Finish().has_value());
}

TEST_F(LazyMemoryFillerTest, AMonitorGoneBeforeItAskedFillsNothing) {
  SendUffds({7});
  control_.reset();
  EXPECT_TRUE(filler_->Finish().has_value());
  EXPECT_FALSE(filler_->filled());
  EXPECT_EQ(filler_->filled_bytes(), 0u);
}

TEST_F(LazyMemoryFillerTest, AFillerGoneBeforeItAnsweredIsAFailureForTheMonitor) {
  ASSERT_TRUE(filler_->Finish().has_value());
  auto s = AskToFill();
  ASSERT_FALSE(s.has_value());
}

}  // namespace
}  // namespace cryo
