#include "daemon/hub_models.h"

#include <fcntl.h>
#include <fnmatch.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "codec/status_macros.h"
#include "codec/status_util.h"
#include "daemon/metrics.h"
#include "hub/repo_ref.h"
#include "spdlog/spdlog.h"

namespace bigsmall::daemon {
namespace {

constexpr uint64_t kMaxTokenFileBytes = 4096;
// Bytes the fill reads and appends at a time; the stop flag is checked
// between chunks.
constexpr uint64_t kMinFillChunk = 256ull << 10;
constexpr uint64_t kMaxFillChunk = 16ull << 20;
// The fill's ranged GETs: a whole chunk in 4 parallel parts.
constexpr uint64_t kFillPartBytes = 4ull << 20;
constexpr int kFillConnections = 4;
// How long the fill waits for another process (huggingface_hub) that writes
// the same blob; after that the file stays remote for now.
constexpr int kFillLockTimeoutMs = 2000;
// A read waiting for the fill gives up (and fetches its range itself) when
// the fill's prefix has not grown for this long (the fill's own requests
// have the stall timeout and retries of HubConfig; this only bounds a fill
// that neither progresses nor fails).
constexpr auto kFillWaitStall = std::chrono::seconds(30);
// Ranges fetched by reads ahead of a fill are kept (at most this many bytes
// over all files) for the fill to append when it gets there, instead of
// fetching them again.
constexpr uint64_t kMaxDonatedBytes = 256ull << 20;
// Such a read that starts at most this far past the end of what the fill
// has or will have (its prefix, its chunk in flight, a range handed to it)
// starts there instead: the fill then has no small gaps left to fetch one
// request each (the .bs groups are 4 KiB-aligned: a few KB between them).
constexpr uint64_t kMaxGapBytes = 64ull << 10;

// The fill's .incomplete, opened for reading: always a prefix of the file,
// only ever appended to while the fill holds its lock.
struct PrefixFile {
  explicit PrefixFile(int f) : fd(f) {}
  ~PrefixFile() { ::close(fd); }
  PrefixFile(const PrefixFile&) = delete;
  PrefixFile& operator=(const PrefixFile&) = delete;
  const int fd;
};

absl::Status NotAllowed() { return absl::PermissionDeniedError(kHubNotAllowed); }

}  // namespace

// One file of one commit, shared by the open models' sources and the fill.
struct FileState {
  std::string repo_id;
  std::string commit;
  hub::RepoFile file;
  std::shared_ptr<const hub::RepoInfo> repo;
  std::mutex mu;
  std::string blob_path;  // set (under mu) once the cache holds the file
  std::atomic<bool> cached{false};
  bool queued = false;  // under Core::mu: in Core::queue
  bool busy = false;    // under Core::mu: a thread fills it
  // Fill() asked for it: a reader may start its fill (the reads of
  // OpenModel itself, headers and indexes, come before and are ranged GETs).
  std::atomic<bool> fill_wanted{false};

  // The fill's progress, under mu (readers wait on cv):
  enum class Phase { kIdle, kStarting, kFilling };
  Phase phase = Phase::kIdle;
  uint64_t prefix = 0;                      // bytes of the .incomplete written
  uint64_t fetching_to = 0;                 // the end of the chunk in flight
  std::shared_ptr<PrefixFile> prefix_file;  // set while kFilling
  // A Commit of this file failed its sha256: its .incomplete is never read
  // again by this daemon (reads are ranged GETs until the blob is cached).
  bool prefix_bad = false;
  // The ends of the ranges readers wait for (the fill fetches up to the
  // nearest one first: the pipeline's first layer before its read-ahead).
  std::multiset<uint64_t> waiting;
  // Ranges past the prefix that reads fetched themselves, by offset (not
  // overlapping): the fill appends them instead of fetching them again.
  std::map<uint64_t, std::vector<uint8_t>> donated;
  // Those reads while in flight (start -> end): the fill waits for a read
  // that covers its prefix, and ends its chunks where the next one starts.
  std::multimap<uint64_t, uint64_t> reading;
  std::condition_variable cv;
};

struct HubModels::Core {
  DaemonConfig config;
  Metrics* metrics = nullptr;
  std::vector<std::string> allow;  // normalised patterns
  // Reads for clients (no bandwidth limit) and the background fill
  // (hub_max_bandwidth): two clients, so that the fill's limit never slows
  // what a client waits for.
  std::unique_ptr<hub::HubClient> foreground;
  std::unique_ptr<hub::HubClient> background;

  std::mutex mu;
  std::condition_variable cv;
  bool stopping = false;
  std::map<std::string, std::shared_ptr<FileState>> files;  // "repo@commit/path"
  std::deque<std::shared_ptr<FileState>> queue;
  std::vector<std::thread> workers;
  // Files a reader waits for while every worker is busy: one more thread
  // fills them (one at a time; a read that finds it busy fetches its own
  // range).
  std::thread demand_worker;
  std::shared_ptr<FileState> demand;  // handed to demand_worker
  bool demand_busy = false;
  std::atomic<bool> stop_flag{false};

