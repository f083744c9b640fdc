// GPU decode benchmark, two modes.
//
//   gpu_bench FILE.bs [--repeat N] [--batch LAYERS] [--markdown OUT.md]
//     Decodes every layer group of a .bs file on the GPU, LAYERS consecutive
//     groups per launch (their bytes concatenated, one plan), into a device
//     arena, and reports side by side in one run: each kernel's time as GB/s
//     of output (the fused decode kernel, the verify kernel when some tensor
//     needs it, init + finish), all kernels, upload + kernels, host wall
//     clock (planning and the zstd prepass included), the pinned H2D copy
//     rate (PCIe roofline) and the D2D copy rate (HBM roofline: bytes copied
//     once) with the decode kernel as a fraction of it. Every tensor is
//     copied back once and checked against its stored XXH3-128, and on 1.1
//     files the kernels compare every device checksum on the GPU.
//
//   gpu_bench --chunk-curve FILE.safetensors [--mode M] [--repeat N]
//             [--batch LAYERS] [--markdown OUT.md]
//     Compresses the file in-process with chunk_elements in
//     {4096 .. 131072} and reports, per chunk size: the ratio (stored bytes
//     as % of the original), its cost against the default 65536, decode
//     kernel GB/s one layer per launch and LAYERS (default 8) per launch.
//
//   --emulated runs either mode on the CPU emulator of the kernels (no GPU
//   needed): the same plans, verdicts and hash checks, and the ratio curve;
//   its GB/s are the emulator's, not a GPU's.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "codec/bs_reader.h"
#include "codec/device_checksum.h"
#include "codec/hash.h"
#include "codec/safetensors.h"
#include "codec/tensor_codec.h"
#include "kernels/gpu_decoder.h"

namespace bigsmall {
namespace {

// One launch's worth of work: groups' bytes concatenated, their jobs, the plan.
struct Launch {
  std::vector<uint8_t> bytes;
  std::vector<gpu::TensorJob> jobs;
  std::vector<uint32_t> tensors;  // index tensors (file mode)
  gpu::DecodePlan plan;
  uint64_t out_bytes = 0;  // the tensors' bytes (not the alignment padding)
};

struct Times {
  double decode = 0, verify = 0, finish = 0, kernels = 0, total = 0, wall = 0;
};

constexpr uint64_t kTensorAlign = 256;  // tensors in a layer arena

// The GPU, or (--emulated) the CPU emulator of its kernels: same plans,
// same verdicts, wall-clock times (for checking the bench and the ratio
// curve on machines without a GPU; its GB/s say nothing about a GPU).
class Decoder {
 public:
  static absl::StatusOr<Decoder> Create(bool emulated) {
    Decoder d;
    if (!emulated) {
      auto gpu = gpu::GpuDecoder::Create(0);
      if (!gpu.ok()) return gpu.status();
      d.gpu_ = std::move(*gpu);
    }
    return d;
  }
  absl::Status Reserve(uint64_t bytes) {
    if (gpu_ == nullptr) {
      if (host_.size() < bytes) host_.resize(bytes);
      return absl::OkStatus();
    }
    if (device_.size() >= bytes) return absl::OkStatus();
    auto b = gpu::DeviceBuffer::Allocate(0, bytes);
    if (!b.ok()) return b.status();
    device_ = std::move(*b);
    return absl::OkStatus();
  }
  absl::StatusOr<gpu::DecodeTiming> Decode(const Launch& l) {
    if (gpu_ != nullptr) return gpu_->Decode(l.bytes, l.jobs, l.plan, device_.data());
    const auto t0 = std::chrono::steady_clock::now();
    absl::Status st = gpu::EmulateDecode(l.bytes, l.jobs, l.plan, absl::MakeSpan(host_));
    if (!st.ok()) return st;
    gpu::DecodeTiming t;
    t.decode = t.kernels = t.total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return t;
  }
  absl::Status CopyToHost(absl::Span<uint8_t> out, uint64_t offset) const {
    if (gpu_ != nullptr) return device_.CopyToHost(out, offset);
    std::copy(host_.begin() + offset, host_.begin() + offset + out.size(), out.begin());
    return absl::OkStatus();
  }
  bool emulated() const { return gpu_ == nullptr; }

