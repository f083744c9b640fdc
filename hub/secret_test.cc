#include "hub/secret.h"

#include <errno.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

namespace bigsmall::hub {
namespace {

constexpr char kValue[] = "hf_abcdefghijklmnopqrstuvwxyz0123456789";

// The VmFlags line of the /proc/self/smaps entry holding `address`.
std::string VmFlagsOf(const void* address) {
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  const uintptr_t a = reinterpret_cast<uintptr_t>(address);
  bool inside = false;
  while (std::getline(smaps, line)) {
    std::vector<std::string> words = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (!words.empty() && words[0].find('-') != std::string::npos &&
        !absl::EndsWith(words[0], ":")) {
      std::vector<std::string> range = absl::StrSplit(words[0], '-');
      uint64_t lo = 0, hi = 0;
      inside = range.size() == 2 && absl::SimpleHexAtoi(range[0], &lo) &&
               absl::SimpleHexAtoi(range[1], &hi) && lo <= a && a < hi;
      continue;
    }
    if (inside && absl::StartsWith(line, "VmFlags:")) return line;
  }
  return "";
}

bool Mapped(const void* address) {
  const long page = sysconf(_SC_PAGESIZE);
  void* start = reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(address) &
                                        ~static_cast<uintptr_t>(page - 1));
  return msync(start, static_cast<size_t>(page), MS_ASYNC) == 0 || errno != ENOMEM;
}

TEST(SecretTest, EmptyByDefault) {
  Secret s;
  EXPECT_TRUE(s.empty());
  EXPECT_TRUE(s.Reveal().empty());
  EXPECT_EQ(s.Describe(), "<none>");
  EXPECT_TRUE(Secret("").empty());
}

TEST(SecretTest, HoldsTheValueAndNeverDescribesIt) {
  Secret s(kValue);
  EXPECT_FALSE(s.empty());
  EXPECT_EQ(s.Reveal(), kValue);
  EXPECT_EQ(s.Describe(), "<token, 39 bytes>");
  EXPECT_FALSE(absl::StrContains(s.Describe(), "hf_abc"));
  // Longer than a page.
  std::string big(10000, 'x');
  Secret b(big);
  EXPECT_EQ(b.Reveal(), big);
}

TEST(SecretTest, ItsPageIsExcludedFromCoreDumps) {
  Secret s(kValue);
  const std::string flags = VmFlagsOf(s.Reveal().data());
  ASSERT_FALSE(flags.empty()) << "no smaps entry for the secret";
  EXPECT_TRUE(absl::StrContains(flags, " dd")) << flags;  // MADV_DONTDUMP
  // Its own mapping: nothing else shares the page.
  EXPECT_EQ(reinterpret_cast<uintptr_t>(s.Reveal().data()) % sysconf(_SC_PAGESIZE), 0u);
}

TEST(SecretTest, CopyAndMove) {
  Secret a(kValue);
  Secret b(a);
  EXPECT_EQ(b.Reveal(), kValue);
  EXPECT_NE(a.Reveal().data(), b.Reveal().data());
  Secret c;
  c = a;
  EXPECT_EQ(c.Reveal(), kValue);
  c = *&c;  // self-assignment keeps it
  EXPECT_EQ(c.Reveal(), kValue);
  const char* where = a.Reveal().data();
  Secret d(std::move(a));
  EXPECT_TRUE(a.empty());  // NOLINT(bugprone-use-after-move): moved-from is empty
  EXPECT_EQ(d.Reveal().data(), where);
  Secret e("other");
  const char* old = e.Reveal().data();
  e = std::move(d);
  EXPECT_EQ(e.Reveal(), kValue);
  EXPECT_TRUE(d.empty());  // NOLINT(bugprone-use-after-move)
  EXPECT_FALSE(Mapped(old)) << "the replaced value's page is still mapped";
}

TEST(SecretTest, ItsPageGoesWithIt) {
  const char* where = nullptr;
  {
    Secret s(kValue);
    where = s.Reveal().data();
    EXPECT_TRUE(Mapped(where));
  }
  // Zeroed (explicit_bzero) and unmapped: nothing of it is left to read.
  EXPECT_FALSE(Mapped(where));
}

TEST(SecretTest, DisableCoreDumps) {
  // In a child: it changes the whole process.
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (!DisableCoreDumps()) _exit(2);
    if (prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 0) _exit(3);
    struct rlimit r;
    if (getrlimit(RLIMIT_CORE, &r) != 0 || r.rlim_cur != 0 || r.rlim_max != 0) _exit(4);
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

}  // namespace
}  // namespace bigsmall::hub
