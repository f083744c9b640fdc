// Runs bigsmalld: shm directory, metrics, the gRPC server on a Unix socket
// (and TCP when asked), health + reflection, and a clean drain on SIGTERM.
#ifndef BIGSMALL_DAEMON_SERVER_H_
#define BIGSMALL_DAEMON_SERVER_H_

#include "absl/status/status.h"
#include "daemon/config.h"

namespace bigsmall::daemon {

// Blocks until SIGTERM or SIGINT, then drains and returns. The caller must
// have blocked SIGTERM/SIGINT in every thread (BlockShutdownSignals) before
// starting any thread.
absl::Status RunDaemon(const DaemonConfig& config);
void BlockShutdownSignals();

}  // namespace bigsmall::daemon

#endif  // BIGSMALL_DAEMON_SERVER_H_
