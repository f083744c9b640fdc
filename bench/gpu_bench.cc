// GPU decode benchmark: decodes every layer group of a .bs file on the GPU,
// one group at a time into a device arena, and reports, side by side in one
// run: kernel-only decode GB/s (output bytes), end-to-end GB/s including the
// upload of the compressed group, the PCIe roofline (pinned host -> device
// copy of the same number of uncompressed bytes) and the HBM roofline
// (device -> device copy). Every tensor is copied back once and checked
// against its stored XXH3-128 (correctness of the GPU path, bit for bit).
//
// usage: gpu_bench FILE.bs [--repeat N] [--batch LAYERS] [--markdown OUT.md]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "codec/bs_reader.h"
#include "codec/hash.h"
#include "kernels/gpu_decoder.h"

namespace bigsmall {
namespace {

int Run(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: gpu_bench FILE.bs [--repeat N] [--batch LAYERS] [--markdown OUT.md]\n");
    return 2;
  }
  const std::string path = argv[1];
  int repeat = 5;
  uint32_t batch = 1;
  std::string markdown;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--repeat" && i + 1 < argc) repeat = std::max(1, std::atoi(argv[++i]));
    if (a == "--batch" && i + 1 < argc) batch = std::max(1, std::atoi(argv[++i]));
    if (a == "--markdown" && i + 1 < argc) markdown = argv[++i];
  }
  std::string why;
  if (gpu::DeviceCount(&why) == 0) {
    std::fprintf(stderr, "no CUDA GPU: %s\n", why.c_str());
    return 1;
  }
  auto info = gpu::Describe(0);
  auto reader = BsReader::OpenFile(path);
  if (!reader.ok()) {
    std::fprintf(stderr, "%s\n", std::string(reader.status().message()).c_str());
    return 1;
  }
  const BsIndex& ix = (*reader)->index();
  auto decoder = gpu::GpuDecoder::Create(0);
  if (!decoder.ok()) return 1;

  // Load every group and plan it once (planning is host work done at load).
  // With --batch B, B consecutive layer groups are decoded per launch.
  struct GroupWork {
    std::vector<uint8_t> bytes;
    std::vector<gpu::TensorJob> jobs;
    std::vector<uint32_t> tensors;
    gpu::DecodePlan plan;
  };
  std::vector<GroupWork> groups;
  uint64_t max_out = 0, total_out = 0, total_in = 0;
  for (uint32_t g0 = 0; g0 < ix.groups.size(); g0 += batch) {
    GroupWork w;
    uint64_t out = 0;
    for (uint32_t g = g0; g < std::min<uint32_t>(g0 + batch, ix.groups.size()); ++g) {
      auto bytes = (*reader)->ReadGroup(g);
      if (!bytes.ok()) return 1;
      const uint64_t base = w.bytes.size();
      w.bytes.insert(w.bytes.end(), bytes->begin(), bytes->end());
      for (uint32_t t : ix.groups[g].tensors) {
        const BsTensor& bt = ix.tensors[t];
        w.jobs.push_back({base + bt.blob_offset - ix.groups[g].offset, bt.blob_size, out, bt.info.size()});
        w.tensors.push_back(t);
        out += (bt.info.size() + 255) / 256 * 256;  // 256-byte aligned tensors in the arena
      }
    }
    auto plan = gpu::PlanDecode(w.bytes, w.jobs);
    if (!plan.ok()) {
      std::fprintf(stderr, "%s\n", std::string(plan.status().message()).c_str());
      return 1;
    }
    w.plan = *std::move(plan);
    max_out = std::max(max_out, out);
    for (const auto& j : w.jobs) total_out += j.out_size;
    total_in += w.bytes.size();
    groups.push_back(std::move(w));
  }
  auto arena = gpu::DeviceBuffer::Allocate(0, max_out);
  if (!arena.ok()) return 1;

  // Correctness: every tensor back to the host, hash checked.
  uint64_t checked = 0;
  for (uint32_t g = 0; g < groups.size(); ++g) {
    auto t = (*decoder)->Decode(groups[g].bytes, groups[g].jobs, groups[g].plan, arena->data());
    if (!t.ok()) {
      std::fprintf(stderr, "group %u: %s\n", g, std::string(t.status().message()).c_str());
      return 1;
    }
    for (size_t k = 0; k < groups[g].jobs.size(); ++k) {
      const auto& job = groups[g].jobs[k];
      std::vector<uint8_t> host(job.out_size);
      if (!arena->CopyToHost(absl::MakeSpan(host), job.out_offset).ok()) return 1;
      const BsTensor& bt = ix.tensors[groups[g].tensors[k]];
      if (HashBytes128(host) != bt.hash) {
        std::fprintf(stderr, "HASH MISMATCH: tensor %s\n", bt.info.name.c_str());
        return 1;
      }
      ++checked;
    }
  }

  double best_kernels = 1e30, best_total = 1e30, best_wall = 1e30;
  for (int r = 0; r < repeat; ++r) {
    double kernels = 0, total = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (auto& w : groups) {
      auto t = (*decoder)->Decode(w.bytes, w.jobs, w.plan, arena->data());
      if (!t.ok()) return 1;
      kernels += t->kernels;
      total += t->total;
    }
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best_kernels = std::min(best_kernels, kernels);
    best_total = std::min(best_total, total);
    best_wall = std::min(best_wall, wall);
  }
  auto h2d = gpu::MeasureCopyBandwidth(0, max_out, /*device_to_device=*/false);
  auto d2d = gpu::MeasureCopyBandwidth(0, max_out, /*device_to_device=*/true);
  const double gb = total_out / 1e9;
  char line[1024];
  std::string table;
  table += "| GPU | file | layers | layers per launch | output GB | ratio | decode kernels GB/s | upload+decode GB/s | "
           "host wall GB/s | pinned H2D memcpy GB/s | D2D memcpy GB/s | tensors hash-checked |\n";
  table += "|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  std::snprintf(line, sizeof(line), "| %s | %s | %zu | %u | %.2f | %.3f | %.0f | %.1f | %.1f | %.1f | %.0f | %llu |\n",
                info.ok() ? info->name.c_str() : "?", path.c_str(), ix.groups.size(), batch, gb,
                static_cast<double>(total_in) / total_out, gb / best_kernels, gb / best_total, gb / best_wall,
                h2d.ok() ? *h2d / 1e9 : 0.0, d2d.ok() ? *d2d / 1e9 : 0.0,
                static_cast<unsigned long long>(checked));
  table += line;
  std::printf("%s", table.c_str());
  if (!markdown.empty()) std::ofstream(markdown, std::ios::app) << table << "\n";
  return 0;
}

}  // namespace
}  // namespace bigsmall

int main(int argc, char** argv) { return bigsmall::Run(argc, argv); }
