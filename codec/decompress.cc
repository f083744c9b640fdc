#include "codec/decompress.h"

#include <chrono>
#include <exception>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "codec/base_model.h"
#include "codec/bs_reader.h"
#include "codec/byte_io.h"
#include "codec/fast_hash.h"
#include "codec/file_util.h"
#include "codec/model_dir.h"
#include "codec/status_macros.h"
#include "codec/thread_pool.h"

namespace bigsmall {
namespace {

// Receives the rebuilt file in order, piece by piece.
using Sink = std::function<absl::Status(absl::Span<const uint8_t>)>;

struct RebuildContext {
  ThreadPool* pool;
  DecoderImpl impl;
  const BaseModel* base;
  ProgressFn progress;
  uint64_t progress_offset = 0;
  uint64_t progress_total = 0;
  // Verify: also check the padding and the format 1.1 group and device
  // checksums (counted here).
  bool check_checksums = false;
  uint64_t* device_checksums = nullptr;
  uint64_t* group_checksums = nullptr;
  // Decompress to a file (RebuildToFile): DecompressOptions::batch_bytes, in_place.
  uint64_t batch_bytes = 0;
  bool in_place = true;
};

// Tensors decoded concurrently are bounded by this many bytes (or one tensor
// when it is larger): many small tensors keep every thread busy, memory stays
// at one batch.
constexpr uint64_t kBatchBytes = 64ull << 20;

// Decodes every tensor of one .bs file, emitting them in file order, checking
// each hash and finally the whole-file hash; memory stays at one batch.
absl::StatusOr<uint64_t> Rebuild(const std::string& path, const RebuildContext& ctx, const Sink& sink) {
  ASSIGN_OR_RETURN(auto reader, BsReader::OpenFile(path));
  const BsIndex& ix = reader->index();
  if (ix.is_delta() && ctx.base == nullptr) {
    bool needs = false;
    for (const auto& t : ix.tensors) needs |= t.is_delta();
    if (needs) {
      return absl::FailedPreconditionError(absl::StrCat(
          path, ": is a fine-tune delta against '", ix.base_name, "'; pass --base"));
    }
  }
  StreamingHash128 whole;
  auto emit = [&](absl::Span<const uint8_t> bytes) -> absl::Status {
    whole.Update(bytes);
    return sink(bytes);
  };
  // Verify: every padding byte must be zero (docs/FORMAT.md §1; 1.0 and 1.1).
  if (ctx.check_checksums) RETURN_IF_ERROR(reader->CheckPadding());
  const bool checksums = ctx.check_checksums && ix.has_checksums();
  if (checksums) {
    // docs/FORMAT.md §3.2: a group's stored bytes are checked before decoding.
    for (uint32_t g = 0; g < ix.groups.size(); ++g) RETURN_IF_ERROR(reader->CheckStoredGroup(g));
    *ctx.group_checksums += ix.groups.size();
  }
  RETURN_IF_ERROR(emit(ix.safetensors_prefix));
  DecodeOptions opts;
  opts.pool = ctx.pool;
  opts.impl = ctx.impl;
  BaseTensorFetcher fetch;
  if (ctx.base != nullptr) fetch = [&](const BsTensor& t) { return ctx.base->Read(t.info); };
  uint64_t done = ix.safetensors_prefix.size();
  std::vector<std::vector<uint8_t>> decoded(ix.tensors.size());
  RETURN_IF_ERROR(ctx.pool->OrderedBatches(
      ix.tensors.size(), kBatchBytes, [&](size_t t) { return ix.tensors[t].info.size(); },
      [&](size_t t) -> absl::Status {
        ASSIGN_OR_RETURN(decoded[t], reader->ReadTensor(static_cast<uint32_t>(t), opts, fetch));
        if (checksums) RETURN_IF_ERROR(reader->CheckDeviceChecksum(static_cast<uint32_t>(t), decoded[t]));
        return absl::OkStatus();
      },
      [&](size_t t) -> absl::Status {
        RETURN_IF_ERROR(emit(decoded[t]));
        done += decoded[t].size();
        std::vector<uint8_t>().swap(decoded[t]);
        if (ctx.progress) ctx.progress(ctx.progress_offset + done, ctx.progress_total);
        return absl::OkStatus();
      }));
  if (done != ix.original_size || whole.Finish() != ix.original_hash) {
    return absl::DataLossError(absl::StrCat(path, ": rebuilt file does not match the stored whole-file hash"));
  }
  if (checksums) *ctx.device_checksums += ix.tensors.size();
  return done;
}

// ---------------------------------------------------------------------------
// Decompress to a file: tensors are decoded straight into the output file's
// pages (a shared mapping of the temporary, its space reserved first), batch
// after batch in file order: nothing is copied, and the output's page faults
// are spread over the decoding threads. While batch k decodes on every core,
// one helper thread hashes batch k-1 into the whole-file hash and unmaps it,
// another reserves and maps batch k+1 and starts reading its input. Where the
// output cannot be reserved or mapped (no fallocate, or no writable mmap),
// batches decode into two reused buffers and the helper writes them
// (pwrite). The input .bs is mapped read-only (read group by group where it
// cannot be). The resident set stays at about four batches: the output
// window being decoded and the one being hashed (unmapped after), and their
// input pages (unmapped after).

// Output bytes per batch (or one tensor when it is larger). Small enough to
// pipeline and to bound the resident set (four batches), large enough that
// the join at each batch's end costs little.
constexpr uint64_t kFileBatchBytes = 32ull << 20;

struct FileBatch {
  size_t begin = 0, end = 0;      // tensors [begin, end)
  uint64_t offset = 0, size = 0;  // their bytes in the rebuilt file
  MappedRange mapped;             // in-place mode: the output window
  absl::Span<uint8_t> out;        // where the batch decodes
  // Inputs: groups read into memory (no input mapping), base tensors (deltas).
  std::map<uint32_t, std::vector<uint8_t>> groups;
  std::vector<std::vector<uint8_t>> base;
};

// Runs `fn` on its own thread (on the caller's when no thread can start)
// until Join(). `fn` reports through what it captures; an exception in it
// (an allocation failure) makes Join() RESOURCE_EXHAUSTED.
class Helper {
 public:
  explicit Helper(std::function<void()> fn) : fn_(std::move(fn)) {
    try {
      thread_ = std::thread([this] { Run(); });
    } catch (const std::exception&) {
      Run();
    }
  }
  ~Helper() {
    if (thread_.joinable()) thread_.join();
  }
  // OK, or RESOURCE_EXHAUSTED when `fn` threw.
  absl::Status Join() {
    if (thread_.joinable()) thread_.join();
    return status_;
  }

