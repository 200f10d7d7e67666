// SPDX-License-Identifier: Apache-2.0
#include "cryo/job.h"

#include <dirent.h>
#include <sys/stat.h>

#include <nlohmann/json.hpp>
#include <random>

#include "cryo/file_util.h"

namespace cryo {
namespace {

using nlohmann::json;

constexpr int kRecordVersion = 1;

struct StateName {
  JobState state;
  std::string_view name;
};
constexpr StateName kStateNames[] = {
    {JobState::kStarting, "starting"},
    {JobState::kRunning, "running"},
    {JobState::kExited, "exited"},
    {JobState::kLost, "lost"},
    {JobState::kCheckpointed, "checkpointed"},
};

std::optional<JobState> StateFromName(std::string_view name) {
  for (const auto& s : kStateNames) {
    if (s.name == name) return s.state;
  }
  return std::nullopt;
}

}  // namespace

std::string_view JobStateName(JobState state) {
  for (const auto& s : kStateNames) {
    if (s.state == state) return s.name;
  }
  return "unknown";
}

namespace {
constexpr struct {
  OnSigterm mode;
  std::string_view name;
} kOnSigtermNames[] = {
    {OnSigterm::kCheckpoint, "checkpoint"},
    {OnSigterm::kCheckpointAndForward, "checkpoint-and-forward"},
    {OnSigterm::kForward, "forward"},
};
}  // namespace

std::string_view OnSigtermName(OnSigterm mode) {
  for (const auto& m : kOnSigtermNames) {
    if (m.mode == mode) return m.name;
  }
  return "checkpoint";
}

std::optional<OnSigterm> ParseOnSigterm(std::string_view name) {
  for (const auto& m : kOnSigtermNames) {
    if (m.name == name) return m.mode;
  }
  return std::nullopt;
}

std::string EncodeJobRecord(const JobRecord& job) {
  json j = {
      {"version", kRecordVersion},
      {"id", job.id},
      {"name", job.name},
      {"argv", job.argv},
      {"env", job.env},
      {"cwd", job.cwd},
      {"uid", job.uid},
      {"gid", job.gid},
      {"groups", job.groups},
      {"created_unix_ms", job.created_unix_ms},
      {"ended_unix_ms", job.ended_unix_ms},
      {"state", JobStateName(job.state)},
      {"cgroup", job.cgroup},
      {"monitor_pid", job.monitor_pid},
      {"monitor_start_time", job.monitor_start_time},
      {"init_pid", job.init_pid},
      {"init_start_time", job.init_start_time},
      {"pid", job.pid},
      {"stdout_key", job.stdout_key},
      {"stderr_key", job.stderr_key},
      {"restored_from", job.restored_from},
      {"last_checkpoint", job.last_checkpoint},
      {"on_sigterm", OnSigtermName(job.on_sigterm)},
      {"notice", job.notice},
      {"stop_on_checkpoint", job.stop_on_checkpoint},
  };
  if (job.exit_code) j["exit_code"] = *job.exit_code;
  return j.dump(2) + "\n";
}

Result<JobRecord> DecodeJobRecord(std::string_view text) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return Fail(ErrorKind::kCorrupt, "job record is not a JSON object");
  try {
    if (j.at("version").get<int>() != kRecordVersion) {
      return Fail(ErrorKind::kCorrupt, "job record has unknown version " + j.at("version").dump());
    }
    JobRecord job;
    job.id = j.at("id").get<std::string>();
    job.name = j.at("name").get<std::string>();
    job.argv = j.at("argv").get<std::vector<std::string>>();
    job.env = j.at("env").get<std::vector<std::string>>();
    job.cwd = j.at("cwd").get<std::string>();
    job.uid = j.at("uid").get<uid_t>();
    job.gid = j.at("gid").get<gid_t>();
    job.groups = j.at("groups").get<std::vector<gid_t>>();
    job.created_unix_ms = j.at("created_unix_ms").get<int64_t>();
    job.ended_unix_ms = j.at("ended_unix_ms").get<int64_t>();
    auto state = StateFromName(j.at("state").get<std::string>());
    if (!state)
      return Fail(ErrorKind::kCorrupt, "job record has unknown state " + j.at("state").dump());
    job.state = *state;
    job.cgroup = j.at("cgroup").get<std::string>();
    job.monitor_pid = j.at("monitor_pid").get<pid_t>();
    job.monitor_start_time = j.at("monitor_start_time").get<uint64_t>();
    job.init_pid = j.at("init_pid").get<pid_t>();
    job.init_start_time = j.at("init_start_time").get<uint64_t>();
    job.pid = j.at("pid").get<pid_t>();
    if (j.contains("exit_code")) job.exit_code = j.at("exit_code").get<int>();
    job.stdout_key = j.value("stdout_key", "");
    job.stderr_key = j.value("stderr_key", "");
    job.restored_from = j.value("restored_from", "");
    job.last_checkpoint = j.value("last_checkpoint", "");
    job.on_sigterm =
        ParseOnSigterm(j.value("on_sigterm", "checkpoint")).value_or(OnSigterm::kCheckpoint);
    job.notice = j.value("notice", "");
    job.stop_on_checkpoint = j.value("stop_on_checkpoint", false);
    if (job.id.empty() || job.name.empty())
      return Fail(ErrorKind::kCorrupt, "job record lacks id or name");
    return job;
  } catch (const json::exception& e) {
    return Fail(ErrorKind::kCorrupt, std::string("job record: ") + e.what());
  }
}

