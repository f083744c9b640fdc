#include "daemon/session.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace bigsmall::daemon {

SessionCore::SessionCore(std::shared_ptr<SessionEnv> env, SessionSink* sink,
                         SessionOptions options)
    : env_(std::move(env)), options_(std::move(options)), sink_(sink) {
  last_progress_ = options_.now();
}

SessionCore::~SessionCore() {
  // Normally OnDone ran; a core dropped without a call still owes End().
  if (begun_) env_->End();
}

bool SessionCore::OnRequest(const v1::SessionRequest& request) {
  std::unique_lock<std::mutex> lock(mu_);
  if (finish_queued_ || done_) return false;
  absl::Status st;
  if (half_closed_) {
    st = absl::InvalidArgumentError("message after half-close");
  } else if (request.has_start()) {
    st = StartLocked(request.start());
  } else if (request.has_release()) {
    st = ReleaseLocked(request.release());
  } else {
    st = absl::InvalidArgumentError("empty session message");
  }
  if (!st.ok()) FailLocked(st);
  last_progress_ = options_.now();
  PumpLocked();
  bool keep_reading = !finish_queued_ && error_.ok();
  Run(lock);
  return keep_reading;
}

void SessionCore::OnHalfClose() {
  std::unique_lock<std::mutex> lock(mu_);
  half_closed_ = true;
  if (!started_ && error_.ok() && !finish_queued_) {
    FailLocked(absl::FailedPreconditionError("the client half-closed before StartStream"));
  }
  PumpLocked();
  Run(lock);
}

void SessionCore::OnCancel() {
  std::unique_lock<std::mutex> lock(mu_);
  FailLocked(absl::CancelledError("cancelled by the client"));
  PumpLocked();
  Run(lock);
}

void SessionCore::OnWriteDone(bool ok) {
  std::unique_lock<std::mutex> lock(mu_);
  write_in_flight_ = false;
  if (ok) {
    if (end_sent_) end_written_ = true;
    last_progress_ = options_.now();
  } else {
    FailLocked(absl::CancelledError("the client's stream broke"));
  }
  PumpLocked();
  Run(lock);
}

void SessionCore::CheckIdle() {
  std::unique_lock<std::mutex> lock(mu_);
  if (!started_ || finish_queued_ || done_ || !error_.ok()) return;
  if (options_.idle_timeout <= std::chrono::steady_clock::duration::zero()) return;
  bool holding = !held_.empty() || !ready_.empty() || write_in_flight_;
  if (!holding) return;
  auto idle = options_.now() - last_progress_;
  if (idle < options_.idle_timeout) return;
  FailLocked(absl::DeadlineExceededError(absl::StrCat(
      "session idle for ",
      std::chrono::duration_cast<std::chrono::seconds>(idle).count(), " s holding ",
      held_.size() + ready_.size(), " leases (session_idle_seconds)")));
  if (write_in_flight_) actions_.push_back(Action{Action::kAbort});
  PumpLocked();
  Run(lock);
}

void SessionCore::OnDone() {
  std::unique_lock<std::mutex> lock(mu_);
  done_ = true;
  sink_ = nullptr;
  if (!finish_queued_) {
    // gRPC ended the call without our Finish (cannot happen with a
    // well-behaved adapter): still settle it.
    finish_queued_ = true;
    DropAllLocked();
  }
  Run(lock);
}

SessionCore::State SessionCore::state() const {
  std::lock_guard<std::mutex> lock(mu_);
  State s;
  s.started = started_;
  s.finished = finish_queued_;
  s.window = window_;
  s.held = static_cast<uint32_t>(held_.size());
  s.ready = static_cast<uint32_t>(ready_.size());
  s.pending = pending_;
  s.sent = static_cast<uint32_t>(next_send_);
  s.end_sent = end_sent_;
  return s;
}

absl::Status SessionCore::StartLocked(const v1::StartStream& start) {
  if (started_) return absl::FailedPreconditionError("session already started");
  started_ = true;
  absl::StatusOr<SessionEnv::Begun> begun = env_->Begin(start);
  if (!begun.ok()) return begun.status();
  begun_ = true;
  const int32_t n = begun->num_layers;
  const int32_t from = start.from_layer();
  const int32_t to = start.to_layer() == 0 ? n : start.to_layer();
  if (from < 0 || from > n) {
    return absl::OutOfRangeError(
        absl::StrCat("from_layer ", from, " is out of range: the model has ", n, " layers"));
  }
  if (to < from || to > n) {
    return absl::OutOfRangeError(
        absl::StrCat("to_layer ", to, " is out of range [", from, ", ", n, "]"));
  }
  window_ = begun->window;
  if (window_ == 0) return absl::InvalidArgumentError("window must be >= 1");
  if (start.include_non_layer() && begun->has_non_layer) order_.push_back(-1);
  for (int32_t i = from; i < to; ++i) order_.push_back(i);
  return absl::OkStatus();
}

absl::Status SessionCore::ReleaseLocked(const v1::Release& release) {
  if (!started_) return absl::FailedPreconditionError("release before start");
  for (int32_t layer : release.layers()) {
    auto it = held_.find(layer);
    if (it == held_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("release of layer ", layer, ", which this session does not hold"));
    }
    drops_.push_back(std::move(it->second));
    held_.erase(it);
  }
  return absl::OkStatus();
}

