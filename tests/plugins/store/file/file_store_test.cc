// SPDX-License-Identifier: Apache-2.0
#include "store/file/file_store.h"

#include <dirent.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <latch>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "cryo/file_util.h"
#include "runtime/temp_dir.h"

namespace cryo {
namespace {

mode_t ModeOf(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

// Every name under `dir`, recursively, relative to `dir`.
void ListTree(const std::string& dir, const std::string& rel, std::vector<std::string>& out) {
  DIR* d = ::opendir((dir + "/" + rel).c_str());
  ASSERT_NE(d, nullptr) << dir << "/" << rel;
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    out.push_back(rel + name);
    if (e->d_type == DT_DIR) ListTree(dir, rel + name + "/", out);
  }
  ::closedir(d);
}

std::vector<std::string> TreeOf(const std::string& dir) {
  std::vector<std::string> out;
  ListTree(dir, "", out);
  return out;
}

bool HasTempFiles(const std::string& dir) {
  for (const auto& name : TreeOf(dir)) {
    if (name.find(".tmp-") != std::string::npos) return true;
  }
  return false;
}

// Adds one to the decimal counter at `key` with a read/CompareAndSwap loop.
// False on any error other than losing the race.
bool Increment(Store& store, const std::string& key) {
  for (;;) {
    std::optional<std::string> expected;
    auto current = store.Get(key);
    if (current) {
      expected = *current;
    } else if (current.error().kind() != ErrorKind::kNotFound) {
      return false;
    }
    int next = expected ? std::stoi(*expected) + 1 : 1;
    auto swapped = store.CompareAndSwap(key, expected, std::to_string(next));
    if (swapped) return true;
    if (swapped.error().kind() != ErrorKind::kFailedPrecondition) return false;
  }
}

class FileStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = dir_.Join("store");
    auto store = CreateFileStore({root_});
    ASSERT_TRUE(store.has_value()) << store.error().ToString();
    store_ = std::move(*store);
  }

  std::string GetOrDie(const std::string& key) {
    auto data = store_->Get(key);
    EXPECT_TRUE(data.has_value()) << data.error().ToString();
    return data.value_or("<error>");
  }

  TempDir dir_;
  std::string root_;
  std::unique_ptr<Store> store_;
};

TEST_F(FileStoreTest, CreatesPrivateRootAndReportsFileUrl) {
  EXPECT_EQ(ModeOf(root_), 0700u);
  EXPECT_EQ(store_->url(), "file://" + root_);
}

TEST_F(FileStoreTest, OpensExistingRootAndDropsTrailingSlash) {
  ASSERT_TRUE(store_->Put("manifests/a", "x").has_value());
  auto again = CreateFileStore({root_ + "/"});
  ASSERT_TRUE(again.has_value()) << again.error().ToString();
  EXPECT_EQ((*again)->url(), "file://" + root_);
  auto data = (*again)->Get("manifests/a");
  ASSERT_TRUE(data.has_value()) << data.error().ToString();
  EXPECT_EQ(*data, "x");
}

TEST(CreateFileStoreTest, RefusesRootThatIsNotADirectory) {
  TempDir dir;
  ASSERT_TRUE(WriteFileAtomic(dir.Join("file"), "x").has_value());
  auto store = CreateFileStore({dir.Join("file")});
  ASSERT_FALSE(store.has_value());
  EXPECT_EQ(store.error().kind(), ErrorKind::kFailedPrecondition);
  EXPECT_NE(store.error().message().find("not a directory"), std::string::npos)
      << store.error().message();
}

TEST(CreateFileStoreTest, RefusesRelativeOrEmptyRoot) {
  for (std::string root : {"", "relative/store"}) {
    auto store = CreateFileStore({root});
    ASSERT_FALSE(store.has_value()) << root;
    EXPECT_EQ(store.error().kind(), ErrorKind::kInvalidArgument) << root;
  }
}

TEST_F(FileStoreTest, PutGetRoundTripsBinaryData) {
  std::string data;
  for (int i = 0; i < 3 * 65536 + 17; ++i) data += static_cast<char>(i % 256);
  ASSERT_NE(data.find('\0'), std::string::npos);
  ASSERT_TRUE(store_->Put("chunks/ab/ab12", data).has_value());
  EXPECT_EQ(GetOrDie("chunks/ab/ab12"), data);

  ASSERT_TRUE(store_->Put("manifests/empty", "").has_value());
  EXPECT_EQ(GetOrDie("manifests/empty"), "");
}

