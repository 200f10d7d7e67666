// SPDX-License-Identifier: Apache-2.0
#include "output_stream.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "cryo/file_util.h"
#include "cryo/job_log.h"
#include "cryo/protocol.h"

namespace cryo {
namespace {

Status SendRecord(int client, const LogRecord& rec) {
  proto::Response r;
  auto* out = r.mutable_output();
  out->set_stream(rec.stream == LogStream::kStderr ? proto::Output::STREAM_STDERR
                                                   : proto::Output::STREAM_STDOUT);
  out->set_data(rec.data);
  return WriteFrame(client, r);
}

Status Drain(LogReader& reader, int client) {
  for (;;) {
    auto rec = reader.Next();
    if (!rec) return std::unexpected(rec.error());
    if (!*rec) return {};
    if (auto s = SendRecord(client, **rec); !s) return s;
  }
}

bool Live(const JobRecord& job) {
  return job.state == JobState::kStarting || job.state == JobState::kRunning;
}

}  // namespace

Result<std::optional<JobRecord>> StreamOutput(Supervisor& supervisor, const JobRecord& job,
                                              int client, bool follow) {
  const JobTable& table = supervisor.table();
  // Watch the job's directory: the log grows there, and exit.json appears
  // there when the job ends. The poll timeout is only a safety net.
  UniqueFd inotify(::inotify_init1(IN_CLOEXEC | IN_NONBLOCK));
  if (!inotify.valid()) return SysFail("inotify");
  if (::inotify_add_watch(inotify.get(), table.JobDir(job.id).c_str(),
                          IN_MODIFY | IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE) < 0) {
    return SysFail("watch " + table.JobDir(job.id));
  }
  auto log = OpenFile(table.LogPath(job.id), O_RDONLY);
  if (!log) return std::unexpected(log.error().WithContext("job '" + job.name + "' output"));
  LogReader reader(std::move(*log));

  for (;;) {
    if (auto s = Drain(reader, client); !s) return std::unexpected(s.error());
    if (!follow) return std::nullopt;
    auto current = supervisor.Get(job.id);
    bool ended = !current || !Live(*current);
    if (!ended) {
      auto exit = table.ReadExit(job.id);
      if (exit && *exit) {
        // The monitor recorded the end; the supervisor is about to notice.
        supervisor.WaitForEnd(job.id, std::chrono::seconds(2));
        current = supervisor.Get(job.id);
        ended = true;
      }
    }
    if (ended) {
      if (auto s = Drain(reader, client); !s) return std::unexpected(s.error());
      return current ? current : std::optional<JobRecord>(job);
    }
    pollfd fds[2] = {{inotify.get(), POLLIN, 0}, {client, POLLRDHUP, 0}};
    if (::poll(fds, 2, 1000) < 0 && errno != EINTR) return SysFail("poll");
    if (fds[1].revents & (POLLRDHUP | POLLHUP | POLLERR)) {
      return Fail(ErrorKind::kUnavailable, "client went away");
    }
    char buf[4096];
    while (::read(inotify.get(), buf, sizeof buf) > 0) {
    }
  }
}

}  // namespace cryo
