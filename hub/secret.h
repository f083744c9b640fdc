// A credential (a Hub token) that must not leak: no operator<<, no
// AbslStringify, no implicit conversion. Its bytes live in memory excluded
// from core dumps (MADV_DONTDUMP) and are zeroed when it goes.
// DisableCoreDumps() is for processes that hold one (the CLI): no core file,
// and no ptrace attach by other processes of the same user.
#ifndef BIGSMALL_HUB_SECRET_H_
#define BIGSMALL_HUB_SECRET_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace bigsmall::hub {

class Secret {
 public:
  Secret() = default;
  explicit Secret(absl::string_view value);
  Secret(const Secret& other);
  Secret& operator=(const Secret& other);
  Secret(Secret&& other) noexcept;
  Secret& operator=(Secret&& other) noexcept;
  ~Secret();

  bool empty() const { return size_ == 0; }
  // The value, for the one place that sends it (an Authorization header).
  absl::string_view Reveal() const { return absl::string_view(data_, size_); }
  // "hf_…" style hint safe for logs: "<none>" or "<token, 37 bytes>".
  std::string Describe() const;

 private:
  void Assign(absl::string_view value);
  void Clear();
  char* data_ = nullptr;
  size_t size_ = 0;
  size_t mapped_ = 0;
};

// prctl(PR_SET_DUMPABLE, 0) and RLIMIT_CORE 0. Returns false if refused.
bool DisableCoreDumps();

}  // namespace bigsmall::hub

#endif  // BIGSMALL_HUB_SECRET_H_