TEST_F(FileStoreTest, PutReplaces) {
  ASSERT_TRUE(store_->Put("refs/web/latest", "first, and longer").has_value());
  ASSERT_TRUE(store_->Put("refs/web/latest", "second").has_value());
  EXPECT_EQ(GetOrDie("refs/web/latest"), "second");
  EXPECT_FALSE(HasTempFiles(root_));
}

TEST_F(FileStoreTest, GetOfMissingKeyIsNotFoundNamingKeyAndStore) {
  ASSERT_TRUE(store_->Put("manifests/a", "x").has_value());
  for (std::string key : {"manifests/missing", "nodir/missing", "manifests/a/below-a-file"}) {
    auto data = store_->Get(key);
    ASSERT_FALSE(data.has_value()) << key;
    EXPECT_EQ(data.error().kind(), ErrorKind::kNotFound) << key;
    EXPECT_EQ(data.error().sys_errno(), ENOENT) << key;
    EXPECT_NE(data.error().message().find("'" + key + "'"), std::string::npos)
        << data.error().message();
    EXPECT_NE(data.error().message().find(store_->url()), std::string::npos)
        << data.error().message();
  }
}

TEST_F(FileStoreTest, GetIntoReadsIntoTheCallersMemoryOrSaysHowBigTheObjectIs) {
  std::string data;
  for (int i = 0; i < 3 * 65536 + 17; ++i) data += static_cast<char>(i % 251);
  ASSERT_TRUE(store_->Put("chunks/ab/ab12", data).has_value());

  std::vector<char> room(data.size() + 100, '#');
  auto got = store_->GetInto("chunks/ab/ab12", room);
  ASSERT_TRUE(got.has_value()) << got.error().ToString();
  EXPECT_EQ(*got, data.size());
  EXPECT_EQ(std::string_view(room.data(), *got), data);
  EXPECT_EQ(room[data.size()], '#') << "nothing written past the object";

  std::vector<char> small(data.size() - 1, '#');
  got = store_->GetInto("chunks/ab/ab12", small);
  ASSERT_TRUE(got.has_value()) << got.error().ToString();
  EXPECT_EQ(*got, data.size()) << "an object that does not fit: its size";

  auto missing = store_->GetInto("chunks/ab/absent", room);
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().kind(), ErrorKind::kNotFound);
  EXPECT_NE(missing.error().message().find("'chunks/ab/absent'"), std::string::npos)
      << missing.error().message();
  auto bad = store_->GetInto("../escape", room);
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().kind(), ErrorKind::kInvalidArgument);
}

TEST_F(FileStoreTest, RejectsBadKeysInEveryMethod) {
  const std::string bad_keys[] = {
      "",   "/abs", "..",    "../escape", "a/../b",    "a..b",      "a//b",
      "a/", ".",    "a/./b", ".lock",     ".tmp-1234", "a/.hidden", std::string("a\0b", 3),
  };
  for (const auto& key : bad_keys) {
    SCOPED_TRACE("key: " + key);
    auto put = store_->Put(key, "x");
    ASSERT_FALSE(put.has_value());
    EXPECT_EQ(put.error().kind(), ErrorKind::kInvalidArgument);
    EXPECT_NE(put.error().message().find("invalid key"), std::string::npos)
        << put.error().message();
    auto put_if_absent = store_->PutIfAbsent(key, "x");
    ASSERT_FALSE(put_if_absent.has_value());
    EXPECT_EQ(put_if_absent.error().kind(), ErrorKind::kInvalidArgument);
    auto get = store_->Get(key);
    ASSERT_FALSE(get.has_value());
    EXPECT_EQ(get.error().kind(), ErrorKind::kInvalidArgument);
    auto exists = store_->Exists(key);
    ASSERT_FALSE(exists.has_value());
    EXPECT_EQ(exists.error().kind(), ErrorKind::kInvalidArgument);
    auto del = store_->Delete(key);
    ASSERT_FALSE(del.has_value());
    EXPECT_EQ(del.error().kind(), ErrorKind::kInvalidArgument);
    auto cas = store_->CompareAndSwap(key, std::nullopt, "x");
    ASSERT_FALSE(cas.has_value());
    EXPECT_EQ(cas.error().kind(), ErrorKind::kInvalidArgument);
  }
  EXPECT_EQ(TreeOf(dir_.path()), std::vector<std::string>{"store"}) << "nothing written";
}

