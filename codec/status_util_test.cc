#include "codec/status_util.h"

#include <cerrno>
#include <string>

#include "gtest/gtest.h"

namespace bigsmall {
namespace {

TEST(ErrnoToStatus, MapsEveryFamilyToItsDocumentedCode) {
  EXPECT_EQ(ErrnoToStatus(ENOENT, "x").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ErrnoToStatus(EACCES, "x").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(ErrnoToStatus(ELOOP, "x").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ErrnoToStatus(ENOSPC, "x").code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ErrnoToStatus(EMFILE, "x").code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ErrnoToStatus(EIO, "x").code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(ErrnoToStatus(EISDIR, "x").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ErrnoToStatus(EAGAIN, "x").code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(ErrnoToStatus(EPIPE, "x").code(), absl::StatusCode::kInternal);
  EXPECT_NE(ErrnoToStatus(ENOENT, "open /a").message().find("open /a: "), std::string::npos);
}

TEST(EscapeForLog, KeepsOneLineAndBoundsLength) {
  EXPECT_EQ(EscapeForLog("plain/path.bs"), "plain/path.bs");
  std::string forged = "a\nERROR fake line";
  EXPECT_EQ(EscapeForLog(forged).find('\n'), std::string::npos);
  std::string with_nul("a\0b", 3);
  EXPECT_EQ(EscapeForLog(with_nul).find('\0'), std::string::npos);
  EXPECT_EQ(EscapeForLog(with_nul).rfind("a\\x00", 0), 0u);
  std::string huge(1 << 20, 'x');
  std::string out = EscapeForLog(huge);
  EXPECT_LT(out.size(), 400u);
  EXPECT_NE(out.find("(1048576 bytes)"), std::string::npos);
}

}  // namespace
}  // namespace bigsmall