  std::atomic<uint64_t> donated_bytes{0};  // of every file's `donated`
  // Bytes the fills in progress still have to write (hub_min_free_bytes).
  std::atomic<uint64_t> fill_reserved{0};

  std::mutex stats_mu;
  hub::TransferStats published;  // of both clients, as already counted

  // Adds what both clients transferred since the last call to the metrics.
  void PublishTransfers() {
    if (metrics == nullptr) return;
    hub::TransferStats a = foreground->http().stats();
    hub::TransferStats b = background->http().stats();
    std::lock_guard<std::mutex> lock(stats_mu);
    const uint64_t bytes = a.bytes + b.bytes, retries = a.retries + b.retries;
    if (bytes > published.bytes) metrics->AddHubBytesFetched(bytes - published.bytes);
    if (retries > published.retries) metrics->AddHubRetries(retries - published.retries);
    published.bytes = std::max(published.bytes, bytes);
    published.retries = std::max(published.retries, retries);
  }
  void FetchError() {
    if (metrics != nullptr) metrics->AddHubFetchError();
  }

  std::shared_ptr<FileState> StateFor(const std::shared_ptr<const hub::RepoInfo>& repo,
                                      const hub::RepoFile& file) {
    const std::string key = absl::StrCat(repo->ref.repo_id, "@", repo->commit, "/", file.path);
    std::shared_ptr<FileState> state;
    {
      std::lock_guard<std::mutex> lock(mu);
      auto& slot = files[key];
      if (slot == nullptr) {
        slot = std::make_shared<FileState>();
        slot->repo_id = repo->ref.repo_id;
        slot->commit = repo->commit;
        slot->file = file;
        slot->repo = repo;
      }
      state = slot;
    }
    if (!state->cached.load(std::memory_order_acquire)) {
      // The snapshot link, or the blob itself (another commit, or another
      // tool, fetched the same contents; the fill links it).
      hub::HubCache& cache = foreground->cache();
      auto path = cache.SnapshotFile(state->repo_id, state->commit, file.path);
      if (!path.has_value() && cache.BlobFile(state->repo_id, file.etag()).has_value() &&
          cache.LinkSnapshot(state->repo_id, state->commit, file.path, file.etag()).ok()) {
        path = cache.SnapshotFile(state->repo_id, state->commit, file.path);
      }
      if (path.has_value()) MarkCached(*state, *path);
    }
    return state;
  }

  static void MarkCached(FileState& state, const std::string& path) {
    std::lock_guard<std::mutex> lock(state.mu);
    state.blob_path = path;
    state.cached.store(true, std::memory_order_release);
  }

  bool fill_enabled() const { return !workers.empty(); }

  // Starts filling `state` now for a reader (a queued file or one no worker
  // took); false when it cannot (the demand worker is busy, the daemon
  // stops, the file is cached or being filled: the caller looks again).
  bool DemandFill(const std::shared_ptr<FileState>& state) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (stopping || demand_busy || state->busy || state->cached.load()) return false;
      Claim(*state);
      demand_busy = true;
      demand = state;
    }
    cv.notify_all();
    return true;
  }
  // Under mu: `state` is being filled from now on.
  static void Claim(FileState& state) {
    state.busy = true;
    std::lock_guard<std::mutex> lock(state.mu);
    state.phase = FileState::Phase::kStarting;
  }

  void Worker();
  void DemandWorker();
  // Fills one claimed file, and logs and counts the outcome.
  void RunFill(const std::shared_ptr<FileState>& state);
  absl::Status FillOne(FileState& state);
};

namespace {

// One file of a Hub model: the cached blob once it is complete, else ranged
// GETs through HubClient::OpenRemote (opened on the first read that needs
// it, so a model served from the cache makes no request).
class HubFileSource final : public ByteSource {
 public:
  HubFileSource(std::shared_ptr<HubModels::Core> core, std::shared_ptr<FileState> state,
                IoOptions io)
      : core_(std::move(core)), state_(std::move(state)), io_(io),
        name_(absl::StrCat("hf://", state_->repo_id, "@", state_->commit, "/",
                           state_->file.path)) {}

  uint64_t size() const override { return state_->file.size; }
  std::string name() const override { return name_; }
  absl::Status ReadAt(uint64_t offset, absl::Span<uint8_t> out) override {
    return Read(offset, out, false);
  }
  absl::Status ReadBulk(uint64_t offset, absl::Span<uint8_t> out) override {
    return Read(offset, out, true);
  }