TEST_F(FileStoreTest, PutIfAbsentWritesOnceAndNeverOverwrites) {
  auto first = store_->PutIfAbsent("chunks/ab/abcd", "first");
  ASSERT_TRUE(first.has_value()) << first.error().ToString();
  EXPECT_TRUE(*first);
  auto second = store_->PutIfAbsent("chunks/ab/abcd", "second, longer");
  ASSERT_TRUE(second.has_value()) << second.error().ToString();
  EXPECT_FALSE(*second);
  EXPECT_EQ(GetOrDie("chunks/ab/abcd"), "first");
  EXPECT_FALSE(HasTempFiles(root_));
}

TEST_F(FileStoreTest, ConcurrentPutIfAbsentOfOneKeyHasExactlyOneWinner) {
  constexpr int kThreads = 8;
  for (int round = 0; round < 20; ++round) {
    std::string key = "chunks/00/key" + std::to_string(round);
    std::atomic<int> wins = 0;
    std::atomic<int> errors = 0;
    std::atomic<int> winner = -1;
    std::latch start(kThreads);
    std::vector<std::thread> threads;
    for (int i = 0; i < kThreads; ++i) {
      threads.emplace_back([&, i] {
        start.arrive_and_wait();
        auto wrote = store_->PutIfAbsent(key, "writer " + std::to_string(i));
        if (!wrote) {
          ++errors;
        } else if (*wrote) {
          ++wins;
          winner = i;
        }
      });
    }
    for (auto& t : threads) t.join();
    ASSERT_EQ(errors, 0) << key;
    ASSERT_EQ(wins, 1) << key;
    EXPECT_EQ(GetOrDie(key), "writer " + std::to_string(winner.load()));
  }
  EXPECT_FALSE(HasTempFiles(root_));
}

TEST_F(FileStoreTest, ListReturnsSortedKeysWithPrefixAndSkipsStoreFiles) {
  for (std::string key : {"manifests/b", "chunks/cd/cd01", "chunks/ab/ab02", "manifests/a",
                          "chunks/ab/ab01", "refs/web/latest"}) {
    ASSERT_TRUE(store_->Put(key, "x").has_value()) << key;
  }
  // A writer caught mid-Put, and the lock file CompareAndSwap leaves.
  ASSERT_TRUE(WriteFileAtomic(root_ + "/chunks/ab/.tmp-0123456789abcdef", "partial").has_value());
  ASSERT_TRUE(WriteFileAtomic(root_ + "/.tmp-fedcba9876543210", "partial").has_value());
  ASSERT_TRUE(store_->CompareAndSwap("refs/db/latest", std::nullopt, "id").has_value());
  ASSERT_TRUE(MakeDirs(root_ + "/chunks/ee").has_value());  // empty directory

  auto all = store_->List("");
  ASSERT_TRUE(all.has_value()) << all.error().ToString();
  EXPECT_EQ(*all, (std::vector<std::string>{"chunks/ab/ab01", "chunks/ab/ab02", "chunks/cd/cd01",
                                            "manifests/a", "manifests/b", "refs/db/latest",
                                            "refs/web/latest"}));
  auto chunks = store_->List("chunks/");
  ASSERT_TRUE(chunks.has_value()) << chunks.error().ToString();
  EXPECT_EQ(*chunks,
            (std::vector<std::string>{"chunks/ab/ab01", "chunks/ab/ab02", "chunks/cd/cd01"}));
  auto partial = store_->List("chunks/ab/ab0");
  ASSERT_TRUE(partial.has_value()) << partial.error().ToString();
  EXPECT_EQ(*partial, (std::vector<std::string>{"chunks/ab/ab01", "chunks/ab/ab02"}));
  auto mid_component = store_->List("man");
  ASSERT_TRUE(mid_component.has_value()) << mid_component.error().ToString();
  EXPECT_EQ(*mid_component, (std::vector<std::string>{"manifests/a", "manifests/b"}));
  auto none = store_->List("nothing/");
  ASSERT_TRUE(none.has_value()) << none.error().ToString();
  EXPECT_TRUE(none->empty());
}

