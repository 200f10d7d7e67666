// SPDX-License-Identifier: Apache-2.0
// The one error type of cryo: a kind, the errno where there is one, and a
// message that says what failed and on what. Fallible functions return
// Result<T> (std::expected); `return r.error();` passes an error up.
#pragma once

#include <expected>
#include <string>
#include <string_view>

namespace cryo {

enum class ErrorKind {
  kInvalidArgument,     // the caller asked for something malformed
  kNotFound,            // no such job, file, checkpoint
  kAlreadyExists,       // a name or file is taken
  kPermissionDenied,    // the caller may not do this
  kFailedPrecondition,  // the object is in the wrong state (job not running ...)
  kUnavailable,         // a peer (cryod, a store) does not answer
  kCorrupt,             // data failed a check
  kIo,                  // the operating system refused (disk full, EIO ...)
  kInternal,            // a bug or an unexpected answer
};

// Stable lower-case name of a kind ("not_found"), used on the wire and in JSON.
std::string_view ErrorKindName(ErrorKind kind);
// Inverse of ErrorKindName; unknown names map to kInternal.
ErrorKind ErrorKindFromName(std::string_view name);

class Error {
 public:
  Error(ErrorKind kind, std::string message, int sys_errno = 0)
      : kind_(kind), sys_errno_(sys_errno), message_(std::move(message)) {}

  ErrorKind kind() const { return kind_; }
  int sys_errno() const { return sys_errno_; }
  const std::string& message() const { return message_; }

  // "message: strerror(errno)" when there is an errno, else the message.
  std::string ToString() const;
  // The same error with "context: " in front of its message.
  Error WithContext(std::string_view context) const;

 private:
  ErrorKind kind_;
  int sys_errno_;
  std::string message_;
};

template <typename T>
using Result = std::expected<T, Error>;
using Status = Result<void>;

inline std::unexpected<Error> Fail(ErrorKind kind, std::string message) {
  return std::unexpected(Error(kind, std::move(message)));
}

// An error from a failed system call: the kind follows the errno (ENOENT is
// kNotFound, EACCES kPermissionDenied, ...). Reads errno when none is given.
std::unexpected<Error> SysFail(std::string message, int sys_errno = -1);

}  // namespace cryo