 private:
  void Run() {
    try {
      fn_();
    } catch (const std::exception& e) {
      status_ = absl::ResourceExhaustedError(absl::StrCat("decompress: ", e.what()));
    }
  }
  std::function<void()> fn_;
  absl::Status status_;
  std::thread thread_;
};

absl::Status NeedsBase(const std::string& path, const BsIndex& ix, const BaseModel* base) {
  if (!ix.is_delta() || base != nullptr) return absl::OkStatus();
  for (const auto& t : ix.tensors) {
    if (t.is_delta()) {
      return absl::FailedPreconditionError(
          absl::StrCat(path, ": is a fine-tune delta against '", ix.base_name, "'; pass --base"));
    }
  }
  return absl::OkStatus();
}

// Rebuilds one .bs file into `file` (empty, just created); checks every
// tensor hash and the whole-file hash; returns the bytes written.
absl::StatusOr<uint64_t> RebuildToFile(const std::string& path, const RebuildContext& ctx, AtomicFile& file) {
  ASSIGN_OR_RETURN(auto reader, BsReader::OpenFile(path));
  const BsIndex& ix = reader->index();
  RETURN_IF_ERROR(NeedsBase(path, ix, ctx.base));
  const auto mismatch = [&] {
    return absl::DataLossError(absl::StrCat(path, ": rebuilt file does not match the stored whole-file hash"));
  };
  // Batches in file order; tensors follow the prefix back to back.
  const uint64_t batch_bytes = ctx.batch_bytes > 0 ? ctx.batch_bytes : kFileBatchBytes;
  std::vector<FileBatch> batches;
  uint64_t end = ix.safetensors_prefix.size();
  for (size_t t = 0; t < ix.tensors.size();) {
    FileBatch b;
    b.begin = t;
    b.offset = end;
    while (t < ix.tensors.size() && (t == b.begin || b.size + ix.tensors[t].info.size() <= batch_bytes)) {
      b.size += ix.tensors[t++].info.size();
    }
    b.end = t;
    end += b.size;
    batches.push_back(std::move(b));
  }
  if (end != ix.original_size) return mismatch();

  RETURN_IF_ERROR(file.Write(ix.safetensors_prefix));
  FastStreamingHash128 whole;
  whole.Update(ix.safetensors_prefix);
  RETURN_IF_ERROR(file.Resize(ix.original_size));
  // The input, mapped read-only (when it cannot be, groups are read).
  const ReadOnlyMapping input = ReadOnlyMapping::Open(path, ix.stored_size);
  bool in_place = ctx.in_place;
  std::vector<uint8_t> buffers[2];  // when not in place: batch k decodes into buffers[k % 2]

  // Everything batch k needs before it decodes: its output (reserved, mapped
  // and pre-faulted, or a reused buffer), its input (pre-faulted, or read)
  // and its base tensors.
  auto prepare = [&](size_t k) -> absl::Status {
    FileBatch& b = batches[k];
    if (in_place) {
      absl::Status st = file.Reserve(b.offset, b.size);
      if (st.ok()) {
        absl::StatusOr<MappedRange> m = file.MapRange(b.offset, b.size);
        if (m.ok()) {
          b.mapped = *std::move(m);
          b.out = b.mapped.bytes();
        } else {
          st = m.status();
        }
      }
      if (!absl::IsUnimplemented(st)) RETURN_IF_ERROR(st);
      in_place = st.ok();
    }
    if (!in_place) {
      std::vector<uint8_t>& buf = buffers[k % 2];
      if (buf.size() < b.size) {
        ASSIGN_OR_RETURN(buf, AllocateBytes(b.size, absl::StrCat(path, ": output buffer")));
      }
      b.out = absl::MakeSpan(buf.data(), b.size);
    }
    for (size_t t = b.begin; t < b.end; ++t) {
      const BsTensor& bt = ix.tensors[t];
      if (input.ok()) {
        input.WillNeed(bt.blob_offset, bt.blob_size);
      } else if (b.groups.count(bt.group) == 0) {
        ASSIGN_OR_RETURN(b.groups[bt.group], reader->ReadGroup(bt.group));
      }
    }
    if (ctx.base != nullptr) {
      b.base.resize(b.end - b.begin);
      for (size_t t = b.begin; t < b.end; ++t) {
        if (ix.tensors[t].is_delta()) {
          ASSIGN_OR_RETURN(b.base[t - b.begin], ctx.base->Read(ix.tensors[t].info));
        }
      }
    }
    return absl::OkStatus();
  };
  auto decode = [&](FileBatch& b) -> absl::Status {
    std::vector<TensorDecodeJob> jobs(b.end - b.begin);
    uint64_t at = 0;
    for (size_t t = b.begin; t < b.end; ++t) {
      const BsTensor& bt = ix.tensors[t];
      const BsGroup& g = ix.groups[bt.group];
      TensorDecodeJob& job = jobs[t - b.begin];
      job.reader = reader.get();
      job.tensor = static_cast<uint32_t>(t);
      job.group_bytes = input.ok() ? input.bytes(g.offset, g.size) : absl::MakeConstSpan(b.groups[bt.group]);
      job.out = b.out.subspan(at, bt.info.size());
      if (!b.base.empty()) job.base = b.base[t - b.begin];
      at += bt.info.size();
    }
    DecodeOptions opts;
    opts.pool = ctx.pool;
    opts.impl = ctx.impl;
    return DecodeTensors(jobs, opts);
  };
  // After batch k decoded: hashed in order, written (when buffered) and released.
  auto finish = [&](size_t k) -> absl::Status {
    FileBatch& b = batches[k];
    whole.Update(b.out);
    // Buffered (an empty in-place batch writes nothing: the preparer may be
    // using the file meanwhile).
    if (b.mapped.bytes().empty() && !b.out.empty()) RETURN_IF_ERROR(file.WriteAt(b.offset, b.out));
    b.mapped.Reset();
    for (size_t t = b.begin; t < b.end; ++t) input.Release(ix.tensors[t].blob_offset, ix.tensors[t].blob_size);
    b.groups.clear();
    b.base.clear();
    b.out = {};
    return absl::OkStatus();
  };

  if (!batches.empty()) RETURN_IF_ERROR(prepare(0));
  uint64_t done = ix.safetensors_prefix.size();
  for (size_t k = 0; k <= batches.size(); ++k) {
    // Helpers work on batches k-1 (hash, write, release) and k+1 (prepare);
    // batch k is the decoders'. In place, those two run on two threads (the
    // whole-file hash and fallocate are each serial: apart, neither waits for
    // the other); buffered, one after the other (batch k+1 reuses batch k-1's
    // buffer). Every batch before k+1 was prepared in place when in_place
    // still holds, so a switch to buffers in prepare(k + 1) takes a buffer
    // no one uses.
    absl::Status finished, prepared;
    const bool apart = in_place;
    {
      Helper finisher([&, k] {
        if (k > 0) finished = finish(k - 1);
        if (!apart && finished.ok() && k + 1 < batches.size()) prepared = prepare(k + 1);
      });
      std::optional<Helper> preparer;
      if (apart && k + 1 < batches.size()) preparer.emplace([&, k] { prepared = prepare(k + 1); });
      absl::Status decoded = k < batches.size() ? decode(batches[k]) : absl::OkStatus();
      absl::Status helped = finisher.Join();
      if (preparer.has_value()) helped.Update(preparer->Join());
      // In file order, as a sequential rebuild reports them.
      RETURN_IF_ERROR(finished);
      RETURN_IF_ERROR(decoded);
      RETURN_IF_ERROR(prepared);
      RETURN_IF_ERROR(helped);
    }
    if (k > 0) done += batches[k - 1].size;
    if (ctx.progress) ctx.progress(ctx.progress_offset + done, ctx.progress_total);
  }
  if (done != ix.original_size || whole.Finish() != ix.original_hash) return mismatch();
  return done;
}

// A sink that compares against an original file.
class CompareSink {
 public:
  static absl::StatusOr<CompareSink> Open(const std::string& path) {
    ASSIGN_OR_RETURN(auto src, OpenFileSource(path));
    return CompareSink(std::move(src));
  }
  absl::Status operator()(absl::Span<const uint8_t> bytes) {
    if (offset_ + bytes.size() > source_->size()) {
      return absl::DataLossError(absl::StrCat(source_->name(), ": original is shorter than the rebuilt file"));
    }
    buf_.resize(bytes.size());
    RETURN_IF_ERROR(source_->ReadAt(offset_, absl::MakeSpan(buf_)));
    if (!std::equal(bytes.begin(), bytes.end(), buf_.begin())) {
      return absl::DataLossError(
          absl::StrCat("rebuilt bytes differ from ", source_->name(), " near offset ", offset_));
    }
    offset_ += bytes.size();
    return absl::OkStatus();
  }
  absl::Status Finish() const {
    if (offset_ != source_->size()) {
      return absl::DataLossError(absl::StrCat(source_->name(), ": original is longer than the rebuilt file"));
    }
    return absl::OkStatus();
  }