TEST_F(FileStoreTest, ExistsAndDelete) {
  ASSERT_TRUE(store_->Put("manifests/a", "x").has_value());
  auto exists = store_->Exists("manifests/a");
  ASSERT_TRUE(exists.has_value()) << exists.error().ToString();
  EXPECT_TRUE(*exists);
  auto directory = store_->Exists("manifests");
  ASSERT_TRUE(directory.has_value()) << directory.error().ToString();
  EXPECT_FALSE(*directory) << "a directory is not an object";

  ASSERT_TRUE(store_->Delete("manifests/a").has_value());
  exists = store_->Exists("manifests/a");
  ASSERT_TRUE(exists.has_value()) << exists.error().ToString();
  EXPECT_FALSE(*exists);
  auto gone = store_->Get("manifests/a");
  ASSERT_FALSE(gone.has_value());
  EXPECT_EQ(gone.error().kind(), ErrorKind::kNotFound);

  auto again = store_->Delete("manifests/a");
  EXPECT_TRUE(again.has_value()) << again.error().ToString();
  auto never = store_->Delete("nodir/never");
  EXPECT_TRUE(never.has_value()) << never.error().ToString();
  auto list = store_->List("");
  ASSERT_TRUE(list.has_value()) << list.error().ToString();
  EXPECT_TRUE(list->empty());
}

TEST_F(FileStoreTest, CompareAndSwapReplacesOnlyWhenExpectedMatches) {
  const std::string key = "refs/web/latest";
  auto created = store_->CompareAndSwap(key, std::nullopt, "id1");
  ASSERT_TRUE(created.has_value()) << created.error().ToString();
  EXPECT_EQ(GetOrDie(key), "id1");

  auto not_absent = store_->CompareAndSwap(key, std::nullopt, "id2");
  ASSERT_FALSE(not_absent.has_value());
  EXPECT_EQ(not_absent.error().kind(), ErrorKind::kFailedPrecondition);
  auto wrong = store_->CompareAndSwap(key, "id0", "id2");
  ASSERT_FALSE(wrong.has_value());
  EXPECT_EQ(wrong.error().kind(), ErrorKind::kFailedPrecondition);
  EXPECT_NE(wrong.error().message().find("'" + key + "'"), std::string::npos)
      << wrong.error().message();
  EXPECT_EQ(GetOrDie(key), "id1") << "a failed swap changes nothing";

  auto swapped = store_->CompareAndSwap(key, "id1", "id2");
  ASSERT_TRUE(swapped.has_value()) << swapped.error().ToString();
  EXPECT_EQ(GetOrDie(key), "id2");

  auto absent = store_->CompareAndSwap("refs/db/latest", "id1", "id2");
  ASSERT_FALSE(absent.has_value());
  EXPECT_EQ(absent.error().kind(), ErrorKind::kFailedPrecondition);
  auto exists = store_->Exists("refs/db/latest");
  ASSERT_TRUE(exists.has_value());
  EXPECT_FALSE(*exists);
  EXPECT_FALSE(HasTempFiles(root_));
}

TEST_F(FileStoreTest, ConcurrentCompareAndSwapNeverLosesAnUpdate) {
  constexpr int kThreads = 4;
  constexpr int kIncrements = 25;
  std::atomic<int> errors = 0;
  std::latch start(kThreads);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&] {
      start.arrive_and_wait();
      for (int n = 0; n < kIncrements; ++n) {
        if (!Increment(*store_, "refs/counter/latest")) ++errors;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(errors, 0);
  EXPECT_EQ(GetOrDie("refs/counter/latest"), std::to_string(kThreads * kIncrements));
}

TEST_F(FileStoreTest, CompareAndSwapIsAtomicAcrossProcesses) {
  constexpr int kProcesses = 4;
  constexpr int kIncrements = 25;
  std::vector<pid_t> children;
  for (int i = 0; i < kProcesses; ++i) {
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      // The child opens the store on its own, as another cryo process would.
      auto store = CreateFileStore({root_});
      bool ok = store.has_value();
      for (int n = 0; ok && n < kIncrements; ++n) ok = Increment(**store, "refs/counter/latest");
      ::_exit(ok ? 0 : 1);
    }
    children.push_back(pid);
  }
  for (pid_t pid : children) {
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child " << pid;
  }
  EXPECT_EQ(GetOrDie("refs/counter/latest"), std::to_string(kProcesses * kIncrements));
}