void SessionCore::OnAcquired(size_t pos, absl::StatusOr<std::unique_ptr<SessionLease>> lease,
                             bool hit) {
  std::unique_lock<std::mutex> lock(mu_);
  --pending_;
  if (finish_queued_ || done_ || !error_.ok()) {
    if (lease.ok()) drops_.push_back(std::move(*lease));
  } else if (lease.ok()) {
    ready_.emplace(pos, std::make_pair(std::move(*lease), hit));
  } else {
    // Reported in order: the layers before this one still go out first.
    failed_.emplace(pos, lease.status());
  }
  PumpLocked();
  Run(lock);
}

void SessionCore::FailLocked(const absl::Status& status) {
  if (error_.ok() && !finish_queued_) error_ = status;
}

void SessionCore::PumpLocked() {
  if (finish_queued_) return;
  if (!error_.ok()) {
    // Decided: no more layers. Unsent leases go now; sent ones when the
    // call finishes, once no write is out (a handle in flight stays valid).
    for (auto& [pos, lease] : ready_) drops_.push_back(std::move(lease.first));
    ready_.clear();
    if (!write_in_flight_) FinishLocked(error_);
    return;
  }
  if (!started_) return;
  // Loads, while the window has room and nothing failed.
  while (failed_.empty() && next_acquire_ < order_.size() &&
         held_.size() + ready_.size() + pending_ < window_) {
    actions_.push_back(Action{Action::kAcquire, {}, {}, order_[next_acquire_], next_acquire_});
    ++pending_;
    ++next_acquire_;
  }
  // Read and decode ahead of the window.
  if (failed_.empty()) {
    size_t ahead = std::min(order_.size(), next_acquire_ + options_.prefetch);
    for (size_t pos = std::max(prefetched_to_, next_acquire_); pos < ahead; ++pos) {
      actions_.push_back(Action{Action::kPrefetch, {}, {}, order_[pos], pos});
    }
    prefetched_to_ = std::max(prefetched_to_, ahead);
  }
  if (write_in_flight_) return;
  if (next_send_ < order_.size()) {
    auto failed = failed_.find(next_send_);
    if (failed != failed_.end()) {
      error_ = failed->second;
      DropAllLocked();
      FinishLocked(error_);
      return;
    }
    auto ready = ready_.find(next_send_);
    if (ready != ready_.end()) {
      const int32_t layer = order_[next_send_];
      Action write{Action::kWrite};
      env_->FillHandle(layer, *ready->second.first, ready->second.second,
                       write.response.mutable_layer());
      held_.emplace(layer, std::move(ready->second.first));
      ready_.erase(ready);
      ++next_send_;
      write_in_flight_ = true;
      actions_.push_back(std::move(write));
      return;
    }
    if (half_closed_ && next_send_ >= next_acquire_ &&
        held_.size() + ready_.size() + pending_ >= window_) {
      // No release can come: the rest can never be sent.
      error_ = absl::FailedPreconditionError(absl::StrCat(
          "the client half-closed holding ", held_.size(), " unreleased layers (the window) with ",
          order_.size() - next_send_, " of ", order_.size(), " layers still to send"));
      DropAllLocked();
      FinishLocked(error_);
    }
    return;
  }
  if (!end_sent_) {
    Action end{Action::kWrite};
    end.response.mutable_end()->set_layers_sent(static_cast<uint32_t>(next_send_));
    end_sent_ = true;
    write_in_flight_ = true;
    actions_.push_back(std::move(end));
    return;
  }
  if (end_written_ && half_closed_) {
    DropAllLocked();
    FinishLocked(absl::OkStatus());
  }
}

void SessionCore::DropAllLocked() {
  for (auto& [layer, lease] : held_) drops_.push_back(std::move(lease));
  held_.clear();
  for (auto& [pos, lease] : ready_) drops_.push_back(std::move(lease.first));
  ready_.clear();
  failed_.clear();
}

void SessionCore::FinishLocked(const absl::Status& status) {
  if (finish_queued_) return;
  finish_queued_ = true;
  DropAllLocked();
  actions_.push_back(Action{Action::kFinish, {}, status});
}

void SessionCore::Run(std::unique_lock<std::mutex>& lock) {
  if (running_) return;  // the running thread picks the new actions up
  running_ = true;
  while (!actions_.empty() || !drops_.empty()) {
    std::deque<Action> actions;
    actions.swap(actions_);
    std::vector<std::unique_ptr<SessionLease>> drops;
    drops.swap(drops_);
    // End() as soon as the status is decided (stats, unload), once.
    bool end = false;
    if (finish_queued_ && begun_) {
      begun_ = false;
      end = true;
    }
    SessionSink* sink = sink_;
    lock.unlock();
    drops.clear();
    if (end) env_->End();
    auto self = shared_from_this();
    for (Action& a : actions) {
      switch (a.kind) {
        case Action::kWrite:
          if (sink != nullptr) sink->Write(std::move(a.response));
          break;
        case Action::kFinish:
          if (sink != nullptr) sink->Finish(a.status);
          sink = nullptr;  // nothing after Finish
          break;
        case Action::kAbort:
          if (sink != nullptr) sink->Abort();
          break;
        case Action::kAcquire: {
          size_t pos = a.pos;
          env_->Acquire(a.layer, [self, pos](absl::StatusOr<std::unique_ptr<SessionLease>> lease,
                                             bool hit) {
            self->OnAcquired(pos, std::move(lease), hit);
          });
          break;
        }
        case Action::kPrefetch:
          env_->Prefetch(a.layer);
          break;
      }
    }
    lock.lock();
  }
  running_ = false;
}

}  // namespace bigsmall::daemon
