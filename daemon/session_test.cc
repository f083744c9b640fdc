// SessionCore without gRPC: the protocol rules of session.h, one case each,
// then a property test over random interleavings of start, release,
// half-close, cancel, idle checks, load completions (in random order, with
// injected errors) and write completions.
#include "daemon/session.h"

#include <algorithm>
#include <random>
#include <set>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace bigsmall::daemon {
namespace {

using Clock = std::chrono::steady_clock;

struct World;

class FakeLease final : public SessionLease {
 public:
  FakeLease(World* w, int32_t layer);
  ~FakeLease() override;
  int32_t layer;

 private:
  World* world_;
};

struct World {
  // Model and daemon.
  int32_t num_layers = 6;
  bool has_non_layer = true;
  uint32_t window = 3;
  absl::Status begin_error;
  int begins = 0, ends = 0;
  int live_leases = 0;
  int max_live = 0;
  struct Pending {
    int32_t layer;
    SessionEnv::AcquireDone done;
  };
  std::vector<Pending> pending;
  std::vector<int32_t> prefetched;
  // Call.
  std::vector<v1::SessionResponse> writes;  // in order
  bool write_outstanding = false;
  int finishes = 0;
  absl::Status final_status;
  int aborts = 0;
  Clock::time_point now = Clock::time_point() + std::chrono::hours(1);
};

FakeLease::FakeLease(World* w, int32_t l) : layer(l), world_(w) {
  ++world_->live_leases;
  world_->max_live = std::max(world_->max_live, world_->live_leases);
}
FakeLease::~FakeLease() { --world_->live_leases; }

class FakeEnv final : public SessionEnv {
 public:
  explicit FakeEnv(World* w) : w_(w) {}
  absl::StatusOr<Begun> Begin(const v1::StartStream& start) override {
    if (!w_->begin_error.ok()) return w_->begin_error;
    ++w_->begins;
    return Begun{w_->num_layers, w_->has_non_layer, start.window() == 0 ? w_->window : start.window()};
  }
  void End() override { ++w_->ends; }
  void Acquire(int32_t layer, AcquireDone done) override {
    w_->pending.push_back({layer, std::move(done)});
  }
  void Prefetch(int32_t layer) override { w_->prefetched.push_back(layer); }
  void FillHandle(int32_t layer, const SessionLease& lease, bool hit,
                  v1::LayerHandle* handle) override {
    EXPECT_EQ(static_cast<const FakeLease&>(lease).layer, layer);
    handle->mutable_layer()->set_index(layer);
    handle->set_cache_hit(hit);
  }

 private:
  World* w_;
};

class FakeSink final : public SessionSink {
 public:
  explicit FakeSink(World* w) : w_(w) {}
  void Write(v1::SessionResponse response) override {
    EXPECT_FALSE(w_->write_outstanding) << "two writes in flight";
    EXPECT_EQ(w_->finishes, 0) << "write after Finish";
    w_->write_outstanding = true;
    w_->writes.push_back(std::move(response));
  }
  void Finish(const absl::Status& status) override {
    EXPECT_FALSE(w_->write_outstanding) << "Finish with a write in flight";
    ++w_->finishes;
    w_->final_status = status;
  }
  void Abort() override { ++w_->aborts; }

