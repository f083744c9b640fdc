// Test helper: runs a real bigsmalld (or bigsmall-client) child process on a
// private socket and shm dir, with bounded waits and guaranteed cleanup.
#ifndef BIGSMALL_TESTS_INTEGRATION_DAEMON_PROCESS_H_
#define BIGSMALL_TESTS_INTEGRATION_DAEMON_PROCESS_H_

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace bigsmall::testing {

// Starts argv[0] with args; stdout to `stdout_path` if set, stderr to `stderr_path`.
inline pid_t Spawn(const std::vector<std::string>& args, const std::string& stdout_path = "",
                   const std::string& stderr_path = "") {
  pid_t pid = fork();
  if (pid == 0) {
    // A test process that dies (a failed assertion under a sanitizer's
    // halt_on_error, a crash) takes its daemons and clients with it.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (!stdout_path.empty()) {
      if (!freopen(stdout_path.c_str(), "w", stdout)) _exit(126);
    }
    if (!stderr_path.empty()) {
      if (!freopen(stderr_path.c_str(), "w", stderr)) _exit(126);
    }
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

// Waits up to `timeout` for `pid`; returns its wait status, or -1 on timeout.
inline int WaitFor(pid_t pid, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r < 0) return -2;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return -1;
}

// Kills and reaps a child that did not exit in time.
inline int StopProcess(pid_t pid, int sig, std::chrono::milliseconds grace) {
  if (pid <= 0) return -2;
  kill(pid, sig);
  int status = WaitFor(pid, grace);
  if (status == -1) {
    kill(pid, SIGKILL);
    status = WaitFor(pid, std::chrono::milliseconds(5000));
    return -1;
  }
  return status;
}

// A field of /proc/PID/status in kB (VmRSS, VmHWM, ...), or -1.
inline long ProcStatusKb(pid_t pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) {
      std::istringstream s(line.substr(field.size() + 1));
      long kb = -1;
      s >> kb;
      return kb;
    }
  }
  return -1;
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace bigsmall::testing

#endif  // BIGSMALL_TESTS_INTEGRATION_DAEMON_PROCESS_H_