 private:
  absl::Status Read(uint64_t offset, absl::Span<uint8_t> out, bool bulk) {
    if (offset > size() || out.size() > size() - offset) {
      return absl::OutOfRangeError(absl::StrCat(name_, ": read [", offset, ", +", out.size(),
                                                ") past the end (", size(), " bytes)"));
    }
    if (ByteSource* local = Local()) {
      if (core_->metrics != nullptr) core_->metrics->AddHubCacheHit("read");
      return bulk ? local->ReadBulk(offset, out) : local->ReadAt(offset, out);
    }
    if (core_->fill_enabled()) {
      switch (FromFill(offset, out)) {
        case FillRead::kDone:
          return absl::OkStatus();
        case FillRead::kCached:
          if (ByteSource* local = Local()) {
            if (core_->metrics != nullptr) core_->metrics->AddHubCacheHit("read");
            return bulk ? local->ReadBulk(offset, out) : local->ReadAt(offset, out);
          }
          break;
        case FillRead::kRemote:
          break;
      }
    }
    auto remote = Remote();
    if (!remote.ok()) {
      core_->FetchError();
      return remote.status();
    }
    const bool donate = core_->fill_enabled() && state_->fill_wanted.load();
    std::multimap<uint64_t, uint64_t>::iterator reading;
    uint64_t start = offset;  // where the GET starts: `offset`, or a gap before it
    if (donate) {
      std::lock_guard<std::mutex> lock(state_->mu);
      uint64_t covered = std::max(state_->prefix, state_->fetching_to);
      auto next = state_->donated.upper_bound(offset);
      if (next != state_->donated.begin()) {
        auto prev = std::prev(next);
        covered = std::max(covered, prev->first + prev->second.size());
      }
      for (const auto& [a, b] : state_->reading) {
        if (a > offset) break;
        covered = std::max(covered, std::min(b, offset));
      }
      if (covered < offset && offset - covered <= kMaxGapBytes) start = covered;
      reading = state_->reading.emplace(start, offset + out.size());
    }
    absl::Status st;
    std::vector<uint8_t> with_gap;
    if (start < offset) {
      with_gap.resize(static_cast<size_t>(offset + out.size() - start));
      st = (*remote)->ReadBulk(start, absl::MakeSpan(with_gap));
      if (st.ok()) std::memcpy(out.data(), with_gap.data() + (offset - start), out.size());
    } else {
      st = (*remote)->ReadBulk(offset, out);
    }
    core_->PublishTransfers();
    if (donate) {
      {
        std::lock_guard<std::mutex> lock(state_->mu);
        if (st.ok()) {
          if (start < offset) {
            Donate(start, absl::MakeConstSpan(with_gap));
          } else {
            Donate(offset, out);
          }
        }
        state_->reading.erase(reading);
      }
      state_->cv.notify_all();
    }
    if (!st.ok()) {
      core_->FetchError();
      return absl::Status(st.code(), absl::StrCat(name_, ": ", st.message()));
    }
    return st;
  }

  // Keeps what a read fetched past the fill's prefix for the fill (which
  // then skips fetching it), within kMaxDonatedBytes. The bytes are not
  // verified here: the fill's sha256 at Commit checks them with the rest.
  // Under state_->mu.
  void Donate(uint64_t offset, absl::Span<const uint8_t> bytes) {
    FileState& s = *state_;
    if (!s.fill_wanted.load() || s.cached.load() || s.prefix_bad) return;
    uint64_t start = std::max(offset, s.prefix);
    const uint64_t end = offset + bytes.size();
    if (start >= end) return;
    // Not overlapping what is already kept: the part before the next range
    // (after the previous one).
    auto next = s.donated.lower_bound(start);
    if (next != s.donated.begin()) {
      auto prev = std::prev(next);
      start = std::max(start, prev->first + prev->second.size());
    }
    uint64_t stop = end;
    if (next != s.donated.end()) stop = std::min(stop, next->first);
    if (start >= stop) return;
    const uint64_t n = stop - start;
    if (core_->donated_bytes.fetch_add(n) + n > kMaxDonatedBytes) {
      core_->donated_bytes.fetch_sub(n);
      return;
    }
    s.donated.emplace(start, std::vector<uint8_t>(bytes.begin() + (start - offset),
                                                  bytes.begin() + (stop - offset)));
  }

  enum class FillRead { kDone, kCached, kRemote };