 private:
  World* w_;
};

struct Call {
  World w;
  std::shared_ptr<SessionCore> core;
  FakeSink sink{&w};
  explicit Call(std::chrono::seconds idle = std::chrono::seconds(0), uint32_t prefetch = 2) {
    SessionOptions options;
    options.prefetch = prefetch;
    options.idle_timeout = idle;
    options.now = [this] { return w.now; };
    core = std::make_shared<SessionCore>(std::make_shared<FakeEnv>(&w), &sink, options);
  }
  bool Start(int32_t from, int32_t to, uint32_t window, bool non_layer) {
    v1::SessionRequest r;
    r.mutable_start()->set_model_id("m");
    r.mutable_start()->set_from_layer(from);
    r.mutable_start()->set_to_layer(to);
    r.mutable_start()->set_window(window);
    r.mutable_start()->set_include_non_layer(non_layer);
    return core->OnRequest(r);
  }
  bool Release(int32_t layer) {
    v1::SessionRequest r;
    r.mutable_release()->add_layers(layer);
    return core->OnRequest(r);
  }
  // Completes the oldest outstanding write.
  void WriteDone(bool ok = true) {
    ASSERT_TRUE(w.write_outstanding);
    w.write_outstanding = false;
    core->OnWriteDone(ok);
  }
  void CompleteLoad(size_t i, bool ok = true) {
    World::Pending p = std::move(w.pending[i]);
    w.pending.erase(w.pending.begin() + static_cast<long>(i));
    if (ok) {
      p.done(std::unique_ptr<SessionLease>(new FakeLease(&w, p.layer)), false);
    } else {
      p.done(absl::DataLossError(absl::StrCat("layer ", p.layer, " is corrupt")), false);
    }
  }
  void CompleteAllLoads() {
    while (!w.pending.empty()) CompleteLoad(0);
  }
  std::vector<int32_t> SentLayers() const {
    std::vector<int32_t> out;
    for (const auto& r : w.writes) {
      if (r.has_layer()) out.push_back(r.layer().layer().index());
    }
    return out;
  }
  bool EndSent() const { return !w.writes.empty() && w.writes.back().has_end(); }
};

TEST(SessionCoreTest, EmptyRangesEndWithStreamEnd) {
  // from == num_layers, and from == to: StreamEnd at once (it used to be
  // queued and never written).
  for (auto [from, to] : {std::pair{6, 0}, std::pair{3, 3}}) {
    Call c;
    ASSERT_TRUE(c.Start(from, to, 0, false));
    ASSERT_TRUE(c.EndSent()) << from << ".." << to;
    EXPECT_EQ(c.w.writes.back().end().layers_sent(), 0u);
    c.WriteDone();
    EXPECT_EQ(c.w.finishes, 0);  // open until the client half-closes
    c.core->OnHalfClose();
    EXPECT_EQ(c.w.finishes, 1);
    EXPECT_TRUE(c.w.final_status.ok()) << c.w.final_status;
    c.core->OnDone();
    EXPECT_EQ(c.w.begins, c.w.ends);
  }
}

TEST(SessionCoreTest, HalfCloseAfterStartSendsEverythingTheWindowAllows) {
  {  // window >= layers: every layer, StreamEnd, OK.
    Call c;
    c.Start(0, 0, 8, false);
    c.core->OnHalfClose();
    while (!c.EndSent()) {
      if (c.w.write_outstanding) c.WriteDone();
      else c.CompleteAllLoads();
    }
    c.WriteDone();
    EXPECT_EQ(c.SentLayers(), (std::vector<int32_t>{0, 1, 2, 3, 4, 5}));
    EXPECT_EQ(c.w.finishes, 1);
    EXPECT_TRUE(c.w.final_status.ok());
    EXPECT_EQ(c.w.live_leases, 0);
  }
  {  // window 2 < 6 layers: two layers, then FAILED_PRECONDITION, no StreamEnd.
    Call c;
    c.Start(0, 0, 2, false);
    c.core->OnHalfClose();
    for (int i = 0; i < 10 && c.w.finishes == 0; ++i) {
      if (c.w.write_outstanding) c.WriteDone();
      else c.CompleteAllLoads();
    }
    EXPECT_EQ(c.SentLayers(), (std::vector<int32_t>{0, 1}));
    EXPECT_FALSE(c.EndSent());
    ASSERT_EQ(c.w.finishes, 1);
    EXPECT_EQ(c.w.final_status.code(), absl::StatusCode::kFailedPrecondition)
        << c.w.final_status;
    EXPECT_EQ(c.w.live_leases, 0);
  }
}

TEST(SessionCoreTest, LoadErrorsAreReportedInOrder) {
  Call c;
  c.Start(0, 0, 4, false);
  ASSERT_EQ(c.w.pending.size(), 4u);
  c.CompleteLoad(2, /*ok=*/false);  // layer 2 fails first
  c.CompleteLoad(0);
  c.WriteDone();
  c.CompleteLoad(0);  // layer 1
  c.WriteDone();
  EXPECT_EQ(c.SentLayers(), (std::vector<int32_t>{0, 1}));
  ASSERT_EQ(c.w.finishes, 1);
  EXPECT_EQ(c.w.final_status.code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(c.w.live_leases, 0);
  c.CompleteAllLoads();  // a late load drops its lease at once
  EXPECT_EQ(c.w.live_leases, 0);
}

TEST(SessionCoreTest, IdleSessionHoldingLeasesEnds) {
  Call c(std::chrono::seconds(30));
  c.Start(0, 0, 2, false);
  c.CompleteAllLoads();
  c.WriteDone();
  c.WriteDone();  // holds layers 0 and 1, releases nothing
  c.w.now += std::chrono::seconds(29);
  c.core->CheckIdle();
  EXPECT_EQ(c.w.finishes, 0);
  c.w.now += std::chrono::seconds(2);
  c.core->CheckIdle();
  ASSERT_EQ(c.w.finishes, 1);
  EXPECT_EQ(c.w.final_status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(c.w.live_leases, 0);
}

TEST(SessionCoreTest, IdleSessionWithAStuckWriteIsAborted) {
  Call c(std::chrono::seconds(30));
  c.Start(0, 0, 2, false);
  c.CompleteAllLoads();  // write of layer 0 outstanding, never read
  c.w.now += std::chrono::seconds(31);
  c.core->CheckIdle();
  EXPECT_EQ(c.w.aborts, 1);
  EXPECT_EQ(c.w.finishes, 0);
  c.core->OnCancel();
  c.WriteDone(false);
  ASSERT_EQ(c.w.finishes, 1);
  EXPECT_EQ(c.w.final_status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(c.w.live_leases, 0);
}

TEST(SessionCoreTest, ProtocolErrors) {
  {
    Call c;
    EXPECT_FALSE(c.Release(0));
    EXPECT_EQ(c.w.final_status.code(), absl::StatusCode::kFailedPrecondition);
  }
  {
    Call c;
    c.Start(0, 0, 2, false);
    EXPECT_FALSE(c.Release(5));
    c.CompleteAllLoads();
    EXPECT_EQ(c.w.final_status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(c.w.live_leases, 0);
  }
  {
    Call c;
    EXPECT_FALSE(c.Start(7, 0, 2, false));
    EXPECT_EQ(c.w.final_status.code(), absl::StatusCode::kOutOfRange);
    c.core->OnDone();
    EXPECT_EQ(c.w.begins, c.w.ends);
  }
  {
    Call c;
    c.w.begin_error = absl::ResourceExhaustedError("too many sessions");
    EXPECT_FALSE(c.Start(0, 0, 2, false));
    EXPECT_EQ(c.w.final_status.code(), absl::StatusCode::kResourceExhausted);
    EXPECT_EQ(c.w.ends, 0);
  }
}

// One random run; returns a description of the first broken rule, or "".
void RandomRun(uint32_t seed) {
  std::mt19937 rng(seed);
  auto chance = [&](double p) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; };
  auto pick = [&](size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng); };
  const bool idle = chance(0.2);
  Call c(idle ? std::chrono::seconds(10) : std::chrono::seconds(0),
         static_cast<uint32_t>(pick(3)));
  c.w.num_layers = static_cast<int32_t>(pick(7));
  c.w.has_non_layer = chance(0.5);
  const uint32_t window = static_cast<uint32_t>(1 + pick(4));
  const int32_t from = chance(0.1) ? c.w.num_layers + 1 : static_cast<int32_t>(pick(c.w.num_layers + 1));
  const int32_t to = chance(0.5) ? 0 : from + static_cast<int32_t>(pick(c.w.num_layers - std::min(from, c.w.num_layers) + 1));
  const bool non_layer = chance(0.5);
  const double load_error = chance(0.3) ? 0.15 : 0.0;
  if (chance(0.05)) c.w.begin_error = absl::ResourceExhaustedError("limit");
  std::vector<int32_t> expected_order;
  if (non_layer && c.w.has_non_layer) expected_order.push_back(-1);
  for (int32_t i = from; i < (to == 0 ? c.w.num_layers : to); ++i) expected_order.push_back(i);

  std::set<int32_t> held;  // received by the client, not released
  bool half_closed = false, cancelled = false, started = false, done = false;
  size_t received = 0;
  bool end_received = false;
  auto check = [&] {
    SCOPED_TRACE(absl::StrCat("seed ", seed));
    ASSERT_LE(c.w.finishes, 1);
    if (started) {
      ASSERT_LE(c.w.live_leases, static_cast<int>(window)) << "window broken";
    }
    if (c.w.finishes == 1) {
      ASSERT_EQ(c.w.live_leases, 0) << "a lease outlived its call";
    }
    std::vector<int32_t> sent = c.SentLayers();
    ASSERT_LE(sent.size(), expected_order.size());
    for (size_t i = 0; i < sent.size(); ++i) ASSERT_EQ(sent[i], expected_order[i]) << "out of order";
    for (size_t i = 0; i < c.w.writes.size(); ++i) {
      if (c.w.writes[i].has_end()) {
        ASSERT_EQ(i, c.w.writes.size() - 1) << "a write after StreamEnd";
        ASSERT_EQ(sent.size(), expected_order.size()) << "StreamEnd before every layer";
        ASSERT_EQ(c.w.writes[i].end().layers_sent(), sent.size());
      }
    }
    if (c.w.finishes == 1 && c.w.final_status.ok()) {
      ASSERT_TRUE(end_received) << "OK without StreamEnd";
    }
  };
  // The client receives a completed write.
  auto complete_write = [&](bool ok) {
    if (ok) {
      const v1::SessionResponse& r = c.w.writes[received++];
      if (r.has_layer()) held.insert(r.layer().layer().index());
      if (r.has_end()) end_received = true;
    }
    c.WriteDone(ok);
  };
  for (int step = 0; step < 60 && c.w.finishes == 0; ++step) {
    int what = static_cast<int>(pick(10));
    if (!started || (what == 0 && chance(0.1))) {
      started = true;
      if (!c.Start(from, to, window, non_layer) && c.w.finishes == 0 && !c.w.write_outstanding) {
        // Refused: Finish must already have been called.
        ADD_FAILURE() << "seed " << seed << ": a refused start did not finish";
      }
    } else if (what <= 3 && !c.w.pending.empty()) {
      c.CompleteLoad(pick(c.w.pending.size()), !chance(load_error));
    } else if (what <= 5 && c.w.write_outstanding) {
      complete_write(!chance(0.03));
    } else if (what == 6 && !held.empty() && !half_closed && !cancelled) {
      auto it = held.begin();
      std::advance(it, static_cast<long>(pick(held.size())));
      int32_t layer = *it;
      held.erase(it);
      c.Release(layer);
    } else if (what == 7 && !half_closed && !cancelled && chance(0.3)) {
      half_closed = true;
      c.core->OnHalfClose();
    } else if (what == 8 && chance(0.05) && !cancelled) {
      cancelled = true;
      c.core->OnCancel();
    } else if (what == 9) {
      c.w.now += std::chrono::seconds(pick(8));
      c.core->CheckIdle();
      if (c.w.aborts > 0 && !cancelled) {
        cancelled = true;
        c.core->OnCancel();
      }
    } else if (what == 0 && chance(0.02) && !half_closed) {
      c.Release(1000);  // not held: INVALID_ARGUMENT
    }
    check();
    if (::testing::Test::HasFatalFailure()) return;
  }
  // Drain like a well-behaved client (and gRPC): loads and writes complete,
  // everything received is released, then the client half-closes.
  for (int step = 0; step < 1000 && c.w.finishes == 0; ++step) {
    if (c.w.write_outstanding) {
      complete_write(!cancelled);
    } else if (!c.w.pending.empty()) {
      c.CompleteLoad(0, !chance(load_error));
    } else if (!held.empty() && !half_closed && !cancelled) {
      int32_t layer = *held.begin();
      held.erase(held.begin());
      c.Release(layer);
    } else if (!half_closed) {
      half_closed = true;
      c.core->OnHalfClose();
    } else if (!cancelled) {
      // Nothing left to drive: the call must have ended.
      break;
    }
    check();
    if (::testing::Test::HasFatalFailure()) return;
  }
  ASSERT_EQ(c.w.finishes, 1) << "seed " << seed << ": the call never finished";
  // gRPC: OnDone once every operation completed.
  while (c.w.write_outstanding) complete_write(false);
  c.core->OnDone();
  done = true;
  c.CompleteAllLoads();
  EXPECT_EQ(c.w.live_leases, 0) << "seed " << seed;
  EXPECT_EQ(c.w.begins, c.w.ends) << "seed " << seed;
  if (c.w.final_status.ok()) {
    EXPECT_TRUE(end_received) << "seed " << seed;
    EXPECT_EQ(c.SentLayers(), expected_order) << "seed " << seed;
  }
  (void)done;
}

TEST(SessionCoreTest, RandomInterleavingsKeepEveryRule) {
  const uint32_t seeds = 5000;
  for (uint32_t seed = 1; seed <= seeds; ++seed) {
    RandomRun(seed);
    if (::testing::Test::HasFailure()) break;
  }
}

}  // namespace
}  // namespace bigsmall::daemon