TEST_F(FileStoreTest, GuardsLetUsersShareAndKeepCollectionApart) {
  using std::chrono::milliseconds;
  auto use1 = store_->Guard(Store::GuardMode::kUse);
  ASSERT_TRUE(use1.has_value()) << use1.error().ToString();
  auto use2 = store_->Guard(Store::GuardMode::kUse);
  ASSERT_TRUE(use2.has_value()) << "two users at once";
  auto collect = store_->Guard(Store::GuardMode::kCollect, milliseconds(100));
  ASSERT_FALSE(collect.has_value()) << "collected while chunks were in use";
  EXPECT_EQ(collect.error().kind(), ErrorKind::kUnavailable);
  EXPECT_NE(collect.error().message().find("in use"), std::string::npos)
      << collect.error().message();
  use1->reset();
  use2->reset();
  collect = store_->Guard(Store::GuardMode::kCollect);
  ASSERT_TRUE(collect.has_value()) << collect.error().ToString();
  // A user waits for the collection to end.
  std::atomic<bool> used{false};
  std::thread user([&] {
    auto g = store_->Guard(Store::GuardMode::kUse);
    used = g.has_value();
  });
  std::this_thread::sleep_for(milliseconds(200));
  EXPECT_FALSE(used) << "used the store during a collection";
  collect->reset();
  user.join();
  EXPECT_TRUE(used);
  auto keys = store_->List("");
  ASSERT_TRUE(keys.has_value());
  EXPECT_TRUE(keys->empty()) << "the guard's file is not an object";
}

TEST_F(FileStoreTest, AnotherProcessUsingTheStoreHoldsCollectionOff) {
  int ready[2], release[2];
  ASSERT_EQ(::pipe(ready), 0);
  ASSERT_EQ(::pipe(release), 0);
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Another cryod: its own store object, a checkpoint under way.
    auto store = CreateFileStore({root_});
    auto guard = store ? (*store)->Guard(Store::GuardMode::kUse)
                       : Result<std::unique_ptr<StoreGuard>>(std::unexpected(store.error()));
    char c = guard ? 'y' : 'n';
    (void)!::write(ready[1], &c, 1);
    (void)!::read(release[0], &c, 1);
    ::_exit(0);
  }
  char c = 0;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  EXPECT_EQ(c, 'y');
  auto collect = store_->Guard(Store::GuardMode::kCollect, std::chrono::milliseconds(200));
  EXPECT_FALSE(collect.has_value()) << "collected while another process used the store";
  // The other process ends (a crash would do as well: the lock goes with it).
  ASSERT_EQ(::write(release[1], "x", 1), 1);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  collect = store_->Guard(Store::GuardMode::kCollect, std::chrono::seconds(5));
  EXPECT_TRUE(collect.has_value()) << collect.error().ToString();
  for (int fd : {ready[0], ready[1], release[0], release[1]}) ::close(fd);
}

TEST_F(FileStoreTest, FilesArePrivateWhateverTheUmask) {
  mode_t old = ::umask(0);
  ASSERT_TRUE(store_->Put("chunks/ab/ab01", "x").has_value());
  auto wrote = store_->PutIfAbsent("chunks/cd/cd01", "x");
  ASSERT_TRUE(store_->CompareAndSwap("refs/web/latest", std::nullopt, "id").has_value());
  ::umask(old);
  ASSERT_TRUE(wrote.has_value() && *wrote);

  for (const auto& name : TreeOf(root_)) {
    std::string path = root_ + "/" + name;
    struct stat st {};
    ASSERT_EQ(::lstat(path.c_str(), &st), 0) << path;
    if (S_ISDIR(st.st_mode)) {
      EXPECT_EQ(st.st_mode & 07777, 0700u) << path;
    } else {
      EXPECT_TRUE(S_ISREG(st.st_mode)) << path;
      EXPECT_EQ(st.st_mode & 07777, 0600u) << path;
    }
  }
}

TEST_F(FileStoreTest, FlushSucceeds) {
  ASSERT_TRUE(store_->Put("chunks/ab/ab01", "x").has_value());
  auto flushed = store_->Flush();
  EXPECT_TRUE(flushed.has_value()) << flushed.error().ToString();
}

}  // namespace
}  // namespace cryo
