// Small status-propagation macros. Debian 12's Abseil (20220623) has no
// absl/status/status_macros.h, so we keep our own two.
#ifndef BIGSMALL_CODEC_STATUS_MACROS_H_
#define BIGSMALL_CODEC_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define BIGSMALL_CONCAT_INNER_(a, b) a##b
#define BIGSMALL_CONCAT_(a, b) BIGSMALL_CONCAT_INNER_(a, b)

// Returns from the current function if `expr` (an absl::Status) is not OK.
#define RETURN_IF_ERROR(expr)                  \
  do {                                         \
    ::absl::Status _bigsmall_status = (expr);  \
    if (!_bigsmall_status.ok()) return _bigsmall_status; \
  } while (0)

// ASSIGN_OR_RETURN(lhs, expr): evaluates `expr` (an absl::StatusOr<T>); on
// error returns its status, else assigns the value to `lhs` (which may be a
// declaration such as `auto x`).
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL_(BIGSMALL_CONCAT_(_bigsmall_statusor_, __LINE__), lhs, expr)
#define ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                           \
  if (!tmp.ok()) return tmp.status();          \
  lhs = std::move(tmp).value()

#endif  // BIGSMALL_CODEC_STATUS_MACROS_H_