  // Reads [offset, offset + out.size()) from the fill's .incomplete when the
  // fill has written it, or will soon: a read at most hub_read_ahead past
  // the prefix waits for it (the fill then fetches up to the read's end at
  // full speed). A file no thread fills yet is started for this reader.
  // kRemote: fetch the range directly (far ahead, no fill, the fill failed
  // or stalled, a corrupt download before); kCached: the blob is complete.
  FillRead FromFill(uint64_t offset, absl::Span<uint8_t> out) {
    FileState& s = *state_;
    const uint64_t end = offset + out.size();
    std::unique_lock<std::mutex> lock(s.mu);
    if (s.prefix_bad) return FillRead::kRemote;
    if (s.phase == FileState::Phase::kIdle) {
      if (!s.fill_wanted.load()) return FillRead::kRemote;
      lock.unlock();
      core_->DemandFill(state_);  // or a worker has it by now
      lock.lock();
      if (s.phase == FileState::Phase::kIdle) {
        return s.cached.load() ? FillRead::kCached : FillRead::kRemote;
      }
    }
    bool registered = false;
    uint64_t seen = s.prefix;
    auto deadline = std::chrono::steady_clock::now() + kFillWaitStall;
    FillRead result = FillRead::kRemote;
    std::shared_ptr<PrefixFile> file;
    while (true) {
      if (s.cached.load()) {
        result = FillRead::kCached;
        break;
      }
      if (s.prefix_bad || s.phase == FileState::Phase::kIdle) break;
      if (s.phase == FileState::Phase::kFilling) {
        if (s.prefix_file != nullptr && end <= s.prefix) {
          file = s.prefix_file;
          break;
        }
        // Far ahead: neither in the chunk in flight nor within the
        // read-ahead bound.
        if (s.prefix_file == nullptr ||
            (offset >= s.fetching_to && offset > s.prefix + core_->config.hub_read_ahead)) {
          break;
        }
        if (!registered) {
          s.waiting.insert(end);
          registered = true;
        }
      }
      if (s.prefix != seen) {
        seen = s.prefix;
        deadline = std::chrono::steady_clock::now() + kFillWaitStall;
      }
      if (s.cv.wait_until(lock, deadline) == std::cv_status::timeout && s.prefix == seen) {
        spdlog::warn("{}: the cache fill made no progress for {} s; reading the range directly",
                     EscapeForLog(name_), kFillWaitStall.count());
        break;
      }
    }
    if (registered) s.waiting.erase(s.waiting.find(end));
    lock.unlock();
    if (file == nullptr) return result;
    size_t done = 0;
    while (done < out.size()) {
      ssize_t n = ::pread(file->fd, out.data() + done, out.size() - done,
                          static_cast<off_t>(offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        spdlog::warn("{}: reading the cache fill's .incomplete failed ({}); reading the range "
                     "directly", EscapeForLog(name_), n < 0 ? ErrnoToStatus(errno, "pread").ToString()
                                              : std::string("short read"));
        return FillRead::kRemote;
      }
      done += static_cast<size_t>(n);
    }
    if (core_->metrics != nullptr) core_->metrics->AddHubCacheHit("read");
    return FillRead::kDone;
  }

  // The cached blob's source once the cache holds the file, else null.
  ByteSource* Local() {
    if (!state_->cached.load(std::memory_order_acquire)) return nullptr;
    std::lock_guard<std::mutex> lock(mu_);
    if (local_ == nullptr && !local_failed_) {
      std::string path;
      {
        std::lock_guard<std::mutex> state_lock(state_->mu);
        path = state_->blob_path;
      }
      auto source = IoUringSource::Open(path, io_);
      if (source.ok() && (*source)->size() == size()) {
        local_ = std::move(*source);
      } else {
        local_failed_ = true;  // keep reading remotely
        spdlog::warn("{}: the cached blob cannot be read ({}); reading from the Hub", name_,
                     source.ok() ? "wrong size" : source.status().ToString());
      }
    }
    return local_.get();
  }

  absl::StatusOr<ByteSource*> Remote() {
    std::lock_guard<std::mutex> lock(mu_);
    if (remote_ == nullptr) {
      ASSIGN_OR_RETURN(remote_, core_->foreground->OpenRemote(*state_->repo, state_->file.path));
    }
    return remote_.get();
  }

  const std::shared_ptr<HubModels::Core> core_;
  const std::shared_ptr<FileState> state_;
  const IoOptions io_;
  const std::string name_;
  std::mutex mu_;
  // Set once, never replaced (reads use them without the lock).
  std::unique_ptr<ByteSource> local_;
  bool local_failed_ = false;
  std::unique_ptr<ByteSource> remote_;
};

std::string NormalizePattern(const std::string& pattern) {
  if (pattern == "*") return "*/*";
  if (pattern.find('/') == std::string::npos) return pattern + "/*";
  return pattern;
}

}  // namespace

ModelFiles SelectFiles(const hub::RepoInfo& repo) {
  ModelFiles out;
  for (const hub::RepoFile& f : repo.files) {
    if (f.path.find('/') != std::string::npos) continue;
    if (absl::EndsWith(f.path, ".bs")) out.shards.push_back(&f);
    if (f.path == kShardIndexName) out.index = &f;
  }
  std::sort(out.shards.begin(), out.shards.end(),
            [](const hub::RepoFile* a, const hub::RepoFile* b) { return a->path < b->path; });
  return out;
}

void HubModels::Core::Worker() {
  while (true) {
    std::shared_ptr<FileState> state;
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return stopping || !queue.empty(); });
      if (stopping) return;
      state = std::move(queue.front());
      queue.pop_front();
      state->queued = false;
      if (state->busy || state->cached.load()) continue;  // a reader's fill took it
      Claim(*state);
    }
    RunFill(state);
  }
}

void HubModels::Core::DemandWorker() {
  while (true) {
    std::shared_ptr<FileState> state;
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return stopping || demand != nullptr; });
      if (stopping && demand == nullptr) return;
      state = std::move(demand);
      demand = nullptr;
    }
    RunFill(state);
    std::lock_guard<std::mutex> lock(mu);
    demand_busy = false;
    if (stopping) return;
  }
}

