// The Session protocol, without gRPC: one SessionCore per Session call,
// driven by events (Start, Release, HalfClose, Cancel, load completions,
// write completions, idle checks) and answering with actions through a
// SessionSink (send a handle / send StreamEnd / finish / abort) and a
// SessionEnv (begin/end, acquire and prefetch layers). service.cc adapts it
// to a grpc::ServerBidiReactor; session_test.cc drives it directly.
//
// Rules (docs/API.md, "Session"):
//  * Layers go out strictly in order ([non-layer], from .. to-1), one write
//    in flight. At most `window` layers are leased to the call and not
//    released (sent and unreleased + loaded and unsent + loading).
//  * Every successful call ends with StreamEnd{layers_sent} and then OK.
//    StreamEnd is written as soon as the last layer was written (at once
//    for an empty range); the call then stays open until the client
//    half-closes (its leases stay valid until then, or until released).
//  * Half-close means "no more releases". The server still sends every
//    layer the window allows; when all are sent it sends StreamEnd and
//    ends OK. When the window is full of unreleased layers and some are
//    still unsent, nothing can ever be sent: the call ends at once with
//    FAILED_PRECONDITION (a client never sees OK without StreamEnd).
//  * A load error is reported in order: every layer before it still goes
//    out, then the call ends with that error.
//  * Idle timeout: a started session that holds leases (or has a write the
//    client does not read) and makes no progress (release, read, start) for
//    `idle_timeout` ends with DEADLINE_EXCEEDED (a stuck write is aborted).
//  * Every lease of the call is dropped when its final status is decided;
//    a load that completes after that drops its lease at once.
#ifndef BIGSMALL_DAEMON_SESSION_H_
#define BIGSMALL_DAEMON_SESSION_H_

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "bigsmall/v1/bigsmall.pb.h"

namespace bigsmall::daemon {

// One leased layer, as the core holds it (LayerCache::Lease in the daemon).
class SessionLease {
 public:
  virtual ~SessionLease() = default;
};

// The daemon side of one call. Lives as long as the core (load callbacks
// may outlive the gRPC call). May be called from any thread, never with the
// core's lock held.
class SessionEnv {
 public:
  virtual ~SessionEnv() = default;
  struct Begun {
    int32_t num_layers = 0;
    bool has_non_layer = false;
    uint32_t window = 0;
  };
  // Looks up the model, checks the window and admits the session against
  // the daemon's limits. After success, End() is called exactly once, when
  // the call's status is decided.
  virtual absl::StatusOr<Begun> Begin(const v1::StartStream& start) = 0;
  virtual void End() = 0;
  using AcquireDone =
      std::function<void(absl::StatusOr<std::unique_ptr<SessionLease>> lease, bool hit)>;
  // Leases `layer`; `done` runs once, maybe inline, maybe on another thread.
  virtual void Acquire(int32_t layer, AcquireDone done) = 0;
  virtual void Prefetch(int32_t layer) = 0;
  // The handle for a layer about to be sent.
  virtual void FillHandle(int32_t layer, const SessionLease& lease, bool hit,
                          v1::LayerHandle* handle) = 0;
};

// The call. Called by one thread at a time, never with the core's lock held;
// nothing is called after Finish.
class SessionSink {
 public:
  virtual ~SessionSink() = default;
  // Starts writing `response` (a handle or StreamEnd); WriteDone follows.
  virtual void Write(v1::SessionResponse response) = 0;
  virtual void Finish(const absl::Status& status) = 0;
  // Cancels the call (a write the client does not read); WriteDone(false)
  // and Cancel follow.
  virtual void Abort() = 0;
};

struct SessionOptions {
  uint32_t prefetch = 2;  // layers read ahead of the window
  std::chrono::steady_clock::duration idle_timeout{};  // zero: none
  std::function<std::chrono::steady_clock::time_point()> now = [] {
    return std::chrono::steady_clock::now();
  };
};

class SessionCore : public std::enable_shared_from_this<SessionCore> {
 public:
  SessionCore(std::shared_ptr<SessionEnv> env, SessionSink* sink, SessionOptions options);
  ~SessionCore();

  // Events. Each returns whether the call should keep reading requests.
  bool OnRequest(const v1::SessionRequest& request);
  void OnHalfClose();
  void OnCancel();
  void OnWriteDone(bool ok);
  // Ends the call if it has been idle too long (see the rules above).
  void CheckIdle();
  // The call is over (OnDone): the sink is gone; every lease is dropped.
  void OnDone();

  // For tests and stats.
  struct State {
    bool started = false;
    bool finished = false;
    uint32_t window = 0;
    uint32_t held = 0;     // sent, unreleased
    uint32_t ready = 0;    // loaded, unsent
    uint32_t pending = 0;  // loading
    uint32_t sent = 0;
    bool end_sent = false;
  };
  State state() const;

 private:
  struct Action {
    enum Kind { kWrite, kFinish, kAbort, kAcquire, kPrefetch } kind;
    v1::SessionResponse response;
    absl::Status status;
    int32_t layer = 0;
    size_t pos = 0;
  };
  absl::Status StartLocked(const v1::StartStream& start);
  absl::Status ReleaseLocked(const v1::Release& release);
  void OnAcquired(size_t pos, absl::StatusOr<std::unique_ptr<SessionLease>> lease, bool hit);
  // Plans loads and sends, decides the end. mu_ held.
  void PumpLocked();
  void FailLocked(const absl::Status& status);
  void FinishLocked(const absl::Status& status);
  void DropAllLocked();
  // Runs queued actions outside the lock (one thread at a time).
  void Run(std::unique_lock<std::mutex>& lock);

  const std::shared_ptr<SessionEnv> env_;
  const SessionOptions options_;
  mutable std::mutex mu_;
  SessionSink* sink_;  // null after OnDone
  bool started_ = false;
  bool begun_ = false;  // env_->Begin succeeded; End() owed
  bool half_closed_ = false;
  bool finish_queued_ = false;
  bool done_ = false;
  absl::Status error_;  // the final error, once decided
  std::vector<int32_t> order_;
  uint32_t window_ = 0;
  size_t next_acquire_ = 0;
  size_t next_send_ = 0;
  size_t prefetched_to_ = 0;
  uint32_t pending_ = 0;
  bool write_in_flight_ = false;
  bool end_sent_ = false;
  bool end_written_ = false;
  std::map<size_t, std::pair<std::unique_ptr<SessionLease>, bool>> ready_;  // pos -> lease, hit
  std::map<size_t, absl::Status> failed_;
  std::map<int32_t, std::unique_ptr<SessionLease>> held_;  // layer -> lease
  std::chrono::steady_clock::time_point last_progress_;
  std::deque<Action> actions_;
  std::vector<std::unique_ptr<SessionLease>> drops_;
  bool running_ = false;
};

}  // namespace bigsmall::daemon

#endif  // BIGSMALL_DAEMON_SESSION_H_