 private:
  std::unique_ptr<gpu::GpuDecoder> gpu_;
  gpu::DeviceBuffer device_;
  std::vector<uint8_t> host_;
};

bool Plan(Launch& l) {
  auto plan = gpu::PlanDecode(l.bytes, l.jobs);
  if (!plan.ok()) {
    std::fprintf(stderr, "plan: %s\n", std::string(plan.status().message()).c_str());
    return false;
  }
  l.plan = *std::move(plan);
  return true;
}

// Best of `repeat` passes over every launch (sums of per-kernel event times).
bool TimeLaunches(Decoder& decoder, std::vector<Launch>& launches, int repeat, Times* best) {
  *best = Times{1e30, 1e30, 1e30, 1e30, 1e30, 1e30};
  for (int r = 0; r < repeat; ++r) {
    Times t;
    const auto t0 = std::chrono::steady_clock::now();
    for (Launch& l : launches) {
      auto d = decoder.Decode(l);
      if (!d.ok()) {
        std::fprintf(stderr, "decode: %s\n", std::string(d.status().message()).c_str());
        return false;
      }
      t.decode += d->decode;
      t.verify += d->verify;
      t.finish += d->finish;
      t.kernels += d->kernels;
      t.total += d->total;
    }
    t.wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best->decode = std::min(best->decode, t.decode);
    best->verify = std::min(best->verify, t.verify);
    best->finish = std::min(best->finish, t.finish);
    best->kernels = std::min(best->kernels, t.kernels);
    best->total = std::min(best->total, t.total);
    best->wall = std::min(best->wall, t.wall);
  }
  return true;
}

uint64_t MaxArena(const std::vector<Launch>& launches) {
  uint64_t m = 1;
  for (const Launch& l : launches) m = std::max(m, l.plan.output_bytes);
  return m;
}

void Emit(const std::string& table, const std::string& markdown) {
  std::printf("%s\n", table.c_str());
  if (!markdown.empty()) std::ofstream(markdown, std::ios::app) << table << "\n";
}

std::string GpuName(const Decoder& d) {
  if (d.emulated()) return "emulated (CPU)";
  auto info = gpu::Describe(0);
  return info.ok() ? info->name : "?";
}

int RunFile(const std::string& path, int repeat, uint32_t batch, const std::string& markdown, bool emulated) {
  auto reader = BsReader::OpenFile(path);
  if (!reader.ok()) {
    std::fprintf(stderr, "%s\n", std::string(reader.status().message()).c_str());
    return 1;
  }
  const BsIndex& ix = (*reader)->index();
  auto decoder = Decoder::Create(emulated);
  if (!decoder.ok()) {
    std::fprintf(stderr, "%s\n", std::string(decoder.status().message()).c_str());
    return 1;
  }
  std::vector<Launch> launches;
  uint64_t total_out = 0, total_in = 0;
  uint32_t verify_jobs = 0;
  for (uint32_t g0 = 0; g0 < ix.groups.size(); g0 += batch) {
    Launch l;
    uint64_t out = 0;
    for (uint32_t g = g0; g < std::min<uint32_t>(g0 + batch, ix.groups.size()); ++g) {
      auto bytes = (*reader)->ReadGroup(g);
      if (!bytes.ok()) return 1;
      const uint64_t base = l.bytes.size();
      l.bytes.insert(l.bytes.end(), bytes->begin(), bytes->end());
      for (uint32_t t : ix.groups[g].tensors) {
        const BsTensor& bt = ix.tensors[t];
        gpu::TensorJob job;
        job.blob_offset = base + bt.blob_offset - ix.groups[g].offset;
        job.blob_size = bt.blob_size;
        job.out_offset = out;
        job.out_size = bt.info.size();
        job.has_checksum = bt.has_device_checksum;
        job.checksum = bt.device_checksum;
        l.jobs.push_back(job);
        l.tensors.push_back(t);
        l.out_bytes += bt.info.size();
        out += (bt.info.size() + kTensorAlign - 1) / kTensorAlign * kTensorAlign;
      }
    }
    if (!Plan(l)) return 1;
    total_out += l.out_bytes;
    total_in += l.bytes.size();
    launches.push_back(std::move(l));
  }
  const uint64_t max_out = MaxArena(launches);
  if (!decoder->Reserve(max_out).ok()) return 1;

  // Correctness: every tensor back to the host, hash checked (the device
  // checksums were compared by the kernels already on 1.1 files).
  uint64_t checked = 0, device_checked = 0;
  for (size_t i = 0; i < launches.size(); ++i) {
    Launch& l = launches[i];
    auto t = decoder->Decode(l);
    if (!t.ok()) {
      std::fprintf(stderr, "launch %zu: %s\n", i, std::string(t.status().message()).c_str());
      return 1;
    }
    for (size_t k = 0; k < l.jobs.size(); ++k) {
      const auto& job = l.jobs[k];
      std::vector<uint8_t> host(job.out_size);
      if (!decoder->CopyToHost(absl::MakeSpan(host), job.out_offset).ok()) return 1;
      const BsTensor& bt = ix.tensors[l.tensors[k]];
      if (HashBytes128(host) != bt.hash) {
        std::fprintf(stderr, "HASH MISMATCH: tensor %s\n", bt.info.name.c_str());
        return 1;
      }
      ++checked;
      device_checked += job.has_checksum;
    }
  }
  for (const Launch& l : launches) {
    for (size_t k = 0; k < l.jobs.size(); ++k) {
      verify_jobs += l.jobs[k].has_checksum && (l.plan.jobs[k].flags & gpu::kJobInlineChecksum) == 0;
    }
  }
  Times best;
  if (!TimeLaunches(*decoder, launches, repeat, &best)) return 1;
  absl::StatusOr<double> h2d = absl::UnavailableError("emulated"), d2d = h2d;
  if (!emulated) {
    h2d = gpu::MeasureCopyBandwidth(0, max_out, /*device_to_device=*/false);
    d2d = gpu::MeasureCopyBandwidth(0, max_out, /*device_to_device=*/true);
  }
  const double gb = total_out / 1e9;
  const double d2d_gbs = d2d.ok() ? *d2d / 1e9 : 0.0;
  char line[2048];
  std::string table =
      "| GPU | file | layers | layers per launch | output GB | stored/original | decode kernel GB/s | "
      "decode / D2D | verify kernel GB/s (tensors) | init+finish ms | all kernels GB/s | upload+kernels GB/s | "
      "host wall GB/s | pinned H2D GB/s | D2D GB/s | tensors hash-checked (device-checked) |\n"
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  char verify[64];
  if (verify_jobs == 0) {
    std::snprintf(verify, sizeof(verify), "- (0)");
  } else {
    std::snprintf(verify, sizeof(verify), "%.1f (%u)", gb / std::max(best.verify, 1e-12), verify_jobs);
  }
  std::snprintf(line, sizeof(line),
                "| %s | %s | %zu | %u | %.3f | %.2f%% | %.1f | %.0f%% | %s | %.3f | %.1f | %.1f | %.1f | %.1f | %.0f | "
                "%llu (%llu) |\n",
                GpuName(*decoder).c_str(), path.c_str(), ix.groups.size(), batch, gb, 100.0 * total_in / total_out,
                gb / best.decode, d2d_gbs > 0 ? 100.0 * gb / best.decode / d2d_gbs : 0.0, verify, best.finish * 1e3,
                gb / best.kernels, gb / best.total, gb / best.wall, h2d.ok() ? *h2d / 1e9 : 0.0, d2d_gbs,
                static_cast<unsigned long long>(checked), static_cast<unsigned long long>(device_checked));
  table += line;
  Emit(table, markdown);
  return 0;
}

absl::StatusOr<Mode> ParseMode(const std::string& m) {
  if (m == "balanced") return Mode::kBalanced;
  if (m == "storage") return Mode::kStorage;
  if (m == "inference") return Mode::kInference;
  return absl::InvalidArgumentError("mode must be balanced, storage or inference");
}

int RunChunkCurve(const std::string& path, Mode mode, int repeat, uint32_t batch, const std::string& markdown,
                  bool emulated) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "cannot open %s\n", path.c_str());
    return 1;
  }
  const std::vector<uint8_t> file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (file.size() < 8) return 1;
  auto len = ParseSafetensorsHeaderLength(absl::MakeConstSpan(file).first(8), file.size());
  if (!len.ok()) return 1;
  auto header = ParseSafetensorsHeader(absl::MakeConstSpan(file).first(8 + *len), file.size(), path);
  if (!header.ok()) {
    std::fprintf(stderr, "%s\n", std::string(header.status().message()).c_str());
    return 1;
  }
  // Layer groups as the compressor forms them.
  std::map<std::pair<int64_t, std::string>, std::vector<size_t>> layers;
  for (size_t i = 0; i < header->tensors.size(); ++i) {
    const LayerKey key = LayerOf(header->tensors[i].name);
    layers[{key.layer, key.group}].push_back(i);
  }
  auto decoder = Decoder::Create(emulated);
  if (!decoder.ok()) {
    std::fprintf(stderr, "%s\n", std::string(decoder.status().message()).c_str());
    return 1;
  }
  absl::StatusOr<double> d2d = absl::UnavailableError("emulated");
  if (!emulated) d2d = gpu::MeasureCopyBandwidth(0, 256ull << 20, /*device_to_device=*/true);
  std::string table = "| GPU | file | mode | chunk elements | stored/original | cost vs 65536 (points) | "
                      "decode kernel GB/s, 1 layer per launch | decode kernel GB/s, " +
                      std::to_string(batch) + " layers per launch | chunk tasks per layer |\n"
                      "|---|---|---|---|---|---|---|---|---|\n";
  struct Row {
    uint32_t ce;
    double ratio, one, many;
    uint64_t tasks_per_layer;
  };
  std::vector<Row> rows;
  double base_ratio = 0;
  for (uint32_t ce : {4096u, 8192u, 16384u, 32768u, 65536u, 131072u}) {
    // Encode every layer once at this chunk size.
    std::vector<Launch> per_layer;
    uint64_t stored = 0, original = 0;
    for (const auto& [key, idx] : layers) {
      Launch l;
      uint64_t out = 0;
      for (size_t i : idx) {
        const SafetensorsTensor& t = header->tensors[i];
        const auto bytes = absl::MakeConstSpan(file).subspan(header->header_bytes + t.begin, t.size());
        EncodeOptions eo;
        eo.mode = mode;
        eo.chunk_elements = ce;
        auto blob = EncodeTensorBlob(bytes, t.dtype, eo);
        if (!blob.ok()) {
          std::fprintf(stderr, "%s: %s\n", t.name.c_str(), std::string(blob.status().message()).c_str());
          return 1;
        }
        gpu::TensorJob job;
        job.blob_offset = l.bytes.size();
        job.blob_size = blob->size();
        job.out_offset = out;
        job.out_size = t.size();
        job.has_checksum = true;
        job.checksum = DeviceChecksum(bytes.data(), bytes.size());
        l.bytes.insert(l.bytes.end(), blob->begin(), blob->end());
        l.jobs.push_back(job);
        l.out_bytes += t.size();
        out += (t.size() + kTensorAlign - 1) / kTensorAlign * kTensorAlign;
      }
      stored += l.bytes.size();
      original += l.out_bytes;
      per_layer.push_back(std::move(l));
    }
    // Batched: `batch` consecutive layers concatenated into one plan.
    std::vector<Launch> batched;
    for (size_t g0 = 0; g0 < per_layer.size(); g0 += batch) {
      Launch b;
      uint64_t out = 0;
      for (size_t g = g0; g < std::min(per_layer.size(), g0 + batch); ++g) {
        const Launch& l = per_layer[g];
        const uint64_t base = b.bytes.size();
        b.bytes.insert(b.bytes.end(), l.bytes.begin(), l.bytes.end());
        for (gpu::TensorJob job : l.jobs) {
          job.blob_offset += base;
          job.out_offset += out;
          b.jobs.push_back(job);
        }
        b.out_bytes += l.out_bytes;
        for (const auto& job : l.jobs) out = std::max(out, job.out_offset + job.out_size);
        out = (out + kTensorAlign - 1) / kTensorAlign * kTensorAlign;
      }
      batched.push_back(std::move(b));
    }
    uint64_t tasks = 0;
    for (Launch& l : per_layer) {
      if (!Plan(l)) return 1;
      tasks += l.plan.chunks.size();
    }
    for (Launch& l : batched) {
      if (!Plan(l)) return 1;
    }
    if (!decoder->Reserve(std::max(MaxArena(per_layer), MaxArena(batched))).ok()) return 1;
    Times one, many;
    if (!TimeLaunches(*decoder, per_layer, repeat, &one)) return 1;
    if (!TimeLaunches(*decoder, batched, repeat, &many)) return 1;
    const double gb = original / 1e9;
    const double ratio = 100.0 * stored / original;
    if (ce == 65536) base_ratio = ratio;
    rows.push_back({ce, ratio, gb / one.decode, gb / many.decode, tasks / std::max<size_t>(1, per_layer.size())});
  }
  char line[1024];
  for (const Row& r : rows) {
    std::snprintf(line, sizeof(line), "| %s | %s | %s | %u | %.2f%% | %+.2f | %.1f | %.1f | %llu |\n",
                  GpuName(*decoder).c_str(), path.c_str(), ModeName(mode), r.ce, r.ratio, r.ratio - base_ratio, r.one,
                  r.many, static_cast<unsigned long long>(r.tasks_per_layer));
    table += line;
  }
  std::snprintf(line, sizeof(line), "\nD2D memcpy (256 MiB): %.0f GB/s\n", d2d.ok() ? *d2d / 1e9 : 0.0);
  table += line;
  Emit(table, markdown);
  return 0;
}