void HubModels::Core::RunFill(const std::shared_ptr<FileState>& state) {
  absl::Status st = stop_flag.load() ? absl::CancelledError("the daemon is stopping")
                                     : FillOne(*state);
  {
    // Whatever happened, readers stop waiting for this fill.
    std::lock_guard<std::mutex> lock(state->mu);
    state->phase = FileState::Phase::kIdle;
    state->prefix_file.reset();
    for (const auto& [offset, bytes] : state->donated) donated_bytes.fetch_sub(bytes.size());
    state->donated.clear();
  }
  // A failed fill is not started again by the next read (each would fail
  // the same way): the reads fetch their ranges until Fill() asks again.
  if (!st.ok()) state->fill_wanted.store(false);
  state->cv.notify_all();
  PublishTransfers();
  if (!st.ok() && !stop_flag.load()) {
    FetchError();
    spdlog::warn("Hub fill of {}@{}/{}: {}", EscapeForLog(state->repo_id), state->commit,
                 EscapeForLog(state->file.path), st.ToString());
  } else if (st.ok()) {
    spdlog::info("Hub fill: {}@{}/{} is in the cache ({} bytes)", EscapeForLog(state->repo_id),
                 state->commit, EscapeForLog(state->file.path), state->file.size);
  }
  std::lock_guard<std::mutex> lock(mu);
  state->busy = false;
}

