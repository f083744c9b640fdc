// Tests: runs tests/hub/fake_hub.py (tests/hub/FAKE_HUB.md) as a child
// process on a free port, and talks to its control endpoints.
#ifndef BIGSMALL_HUB_FAKE_HUB_PROCESS_H_
#define BIGSMALL_HUB_FAKE_HUB_PROCESS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace bigsmall::hub::testing {

class FakeHub {
 public:
  // `data_dir`: repos as DIR/<owner>/<name>/...; `tokens`: valid tokens.
  // Waits (10 s at most) until it listens; ok() tells whether it did.
  explicit FakeHub(std::string data_dir, std::vector<std::string> tokens = {},
                   std::vector<std::string> extra_args = {});
  ~FakeHub();
  FakeHub(const FakeHub&) = delete;
  FakeHub& operator=(const FakeHub&) = delete;

  bool ok() const { return port_ > 0; }
  const std::string& log() const;  // its stderr, for failure messages
  int port() const { return port_; }
  // "http://127.0.0.1:PORT"
  std::string endpoint() const;

  // Control endpoints: POST/DELETE/GET with a JSON body; the answer's body.
  absl::StatusOr<std::string> Control(const std::string& method, const std::string& path,
                                      const std::string& json_body = "");
  absl::Status AddFaults(const std::string& rules_json);  // {"rules": [...]}
  absl::Status ClearFaults();
  absl::Status Throttle(uint64_t bytes_per_second);
  absl::StatusOr<std::string> Stats();  // GET /_fake/stats JSON
  absl::Status ResetStats();

 private:
  std::string data_dir_;
  std::string dir_;  // its port file and log
  mutable std::string log_;
  int pid_ = -1;
  int port_ = 0;
};

}  // namespace bigsmall::hub::testing

#endif  // BIGSMALL_HUB_FAKE_HUB_PROCESS_H_
