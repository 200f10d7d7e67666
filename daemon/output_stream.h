// SPDX-License-Identifier: Apache-2.0
// Streaming a job's output log to a client.
#pragma once

#include <optional>

#include "cryo/error.h"
#include "cryo/job.h"
#include "supervisor.h"

namespace cryo {

// Sends the job's output to `client` as `output` frames: everything logged
// so far and, with `follow`, whatever comes until the job has ended. Returns
// the job's final record when it ended (follow), nullopt otherwise; an error
// when the client went away or the log cannot be read. Blocks.
Result<std::optional<JobRecord>> StreamOutput(Supervisor& supervisor, const JobRecord& job,
                                              int client, bool follow);

}  // namespace cryo