std::string EncodeJobExit(const JobExit& exit) {
  return json{{"exit_code", exit.exit_code}, {"ended_unix_ms", exit.ended_unix_ms}}.dump() + "\n";
}

Result<JobExit> DecodeJobExit(std::string_view text) {
  json j = json::parse(text, nullptr, false);
  if (!j.is_object()) return Fail(ErrorKind::kCorrupt, "exit record is not a JSON object");
  try {
    return JobExit{j.at("exit_code").get<int>(), j.at("ended_unix_ms").get<int64_t>()};
  } catch (const json::exception& e) {
    return Fail(ErrorKind::kCorrupt, std::string("exit record: ") + e.what());
  }
}

std::string JobTable::JobDir(std::string_view id) const {
  return state_dir_ + "/jobs/" + std::string(id);
}

Status JobTable::Create(const JobRecord& job) {
  if (auto s = MakeDirs(state_dir_ + "/jobs", 0700); !s) return s;
  if (::mkdir(JobDir(job.id).c_str(), 0700) != 0) return SysFail("mkdir " + JobDir(job.id));
  return Save(job);
}

Status JobTable::Save(const JobRecord& job) {
  return WriteFileAtomic(JobDir(job.id) + "/job.json", EncodeJobRecord(job), 0600);
}

Result<std::vector<JobRecord>> JobTable::LoadAll(std::vector<Error>* skipped) const {
  std::vector<JobRecord> jobs;
  std::string dir = state_dir_ + "/jobs";
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) {
    if (errno == ENOENT) return jobs;
    return SysFail("open " + dir);
  }
  while (dirent* e = ::readdir(d)) {
    std::string id = e->d_name;
    if (id == "." || id == "..") continue;
    auto text = ReadFileToString(JobDir(id) + "/job.json");
    Result<JobRecord> job = text ? DecodeJobRecord(*text) : std::unexpected(text.error());
    if (job && job->id == id) {
      jobs.push_back(std::move(*job));
    } else if (skipped != nullptr) {
      skipped->push_back(job ? Error(ErrorKind::kCorrupt, "job record id does not match " + id)
                             : job.error().WithContext("job " + id));
    }
  }
  ::closedir(d);
  return jobs;
}

Result<std::optional<JobExit>> JobTable::ReadExit(std::string_view id) const {
  auto text = ReadFileToString(ExitPath(id));
  if (!text) {
    if (text.error().sys_errno() == ENOENT) return std::nullopt;
    return std::unexpected(text.error());
  }
  auto exit = DecodeJobExit(*text);
  if (!exit) return std::unexpected(exit.error());
  return *exit;
}

Status JobTable::Remove(std::string_view id) { return RemoveTree(JobDir(id)); }

std::string NewJobId() {
  std::random_device rd;
  uint64_t v = (static_cast<uint64_t>(rd()) << 32) | rd();
  char buf[17];
  snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

bool IsValidJobName(std::string_view name) {
  if (name.empty() || name.size() > 64 || name[0] == '.' || name[0] == '-') return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-';
    if (!ok) return false;
  }
  return true;
}

}  // namespace cryo