absl::Status HubModels::Core::FillOne(FileState& state) {
  hub::HubCache& cache = background->cache();
  const hub::RepoFile& file = state.file;
  const std::string etag = file.etag();
  // Room for the file (before anything is written: a resumed .incomplete
  // is counted whole), keeping hub_min_free_bytes free of the cache's file
  // system and counting what other fills still write: a file that does not
  // fit is not filled (its reads stay ranged GETs).
  const uint64_t need = cache.BlobFile(state.repo_id, etag).has_value() ? 0 : file.size;
  const uint64_t others = fill_reserved.fetch_add(need);
  struct Unreserve {
    std::atomic<uint64_t>& reserved;
    uint64_t bytes;
    ~Unreserve() { reserved.fetch_sub(bytes); }
  } unreserve{fill_reserved, need};
  if (need > 0) {
    struct statvfs fs;
    if (::statvfs(cache.root().c_str(), &fs) != 0) {
      return ErrnoToStatus(errno, absl::StrCat("statvfs ", EscapeForLog(cache.root())));
    }
    const uint64_t available = static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
    if (available < others + need || available - others - need < config.hub_min_free_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "not filled into the cache: ", need, " bytes to write, ", available,
          " bytes free in the cache's file system (", others,
          " promised to other fills), and hub_min_free_bytes ", config.hub_min_free_bytes,
          " must stay free; its layers are served by ranged GETs"));
    }
  }
  ASSIGN_OR_RETURN(auto writer,
                   cache.BeginBlob(state.repo_id, etag, file.size, kFillLockTimeoutMs));
  if (!writer->complete()) {
    uint64_t offset = writer->resume_offset();
    // Readers read the written prefix from the .incomplete (our lock keeps
    // every other writer out; it only grows until Commit renames it).
    const std::string incomplete =
        absl::StrCat(cache.RepoDir(state.repo_id), "/blobs/", etag, ".incomplete");
    int fd = ::open(incomplete.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    std::shared_ptr<PrefixFile> prefix_file;
    if (fd >= 0) {
      prefix_file = std::make_shared<PrefixFile>(fd);
    } else {
      spdlog::warn("Hub fill: {} cannot be read ({}); reads fetch their ranges",
                   EscapeForLog(incomplete), ErrnoToStatus(errno, "open").ToString());
    }
    {
      std::lock_guard<std::mutex> lock(state.mu);
      state.prefix = offset;
      if (!state.prefix_bad) state.prefix_file = std::move(prefix_file);
      state.phase = FileState::Phase::kFilling;
    }
    state.cv.notify_all();
    // Without a reader waiting: the background client (hub_max_bandwidth),
    // chunks growing from kMinFillChunk (a reader that comes waits for one
    // chunk at most). For a waiting reader: the foreground client (no
    // limit), up to the reader's end.
    std::unique_ptr<ByteSource> slow, fast;
    uint64_t limit_chunk = kMaxFillChunk;
    if (config.hub_max_bandwidth > 0) {
      limit_chunk =
          std::clamp<uint64_t>(config.hub_max_bandwidth / 2, kMinFillChunk, kMaxFillChunk);
    }
    uint64_t chunk = kMinFillChunk;
    std::vector<uint8_t> buffer;
    while (offset < file.size) {
      if (stop_flag.load()) return absl::CancelledError("the daemon is stopping");
      uint64_t want = 0;
      uint64_t next_donated = file.size;
      std::vector<uint8_t> given;  // a read's bytes at `offset`
      {
        std::unique_lock<std::mutex> lock(state.mu);
        // A read in flight over `offset` brings those bytes: wait for it
        // (it donates them, or fails and the fill fetches them).
        auto covering = [&] {
          for (const auto& [start, end] : state.reading) {
            if (start > offset) break;
            if (end > offset) return true;
          }
          return false;
        };
        while (covering() && !stop_flag.load()) {
          state.cv.wait_for(lock, std::chrono::milliseconds(100));
        }
        if (auto r = state.reading.upper_bound(offset); r != state.reading.end()) {
          next_donated = std::min(next_donated, r->first);
        }
        auto next = state.waiting.upper_bound(offset);
        if (next != state.waiting.end()) want = *next;
        // Ranges behind the prefix are of no use; one at the prefix is
        // appended as it is (from `offset` on).
        while (!state.donated.empty()) {
          auto first = state.donated.begin();
          const uint64_t first_end = first->first + first->second.size();
          if (first->first > offset) {
            next_donated = std::min(next_donated, first->first);
            break;
          }
          donated_bytes.fetch_sub(first->second.size());
          if (first_end > offset) {
            given = std::move(first->second);
            given.erase(given.begin(), given.begin() + (offset - first->first));
            state.donated.erase(first);
            break;
          }
          state.donated.erase(first);
        }
      }
      if (!given.empty()) {
        RETURN_IF_ERROR(writer->Append(given));
        offset += given.size();
        {
          std::lock_guard<std::mutex> lock(state.mu);
          state.prefix = offset;
        }
        state.cv.notify_all();
        continue;
      }
      const bool demanded = want > offset;
      uint64_t n = demanded ? std::clamp<uint64_t>(want - offset, kMinFillChunk, kMaxFillChunk)
                            : std::min(chunk, limit_chunk);
      n = std::min<uint64_t>(n, next_donated - offset);
      std::unique_ptr<ByteSource>& remote = demanded ? fast : slow;
      if (remote == nullptr) {
        ASSIGN_OR_RETURN(remote, (demanded ? foreground : background)
                                     ->OpenRemote(*state.repo, file.path));
      }
      {
        std::lock_guard<std::mutex> lock(state.mu);
        state.fetching_to = offset + n;
      }
      if (buffer.size() < n) buffer.resize(static_cast<size_t>(n));
      absl::Span<uint8_t> part(buffer.data(), static_cast<size_t>(n));
      RETURN_IF_ERROR(remote->ReadBulk(offset, part));
      RETURN_IF_ERROR(writer->Append(part));
      offset += n;
      if (!demanded) chunk = std::min(chunk * 2, kMaxFillChunk);
      {
        std::lock_guard<std::mutex> lock(state.mu);
        state.prefix = offset;
      }
      state.cv.notify_all();
      PublishTransfers();
    }
    // Checks the size and the sha256 (LFS) or git blob id: a corrupt
    // download is removed, never made visible; the open models' reads of
    // this file stop trusting its .incomplete.
    absl::Status committed = writer->Commit().status();
    if (!committed.ok()) {
      {
        std::lock_guard<std::mutex> lock(state.mu);
        state.prefix_bad = true;
        state.prefix_file.reset();
      }
      state.cv.notify_all();
      return committed;
    }
  }
  writer.reset();
  RETURN_IF_ERROR(cache.LinkSnapshot(state.repo_id, state.commit, file.path, etag));
  const hub::RepoRef& ref = state.repo->ref;
  if (!hub::IsCommitHash(ref.revision)) {
    RETURN_IF_ERROR(cache.WriteRef(state.repo_id, ref.revision, state.commit));
  }
  auto path = cache.SnapshotFile(state.repo_id, state.commit, file.path);
  if (!path.has_value()) {
    return absl::InternalError("the cache does not show the file just written");
  }
  MarkCached(state, *path);
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------

absl::StatusOr<hub::HubConfig> HubConfigFor(const DaemonConfig& config) {
  ASSIGN_OR_RETURN(hub::HubConfig hub, hub::HubConfigFromEnvironment());
  if (!config.hub_endpoint.empty()) {
    if (!absl::StartsWith(config.hub_endpoint, "http://") &&
        !absl::StartsWith(config.hub_endpoint, "https://")) {
      return absl::InvalidArgumentError("hub_endpoint must start with http:// or https://");
    }
    hub.endpoint = config.hub_endpoint;
    while (!hub.endpoint.empty() && hub.endpoint.back() == '/') hub.endpoint.pop_back();
  }
  if (!config.hub_token_file.empty()) {
    std::ifstream in(config.hub_token_file, std::ios::binary);
    if (!in) {
      return absl::InvalidArgumentError(absl::StrCat(
          "hub_token_file ", EscapeForLog(config.hub_token_file), " cannot be read"));
    }
    std::string text(kMaxTokenFileBytes + 1, '\0');
    in.read(text.data(), static_cast<std::streamsize>(text.size()));
    text.resize(static_cast<size_t>(in.gcount()));
    absl::string_view token = absl::StripAsciiWhitespace(text);
    if (token.empty() || text.size() > kMaxTokenFileBytes) {
      std::fill(text.begin(), text.end(), '\0');
      return absl::InvalidArgumentError(absl::StrCat(
          "hub_token_file ", EscapeForLog(config.hub_token_file),
          " must hold one token (at most ", kMaxTokenFileBytes, " bytes)"));
    }
    hub.token = hub::Secret(token);
    std::fill(text.begin(), text.end(), '\0');
  }
  if (!config.hub_cache.empty()) hub.cache_dir = config.hub_cache;
  if (config.hub_offline) hub.offline = true;
  return hub;
}

absl::Status CheckCacheIsTrusted(const std::string& cache_dir) {
  // The cache's directory (or, while it does not exist, the nearest one
  // that does: the cache makes the rest) and every directory above it.
  std::string path = cache_dir;
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  struct stat st;
  while (::stat(path.c_str(), &st) != 0) {
    if (errno != ENOENT && errno != ENOTDIR) {
      return ErrnoToStatus(errno, absl::StrCat("hub cache ", EscapeForLog(cache_dir)));
    }
    size_t slash = path.rfind('/');
    if (slash == std::string::npos || slash == 0) {
      path = slash == 0 ? "/" : ".";
      break;
    }
    path.resize(slash);
  }
  char resolved[PATH_MAX];
  if (::realpath(path.c_str(), resolved) == nullptr) {
    return ErrnoToStatus(errno, absl::StrCat("hub cache ", EscapeForLog(cache_dir)));
  }
  std::string dir = resolved;
  const uid_t me = ::geteuid();
  while (true) {
    if (::stat(dir.c_str(), &st) != 0) {
      return ErrnoToStatus(errno, absl::StrCat("hub cache ", EscapeForLog(dir)));
    }
    const bool others_write = (st.st_mode & S_IWOTH) != 0 && (st.st_mode & S_ISVTX) == 0;
    const bool mine_or_root = st.st_uid == me || st.st_uid == 0;
    // The cache's own directory must not be writable by others even with the
    // sticky bit (they could create a repo directory first); above it, a
    // sticky world-writable directory (/tmp) is fine.
    const bool own_dir_world_writable = dir == resolved && path == cache_dir &&
                                        (st.st_mode & S_IWOTH) != 0;
    if (!mine_or_root || others_write || own_dir_world_writable) {
      return absl::FailedPreconditionError(absl::StrCat(
          "hub cache ", EscapeForLog(cache_dir), ": ", EscapeForLog(dir),
          mine_or_root ? " is a directory others can write"
                       : " belongs to another user, who could change what the daemon serves",
          " (the daemon serves what its cache holds: give it a cache only it, root and its"
          " group can write; docs/OPERATIONS.md)"));
    }
    if (dir == "/") break;
    size_t slash = dir.rfind('/');
    dir = slash == 0 ? "/" : dir.substr(0, slash);
  }
  return absl::OkStatus();
}

bool IsHubModelName(const std::string& name) {
  return !name.empty() && name[0] != '/' && hub::LooksLikeHubName(name);
}

absl::StatusOr<std::unique_ptr<HubModels>> HubModels::Create(const DaemonConfig& config,
                                                             Metrics* metrics) {
  ASSIGN_OR_RETURN(hub::HubConfig hub, HubConfigFor(config));
  RETURN_IF_ERROR(CheckCacheIsTrusted(hub.cache_dir));
  auto core = std::make_shared<Core>();
  core->config = config;
  core->metrics = metrics;
  for (const std::string& p : config.hub_allow) {
    if (!ValidHubPattern(p)) {
      return absl::InvalidArgumentError(
          absl::StrCat("hub_allow: '", EscapeForLog(p, 64), "' is not a repo pattern"));
    }
    core->allow.push_back(NormalizePattern(p));
  }
  hub::HubConfig background = hub;
  background.max_bytes_per_second = config.hub_max_bandwidth;
  background.part_bytes = kFillPartBytes;
  background.parallel_connections = kFillConnections;
  spdlog::info("Hugging Face Hub models: endpoint {}, cache {}, token {}{}, allow {}",
               EscapeForLog(hub.endpoint), EscapeForLog(hub.cache_dir), hub.token.Describe(),
               hub.offline ? ", offline" : "",
               config.hub_allow.empty() ? "any public repo" : "the hub_allow list");
  core->foreground = std::make_unique<hub::HubClient>(std::move(hub));
  core->background = std::make_unique<hub::HubClient>(std::move(background));
  if (!core->foreground->config().offline && config.hub_concurrency > 0) {
    for (uint32_t i = 0; i < config.hub_concurrency; ++i) {
      core->workers.emplace_back([c = core.get()] { c->Worker(); });
    }
    core->demand_worker = std::thread([c = core.get()] { c->DemandWorker(); });
  }
  return std::unique_ptr<HubModels>(new HubModels(std::move(core)));
}

HubModels::HubModels(std::shared_ptr<Core> core) : core_(std::move(core)) {}

HubModels::~HubModels() {
  {
    std::lock_guard<std::mutex> lock(core_->mu);
    core_->stopping = true;
    core_->queue.clear();
  }
  core_->stop_flag.store(true);
  core_->cv.notify_all();
  for (std::thread& t : core_->workers) t.join();
  if (core_->demand_worker.joinable()) core_->demand_worker.join();
}

const hub::HubConfig& HubModels::hub_config() const { return core_->foreground->config(); }
bool HubModels::offline() const { return core_->foreground->config().offline; }

std::string HubModels::ModelPath(const hub::RepoInfo& repo) {
  return absl::StrCat("hf://", repo.ref.repo_id, "@", repo.commit);
}

absl::StatusOr<std::shared_ptr<const hub::RepoInfo>> HubModels::Resolve(const std::string& name) {
  ASSIGN_OR_RETURN(hub::RepoRef ref, hub::ParseRepoRef(name));
  // Before any request: a refused repo is one message, whatever exists.
  const std::vector<std::string>& allow = core_->allow;
  bool listed = false;
  for (const std::string& pattern : allow) {
    if (::fnmatch(pattern.c_str(), ref.repo_id.c_str(), FNM_PATHNAME | FNM_CASEFOLD) == 0) {
      listed = true;
      break;
    }
  }
  if (!allow.empty() && !listed) return NotAllowed();
  auto info = core_->foreground->Resolve(ref);
  core_->PublishTransfers();
  if (!info.ok()) {
    core_->FetchError();
    return absl::Status(info.status().code(),
                        absl::StrCat("Hub model '", EscapeForLog(ref.ToString()), "': ",
                                     info.status().message()));
  }
  // The default list is any public repo: the daemon's token opens private
  // and gated repos only to clients of repos listed explicitly.
  if ((info->is_private || info->gated) && !listed) return NotAllowed();
  return std::make_shared<const hub::RepoInfo>(std::move(*info));
}

absl::StatusOr<std::shared_ptr<Model>> HubModels::Open(
    const std::shared_ptr<const hub::RepoInfo>& repo, const ModelOptions& options) {
  const std::string path = ModelPath(*repo);
  const std::string what = absl::StrCat("model '", EscapeForLog(path), "'");
  ModelFiles files = SelectFiles(*repo);
  if (files.shards.empty()) {
    return absl::NotFoundError(absl::StrCat(what, ": the repo has no .bs files"));
  }
  uint64_t total = 0;
  for (const hub::RepoFile* f : files.shards) total += f->size;
  if (core_->config.hub_max_model_bytes > 0 && total > core_->config.hub_max_model_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        what, ": its .bs shards are ", total, " bytes, over the daemon's hub_max_model_bytes ",
        core_->config.hub_max_model_bytes));
  }
  std::vector<std::shared_ptr<FileState>> states;
  for (const hub::RepoFile* f : files.shards) states.push_back(core_->StateFor(repo, *f));
  std::shared_ptr<FileState> index;
  if (files.index != nullptr) index = core_->StateFor(repo, *files.index);
  bool all_cached = true;
  for (const auto& s : states) all_cached = all_cached && s->cached.load();
  if (index != nullptr) all_cached = all_cached && index->cached.load();
  if (!all_cached && offline()) {
    return absl::NotFoundError(absl::StrCat(
        what, ": the daemon is offline (hub_offline or HF_HUB_OFFLINE) and the cache does not "
              "hold every file of it"));
  }
  if (index != nullptr) {
    if (index->file.size > static_cast<uint64_t>(kMaxShardIndexBytes)) {
      return absl::DataLossError(absl::StrCat(what, ": ", kShardIndexName, " is over ",
                                              kMaxShardIndexBytes, " bytes"));
    }
    HubFileSource source(core_, index, options.io);
    auto bytes = ReadRange(source, 0, index->file.size);
    if (!bytes.ok()) return Annotate(bytes.status(), what);
    std::set<std::string> names;
    for (const hub::RepoFile* f : files.shards) names.insert(f->path);
    RETURN_IF_ERROR(CheckShardIndex(
        absl::string_view(reinterpret_cast<const char*>(bytes->data()), bytes->size()), names,
        what));
  }
  std::vector<ShardSource> shards;
  for (const auto& s : states) {
    shards.push_back(ShardSource{std::make_unique<HubFileSource>(core_, s, options.io),
                                 absl::StrCat(path, "/", s->file.path)});
  }
  auto model = Model::OpenSources(std::move(shards), path, repo->commit, path, options);
  if (model.ok() && all_cached && core_->metrics != nullptr) {
    core_->metrics->AddHubCacheHit("open");
  }
  return model;
}

void HubModels::Fill(const std::shared_ptr<const hub::RepoInfo>& repo) {
  if (offline() || core_->workers.empty()) return;
  ModelFiles files = SelectFiles(*repo);
  std::vector<const hub::RepoFile*> wanted = files.shards;
  if (files.index != nullptr) wanted.insert(wanted.begin(), files.index);
  std::vector<std::shared_ptr<FileState>> states;
  for (const hub::RepoFile* f : wanted) states.push_back(core_->StateFor(repo, *f));
  for (auto& s : states) s->fill_wanted.store(true);
  {
    std::lock_guard<std::mutex> lock(core_->mu);
    if (core_->stopping) return;
    for (auto& s : states) {
      if (s->cached.load() || s->queued || s->busy) continue;
      s->queued = true;
      core_->queue.push_back(std::move(s));
    }
  }
  core_->cv.notify_all();
}

}  // namespace bigsmall::daemon
