// The admin calls of bigsmall.v1.BigSmall (ListModels, Evict, GetStats:
// BigSmallService members defined in daemon/admin.cc), and the two reactor
// helpers every unary call of the service uses.
#ifndef BIGSMALL_DAEMON_ADMIN_H_
#define BIGSMALL_DAEMON_ADMIN_H_

#include <atomic>
#include <cstdint>

#include "daemon/tsan_annotations.h"
#include "grpcpp/support/server_callback.h"

namespace bigsmall::daemon {

// Hands a reactor's state from the thread that starts a gRPC operation to
// the thread that runs its callback. gRPC orders the two, but inside
// uninstrumented libraries ThreadSanitizer cannot see it; Mark() on both
// sides (after construction, before every StartRead/StartWrite/Finish, and
// first in every callback) makes the order visible. An annotation, not a
// mutex: a mutex member's own first use in the callback thread would race
// with the allocation of the reactor. No-op outside TSan builds.
class Handoff {
 public:
  void Mark() {
    BIGSMALL_TSAN_ACQUIRE(this);
    BIGSMALL_TSAN_RELEASE(this);
  }
};

// A unary reactor that counts its call in `calls_in_flight` until OnDone,
// i.e. until the response and status have left (or the call was cancelled).
// Reply() is the one way to finish it.
class CountedUnaryReactor final : public grpc::ServerUnaryReactor {
 public:
  explicit CountedUnaryReactor(std::atomic<int32_t>* counter) : counter_(counter) {
    counter_->fetch_add(1);
    handoff_.Mark();
  }
  void Reply(const grpc::Status& status) {
    handoff_.Mark();
    Finish(status);  // OnDone may delete this: nothing after
  }
  void OnDone() override {
    handoff_.Mark();
    counter_->fetch_sub(1);
    delete this;
  }

 private:
  std::atomic<int32_t>* const counter_;
  Handoff handoff_;
};

}  // namespace bigsmall::daemon

#endif  // BIGSMALL_DAEMON_ADMIN_H_
