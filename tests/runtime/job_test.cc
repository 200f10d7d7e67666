// SPDX-License-Identifier: Apache-2.0
#include "cryo/job.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <set>
#include <string>

#include "cryo/file_util.h"
#include "temp_dir.h"

namespace cryo {
namespace {

JobRecord FullRecord() {
  JobRecord job;
  job.id = "0123456789abcdef";
  job.name = "web";
  job.argv = {"/usr/bin/python3", "-m", "http.server", "with space"};
  job.env = {"PATH=/usr/bin:/bin", "QUOTE=\"x\"", "UNICODE=h\xc3\xa9"};
  job.cwd = "/srv/web";
  job.uid = 1000;
  job.gid = 1001;
  job.groups = {1001, 27, 100};
  job.created_unix_ms = 1'700'000'000'123;
  job.ended_unix_ms = 1'700'000'999'456;
  job.state = JobState::kExited;
  job.cgroup = "/sys/fs/cgroup/cryo/0123456789abcdef";
  job.monitor_pid = 4242;
  job.monitor_start_time = 9'876'543'210;
  job.init_pid = 4243;
  job.init_start_time = 9'876'543'211;
  job.pid = 4244;
  job.exit_code = 137;
  return job;
}

void ExpectSameRecord(const JobRecord& a, const JobRecord& b) {
  EXPECT_EQ(a.id, b.id);
  EXPECT_EQ(a.name, b.name);
  EXPECT_EQ(a.argv, b.argv);
  EXPECT_EQ(a.env, b.env);
  EXPECT_EQ(a.cwd, b.cwd);
  EXPECT_EQ(a.uid, b.uid);
  EXPECT_EQ(a.gid, b.gid);
  EXPECT_EQ(a.groups, b.groups);
  EXPECT_EQ(a.created_unix_ms, b.created_unix_ms);
  EXPECT_EQ(a.ended_unix_ms, b.ended_unix_ms);
  EXPECT_EQ(a.state, b.state);
  EXPECT_EQ(a.cgroup, b.cgroup);
  EXPECT_EQ(a.monitor_pid, b.monitor_pid);
  EXPECT_EQ(a.monitor_start_time, b.monitor_start_time);
  EXPECT_EQ(a.init_pid, b.init_pid);
  EXPECT_EQ(a.init_start_time, b.init_start_time);
  EXPECT_EQ(a.pid, b.pid);
  EXPECT_EQ(a.exit_code, b.exit_code);
}

void ExpectCorrupt(std::string_view text) {
  auto r = DecodeJobRecord(text);
  ASSERT_FALSE(r.has_value()) << text;
  EXPECT_EQ(r.error().kind(), ErrorKind::kCorrupt) << r.error().message();
}

TEST(JobRecordTest, FullRecordRoundTrips) {
  JobRecord job = FullRecord();
  auto back = DecodeJobRecord(EncodeJobRecord(job));
  ASSERT_TRUE(back.has_value()) << back.error().ToString();
  ExpectSameRecord(*back, job);
}

TEST(JobRecordTest, RecordWithoutExitCodeRoundTrips) {
  JobRecord job = FullRecord();
  job.state = JobState::kRunning;
  job.exit_code.reset();
  auto back = DecodeJobRecord(EncodeJobRecord(job));
  ASSERT_TRUE(back.has_value()) << back.error().ToString();
  EXPECT_FALSE(back->exit_code.has_value());
  ExpectSameRecord(*back, job);
}

TEST(JobRecordTest, ExitCodeZeroIsKeptApartFromUnset) {
  JobRecord job = FullRecord();
  job.exit_code = 0;
  auto back = DecodeJobRecord(EncodeJobRecord(job));
  ASSERT_TRUE(back.has_value()) << back.error().ToString();
  EXPECT_EQ(back->exit_code, std::optional<int>(0));
}

TEST(JobRecordTest, EveryStateRoundTrips) {
  for (JobState state :
       {JobState::kStarting, JobState::kRunning, JobState::kExited, JobState::kLost}) {
    JobRecord job = FullRecord();
    job.state = state;
    auto back = DecodeJobRecord(EncodeJobRecord(job));
    ASSERT_TRUE(back.has_value()) << back.error().ToString();
    EXPECT_EQ(back->state, state) << JobStateName(state);
  }
}

TEST(JobRecordTest, GarbageIsCorrupt) {
  ExpectCorrupt("");
  ExpectCorrupt("not json at all");
  ExpectCorrupt("[1, 2, 3]");
  ExpectCorrupt("{\"version\": 1}");  // required fields missing
}

TEST(JobRecordTest, WrongVersionIsCorrupt) {
  std::string text = EncodeJobRecord(FullRecord());
  size_t pos = text.find("\"version\": 1");
  ASSERT_NE(pos, std::string::npos) << text;
  text.replace(pos, 12, "\"version\": 2");
  ExpectCorrupt(text);
}

TEST(JobRecordTest, UnknownStateIsCorrupt) {
  std::string text = EncodeJobRecord(FullRecord());
  size_t pos = text.find("\"exited\"");
  ASSERT_NE(pos, std::string::npos) << text;
  text.replace(pos, 8, "\"paused\"");
  ExpectCorrupt(text);
}

TEST(JobRecordTest, WrongFieldTypeIsCorrupt) {
  std::string text = EncodeJobRecord(FullRecord());
  size_t pos = text.find("\"cwd\": \"/srv/web\"");
  ASSERT_NE(pos, std::string::npos) << text;
  text.replace(pos, 17, "\"cwd\": 7");
  ExpectCorrupt(text);
}

TEST(JobExitTest, RoundTrips) {
  auto back = DecodeJobExit(EncodeJobExit(JobExit{143, 1'700'000'000'001}));
  ASSERT_TRUE(back.has_value()) << back.error().ToString();
  EXPECT_EQ(back->exit_code, 143);
  EXPECT_EQ(back->ended_unix_ms, 1'700'000'000'001);
}

TEST(JobTableTest, CreatedRecordIsLoaded) {
  TempDir dir;
  JobTable table(dir.path());
  JobRecord job = FullRecord();
  ASSERT_TRUE(table.Create(job).has_value());

  struct stat st;
  ASSERT_EQ(::stat(table.JobDir(job.id).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);

  std::vector<Error> skipped;
  auto jobs = table.LoadAll(&skipped);
  ASSERT_TRUE(jobs.has_value()) << jobs.error().ToString();
  EXPECT_TRUE(skipped.empty());
  ASSERT_EQ(jobs->size(), 1u);
  ExpectSameRecord(jobs->front(), job);
}

TEST(JobTableTest, CreatingAnExistingIdFails) {
  TempDir dir;
  JobTable table(dir.path());
  ASSERT_TRUE(table.Create(FullRecord()).has_value());
  auto s = table.Create(FullRecord());
  ASSERT_FALSE(s.has_value());
  EXPECT_EQ(s.error().kind(), ErrorKind::kAlreadyExists);
}

TEST(JobTableTest, LoadAllOfEmptyStateDirIsEmpty) {
  TempDir dir;
  JobTable table(dir.path());
  auto jobs = table.LoadAll(nullptr);
  ASSERT_TRUE(jobs.has_value()) << jobs.error().ToString();
  EXPECT_TRUE(jobs->empty());
}

TEST(JobTableTest, SaveReplacesRecord) {
  TempDir dir;
  JobTable table(dir.path());
  JobRecord job = FullRecord();
  job.state = JobState::kRunning;
  job.exit_code.reset();
  ASSERT_TRUE(table.Create(job).has_value());
  job.state = JobState::kExited;
  job.exit_code = 3;
  ASSERT_TRUE(table.Save(job).has_value());

  auto jobs = table.LoadAll(nullptr);
  ASSERT_TRUE(jobs.has_value()) << jobs.error().ToString();
  ASSERT_EQ(jobs->size(), 1u);
  EXPECT_EQ(jobs->front().state, JobState::kExited);
  EXPECT_EQ(jobs->front().exit_code, std::optional<int>(3));
}

TEST(JobTableTest, ReadExitIsEmptyUntilExitRecordExists) {
  TempDir dir;
  JobTable table(dir.path());
  JobRecord job = FullRecord();
  ASSERT_TRUE(table.Create(job).has_value());

  auto none = table.ReadExit(job.id);
  ASSERT_TRUE(none.has_value()) << none.error().ToString();
  EXPECT_FALSE(none->has_value());

  ASSERT_TRUE(
      WriteFileAtomic(table.ExitPath(job.id), EncodeJobExit(JobExit{42, 1234})).has_value());
  auto exit = table.ReadExit(job.id);
  ASSERT_TRUE(exit.has_value()) << exit.error().ToString();
  ASSERT_TRUE(exit->has_value());
  EXPECT_EQ((*exit)->exit_code, 42);
  EXPECT_EQ((*exit)->ended_unix_ms, 1234);
}

TEST(JobTableTest, CorruptExitRecordIsAnError) {
  TempDir dir;
  JobTable table(dir.path());
  JobRecord job = FullRecord();
  ASSERT_TRUE(table.Create(job).has_value());
  ASSERT_TRUE(WriteFileAtomic(table.ExitPath(job.id), "{\"exit_code\":").has_value());
  auto exit = table.ReadExit(job.id);
  ASSERT_FALSE(exit.has_value());
  EXPECT_EQ(exit.error().kind(), ErrorKind::kCorrupt);
}

TEST(JobTableTest, RemoveDeletesJobDirectory) {
  TempDir dir;
  JobTable table(dir.path());
  JobRecord job = FullRecord();
  ASSERT_TRUE(table.Create(job).has_value());
  ASSERT_TRUE(WriteFileAtomic(table.LogPath(job.id), "output").has_value());
  ASSERT_TRUE(table.Remove(job.id).has_value());

  struct stat st;
  EXPECT_NE(::stat(table.JobDir(job.id).c_str(), &st), 0);
  auto jobs = table.LoadAll(nullptr);
  ASSERT_TRUE(jobs.has_value()) << jobs.error().ToString();
  EXPECT_TRUE(jobs->empty());
}

TEST(JobTableTest, LoadAllSkipsAndReportsCorruptRecord) {
  TempDir dir;
  JobTable table(dir.path());
  JobRecord good = FullRecord();
  JobRecord bad = FullRecord();
  bad.id = "fedcba9876543210";
  bad.name = "broken";
  ASSERT_TRUE(table.Create(good).has_value());
  ASSERT_TRUE(table.Create(bad).has_value());
  ASSERT_TRUE(WriteFileAtomic(table.JobDir(bad.id) + "/job.json", "{ half a rec").has_value());

  std::vector<Error> skipped;
  auto jobs = table.LoadAll(&skipped);
  ASSERT_TRUE(jobs.has_value()) << jobs.error().ToString();
  ASSERT_EQ(jobs->size(), 1u);
  EXPECT_EQ(jobs->front().id, good.id);
  ASSERT_EQ(skipped.size(), 1u);
  EXPECT_EQ(skipped[0].kind(), ErrorKind::kCorrupt);
  EXPECT_NE(skipped[0].message().find(bad.id), std::string::npos) << skipped[0].message();
}

TEST(JobTableTest, LoadAllSkipsRecordFiledUnderAnotherId) {
  TempDir dir;
  JobTable table(dir.path());
  JobRecord job = FullRecord();
  ASSERT_TRUE(MakeDirs(table.JobDir("aaaaaaaaaaaaaaaa")).has_value());
  ASSERT_TRUE(WriteFileAtomic(table.JobDir("aaaaaaaaaaaaaaaa") + "/job.json", EncodeJobRecord(job))
                  .has_value());

  std::vector<Error> skipped;
  auto jobs = table.LoadAll(&skipped);
  ASSERT_TRUE(jobs.has_value()) << jobs.error().ToString();
  EXPECT_TRUE(jobs->empty());
  ASSERT_EQ(skipped.size(), 1u);
  EXPECT_EQ(skipped[0].kind(), ErrorKind::kCorrupt);
}

TEST(JobNameTest, AcceptsOrdinaryNames) {
  EXPECT_TRUE(IsValidJobName("web"));
  EXPECT_TRUE(IsValidJobName("a"));
  EXPECT_TRUE(IsValidJobName("Web_server-2.prod"));
  EXPECT_TRUE(IsValidJobName("0"));
  EXPECT_TRUE(IsValidJobName("x."));
  EXPECT_TRUE(IsValidJobName(std::string(64, 'n')));
}

TEST(JobNameTest, RejectsMalformedNames) {
  EXPECT_FALSE(IsValidJobName(""));
  EXPECT_FALSE(IsValidJobName(std::string(65, 'n')));
  EXPECT_FALSE(IsValidJobName("."));
  EXPECT_FALSE(IsValidJobName(".."));
  EXPECT_FALSE(IsValidJobName(".hidden"));
  EXPECT_FALSE(IsValidJobName("-rf"));
  EXPECT_FALSE(IsValidJobName("a/b"));
  EXPECT_FALSE(IsValidJobName("has space"));
  EXPECT_FALSE(IsValidJobName("web@latest"));
  EXPECT_FALSE(IsValidJobName(std::string("nul\0", 4)));
  EXPECT_FALSE(IsValidJobName("h\xc3\xa9"));
}

TEST(JobIdTest, IsSixteenHexDigitsAndFresh) {
  std::set<std::string> seen;
  for (int i = 0; i < 8; ++i) {
    std::string id = NewJobId();
    ASSERT_EQ(id.size(), 16u) << id;
    EXPECT_EQ(id.find_first_not_of("0123456789abcdef"), std::string::npos) << id;
    seen.insert(id);
  }
  EXPECT_EQ(seen.size(), 8u);
}

}  // namespace
}  // namespace cryo
