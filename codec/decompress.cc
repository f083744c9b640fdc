#include "codec/decompress.h"

#include <chrono>
#include <filesystem>
#include <functional>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "codec/base_model.h"
#include "codec/bs_reader.h"
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
  DecompressStats stats;
  auto one_file = [&](const std::string& in, const std::string& out, bool overwrite) -> absl::Status {
    ASSIGN_OR_RETURN(AtomicFile f, AtomicFile::Create(out, overwrite));
    ASSIGN_OR_RETURN(uint64_t n, Rebuild(in, ctx, [&](absl::Span<const uint8_t> b) { return f.Write(b); }));
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
