// SPDX-License-Identifier: Apache-2.0
#include "cryo/error.h"

#include <cerrno>
#include <cstring>
#include <utility>

namespace cryo {
namespace {

struct KindName {
  ErrorKind kind;
  std::string_view name;
};

constexpr KindName kKindNames[] = {
    {ErrorKind::kInvalidArgument, "invalid_argument"},
    {ErrorKind::kNotFound, "not_found"},
    {ErrorKind::kAlreadyExists, "already_exists"},
    {ErrorKind::kPermissionDenied, "permission_denied"},
    {ErrorKind::kFailedPrecondition, "failed_precondition"},
    {ErrorKind::kUnavailable, "unavailable"},
    {ErrorKind::kCorrupt, "corrupt"},
    {ErrorKind::kIo, "io"},
    {ErrorKind::kInternal, "internal"},
};

ErrorKind KindFromErrno(int err) {
  switch (err) {
    case ENOENT:
    case ESRCH:
      return ErrorKind::kNotFound;
    case EEXIST:
      return ErrorKind::kAlreadyExists;
    case EACCES:
    case EPERM:
      return ErrorKind::kPermissionDenied;
    case EINVAL:
    case ENAMETOOLONG:
      return ErrorKind::kInvalidArgument;
    case ECONNREFUSED:
    case ETIMEDOUT:
    case EHOSTUNREACH:
      return ErrorKind::kUnavailable;
    default:
      return ErrorKind::kIo;
  }
}

}  // namespace

std::string_view ErrorKindName(ErrorKind kind) {
  for (const auto& k : kKindNames) {
    if (k.kind == kind) return k.name;
  }
  return "internal";
}

ErrorKind ErrorKindFromName(std::string_view name) {
  for (const auto& k : kKindNames) {
    if (k.name == name) return k.kind;
  }
  return ErrorKind::kInternal;
}

std::string Error::ToString() const {
  if (sys_errno_ == 0) return message_;
  return message_ + ": " + std::strerror(sys_errno_);
}

Error Error::WithContext(std::string_view context) const {
  return Error(kind_, std::string(context) + ": " + message_, sys_errno_);
}

std::unexpected<Error> SysFail(std::string message, int sys_errno) {
  int err = sys_errno < 0 ? errno : sys_errno;
  return std::unexpected(Error(KindFromErrno(err), std::move(message), err));
}

}  // namespace cryo