 private:
  explicit CompareSink(std::unique_ptr<ByteSource> s) : source_(std::move(s)) {}
  std::shared_ptr<ByteSource> source_;
  uint64_t offset_ = 0;
  std::vector<uint8_t> buf_;
};

absl::StatusOr<std::optional<BaseModel>> OpenBase(const std::string& path) {
  if (path.empty()) return std::optional<BaseModel>();
  ASSIGN_OR_RETURN(BaseModel b, BaseModel::Open(path));
  return std::optional<BaseModel>(std::move(b));
}

// Output size and tensor count of each manifest entry (opening each index once),
// so directory jobs can report progress against the whole directory.
struct EntryPlan {
  uint64_t original_size = 0;
  uint64_t tensors = 0;
};
absl::StatusOr<std::vector<EntryPlan>> PlanDirectory(const std::string& dir, const ModelManifest& m) {
  std::vector<EntryPlan> plan;
  for (const auto& e : m.entries) {
    ASSIGN_OR_RETURN(const std::string src, ResolveInside(dir, e.stored));
    EntryPlan p;
    if (e.kind == ManifestKind::kCompressed) {
      ASSIGN_OR_RETURN(auto reader, BsReader::OpenFile(src));
      p.original_size = reader->index().original_size;
      p.tensors = reader->index().tensors.size();
    } else {
      ASSIGN_OR_RETURN(p.original_size, FileSize(src));
    }
    plan.push_back(p);
  }
  return plan;
}

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

std::string DefaultDecompressedName(const std::string& input) {
  std::string s = input;
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  if (absl::EndsWith(s, ".bs")) return s.substr(0, s.size() - 3);
  return s + ".out";
}

absl::StatusOr<DecompressStats> DecompressPath(const std::string& input, const std::string& output,
                                               const DecompressOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  if (!PathExists(input)) return absl::NotFoundError(absl::StrCat(input, ": no such file or directory"));
  if (SameFile(input, output)) {
    return absl::InvalidArgumentError(absl::StrCat(output, ": output would overwrite the input"));
  }
  ASSIGN_OR_RETURN(std::optional<BaseModel> base, OpenBase(options.base));
  ThreadPool pool(options.threads);
  RebuildContext ctx{&pool, options.impl, base ? &*base : nullptr, options.progress};
  ctx.batch_bytes = options.batch_bytes;
  ctx.in_place = options.in_place;
  DecompressStats stats;
  auto one_file = [&](const std::string& in, const std::string& out, bool overwrite) -> absl::Status {
    ASSIGN_OR_RETURN(AtomicFile f, AtomicFile::Create(out, overwrite));
    ASSIGN_OR_RETURN(uint64_t n, RebuildToFile(in, ctx, f));
    RETURN_IF_ERROR(f.Commit());
    ASSIGN_OR_RETURN(uint64_t in_size, FileSize(in));
    stats.input_bytes += in_size;
    stats.output_bytes += n;
    ++stats.files;
    return absl::OkStatus();
  };
  if (!IsDirectory(input)) {
    // Progress counts output bytes; the total is only known after opening.
    ASSIGN_OR_RETURN(auto reader, BsReader::OpenFile(input));
    ctx.progress_total = reader->index().original_size;
    stats.tensors = reader->index().tensors.size();
    reader.reset();
    RETURN_IF_ERROR(one_file(input, output, options.force));
  } else {
    ASSIGN_OR_RETURN(ModelManifest m, ReadManifest(input));
    ASSIGN_OR_RETURN(std::vector<EntryPlan> plan, PlanDirectory(input, m));
    ctx.progress_total = 0;
    for (const auto& p : plan) ctx.progress_total += p.original_size;
    ASSIGN_OR_RETURN(AtomicDirectory dir, AtomicDirectory::Create(output, options.force));
    for (size_t i = 0; i < m.entries.size(); ++i) {
      const auto& e = m.entries[i];
      ASSIGN_OR_RETURN(const std::string src, ResolveInside(input, e.stored));
      const std::string dst = (std::filesystem::path(dir.temp_path()) / e.original).string();
      RETURN_IF_ERROR(MakeParentDirs(dir.temp_path(), e.original));
      stats.tensors += plan[i].tensors;
      if (e.kind == ManifestKind::kCompressed) {
        RETURN_IF_ERROR(one_file(src, dst, false));
        ctx.progress_offset += plan[i].original_size;
      } else {
        RETURN_IF_ERROR(CopyFile(src, dst));
        ASSIGN_OR_RETURN(uint64_t s, FileSize(src));
        stats.input_bytes += s;
        stats.output_bytes += s;
        ctx.progress_offset += s;
        if (ctx.progress) ctx.progress(ctx.progress_offset, ctx.progress_total);
      }
    }
    RETURN_IF_ERROR(dir.Commit());
  }
  stats.seconds = SecondsSince(start);
  return stats;
}

absl::StatusOr<DecompressStats> VerifyPath(const std::string& input, const VerifyOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  if (!PathExists(input)) return absl::NotFoundError(absl::StrCat(input, ": no such file or directory"));
  ASSIGN_OR_RETURN(std::optional<BaseModel> base, OpenBase(options.base));
  ThreadPool pool(options.threads);
  RebuildContext ctx{&pool, options.impl, base ? &*base : nullptr, options.progress};
  DecompressStats stats;
  ctx.check_checksums = true;
  ctx.device_checksums = &stats.device_checksums;
  ctx.group_checksums = &stats.group_checksums;
  auto one_file = [&](const std::string& in, const std::string& against) -> absl::Status {
    uint64_t n = 0;
    if (against.empty()) {
      ASSIGN_OR_RETURN(n, Rebuild(in, ctx, [](absl::Span<const uint8_t>) { return absl::OkStatus(); }));
    } else {
      ASSIGN_OR_RETURN(CompareSink cmp, CompareSink::Open(against));
      ASSIGN_OR_RETURN(n, Rebuild(in, ctx, [&](absl::Span<const uint8_t> b) { return cmp(b); }));
      RETURN_IF_ERROR(cmp.Finish());
    }
    ASSIGN_OR_RETURN(uint64_t in_size, FileSize(in));
    stats.input_bytes += in_size;
    stats.output_bytes += n;
    ++stats.files;
    return absl::OkStatus();
  };
  if (!IsDirectory(input)) {
    {
      ASSIGN_OR_RETURN(auto reader, BsReader::OpenFile(input));
      ctx.progress_total = reader->index().original_size;
      stats.tensors = reader->index().tensors.size();
    }
    RETURN_IF_ERROR(one_file(input, options.against));
  } else {
    ASSIGN_OR_RETURN(ModelManifest m, ReadManifest(input));
    ASSIGN_OR_RETURN(std::vector<EntryPlan> plan, PlanDirectory(input, m));
    for (const auto& p : plan) {
      ctx.progress_total += p.original_size;
      stats.tensors += p.tensors;
    }
    for (size_t i = 0; i < m.entries.size(); ++i) {
      const auto& e = m.entries[i];
      ASSIGN_OR_RETURN(const std::string src, ResolveInside(input, e.stored));
      const std::string orig =
          options.against.empty() ? "" : (std::filesystem::path(options.against) / e.original).string();
      if (e.kind == ManifestKind::kCompressed) {
        RETURN_IF_ERROR(one_file(src, orig));
      } else if (!orig.empty()) {
        ASSIGN_OR_RETURN(CompareSink cmp, CompareSink::Open(orig));
        ASSIGN_OR_RETURN(auto s, OpenFileSource(src));
        ASSIGN_OR_RETURN(auto bytes, ReadRange(*s, 0, s->size()));
        RETURN_IF_ERROR(cmp(bytes));
        RETURN_IF_ERROR(cmp.Finish());
      }
      ctx.progress_offset += plan[i].original_size;
      if (ctx.progress) ctx.progress(ctx.progress_offset, ctx.progress_total);
    }
    if (!options.against.empty()) {
      // Every original file must be accounted for.
      ASSIGN_OR_RETURN(auto originals, ListModelDirectory(options.against));
      if (originals.size() != m.entries.size()) {
        return absl::DataLossError(absl::StrCat(options.against, " has ", originals.size(),
                                                " files, the compressed directory ", m.entries.size()));
      }
    }
  }
  stats.seconds = SecondsSince(start);
  return stats;
}

}  // namespace bigsmall