int Run(int argc, char** argv) {
  const char* usage =
      "usage: gpu_bench FILE.bs [--repeat N] [--batch LAYERS] [--markdown OUT.md] [--emulated]\n"
      "       gpu_bench --chunk-curve FILE.safetensors [--mode M] [--repeat N] [--batch LAYERS] [--markdown OUT.md]\n"
      "                 [--emulated]\n"
      "--emulated: the CPU emulator of the kernels instead of a GPU (checks, ratios; its GB/s are not a GPU's)\n";
  std::string path, curve, markdown, mode_name = "balanced";
  int repeat = 5;
  uint32_t batch = 1;
  bool batch_given = false;
  bool emulated = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--repeat" && i + 1 < argc) {
      repeat = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--batch" && i + 1 < argc) {
      batch = static_cast<uint32_t>(std::max(1, std::atoi(argv[++i])));
      batch_given = true;
    } else if (a == "--markdown" && i + 1 < argc) {
      markdown = argv[++i];
    } else if (a == "--chunk-curve" && i + 1 < argc) {
      curve = argv[++i];
    } else if (a == "--emulated") {
      emulated = true;
    } else if (a == "--mode" && i + 1 < argc) {
      mode_name = argv[++i];
    } else if (!a.empty() && a[0] != '-' && path.empty()) {
      path = a;
    } else {
      std::fprintf(stderr, "%s", usage);
      return 2;
    }
  }
  if (path.empty() == curve.empty()) {
    std::fprintf(stderr, "%s", usage);
    return 2;
  }
  auto mode = ParseMode(mode_name);
  if (!mode.ok()) {
    std::fprintf(stderr, "%s\n%s", std::string(mode.status().message()).c_str(), usage);
    return 2;
  }
  std::string why;
  if (!emulated && gpu::DeviceCount(&why) == 0) {
    std::fprintf(stderr, "no CUDA GPU: %s\n", why.c_str());
    return 1;
  }
  if (!curve.empty()) return RunChunkCurve(curve, *mode, repeat, batch_given ? batch : 8, markdown, emulated);
  return RunFile(path, repeat, batch, markdown, emulated);
}

}  // namespace
}  // namespace bigsmall

int main(int argc, char** argv) { return bigsmall::Run(argc, argv); }
