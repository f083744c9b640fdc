// Codec benchmark harness: for each safetensors file, measures side by side
// the per-tensor order-0 entropy floor, our ratio in every mode, zstd -3 and
// -19, and library encode/decode throughput on 1 thread and on all threads
// (encode: in-memory blobs; decode: the .bs file CompressPath writes, its
// groups in memory, through the batch DecodeTensors path, every tensor hash
// checked). Prints a
// markdown table and one JSON object per file and mode (--json-out).
//
// usage: codec_bench [--json-out FILE] [--repeat N] [--skip-zstd19] FILE.safetensors...
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "codec/base_model.h"
#include "codec/bs_reader.h"
#include "codec/compress.h"
#include "codec/hash.h"
#include "codec/tensor_codec.h"
#include "codec/thread_pool.h"
#include "nlohmann/json.hpp"
#include "zstd.h"

namespace bigsmall {
namespace {

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Single-thread figures use this thread's CPU time, so that other processes
// on a shared machine do not distort them; multi-thread figures use wall time.
double ThreadSeconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// Times fn(): thread CPU seconds when single-threaded, wall seconds otherwise.
template <typename Fn>
double TimeIt(bool single_thread, Fn&& fn) {
  if (single_thread) {
    const double t0 = ThreadSeconds();
    fn();
    return ThreadSeconds() - t0;
  }
  const auto t0 = Clock::now();
  fn();
  return Since(t0);
}

struct Tensor {
  SafetensorsTensor info;
  std::vector<uint8_t> bytes;
};

// Empirical order-0 entropy (bits) of the whole element value.
double ElementEntropyBits(const std::vector<uint8_t>& bytes, uint32_t width) {
  const size_t n = width ? bytes.size() / width : 0;
  if (n == 0) return 0;
  std::vector<uint64_t> values(n);
  for (size_t i = 0; i < n; ++i) {
    uint64_t v = 0;
    std::memcpy(&v, bytes.data() + i * width, width);
    values[i] = v;
  }
  std::sort(values.begin(), values.end());
  double bits = 0;
  size_t run = 1;
  for (size_t i = 1; i <= n; ++i) {
    if (i < n && values[i] == values[i - 1]) {
      ++run;
      continue;
    }
    const double p = static_cast<double>(run) / n;
    bits -= run * std::log2(p);
    run = 1;
  }
  return bits;
}

size_t ZstdSize(const std::vector<uint8_t>& data, int level, int workers) {
  ZSTD_CCtx* c = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, level);
  if (workers > 1) ZSTD_CCtx_setParameter(c, ZSTD_c_nbWorkers, workers);
  std::vector<uint8_t> out(ZSTD_compressBound(data.size()));
  size_t n = ZSTD_compress2(c, out.data(), out.size(), data.data(), data.size());
  ZSTD_freeCCtx(c);
  return ZSTD_isError(n) ? 0 : n;
}

struct Timing {
  double encode_1t = 0, encode_mt = 0, decode_1t = 0, decode_mt = 0;  // GB/s of original bytes
};

int Run(int argc, char** argv) {
  std::string json_out;
  int repeat = 3;
  bool zstd19 = true;
  std::string only_mode;
  std::vector<std::string> files;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--json-out" && i + 1 < argc) json_out = argv[++i];
    else if (a == "--repeat" && i + 1 < argc) repeat = std::max(1, std::atoi(argv[++i]));
    else if (a == "--skip-zstd19") zstd19 = false;
    else if (a == "--mode" && i + 1 < argc) only_mode = argv[++i];
    else files.push_back(a);
  }
  if (files.empty()) {
    std::fprintf(stderr, "usage: codec_bench [--json-out FILE] [--repeat N] [--skip-zstd19] [--mode M] FILE...\n");
    return 2;
  }
  const int threads = ThreadPool::DefaultThreads();
  ThreadPool pool(threads);
  std::vector<nlohmann::json> rows;
  std::printf("decoder: %s, threads: %d\n", DecoderImplName(BestDecoderImpl()), threads);
  std::printf("| file | mode | floor bits/w | ours bits/w | floor %% | ours %% | zstd-3 %% | zstd-19 %% | enc 1t GB/s | enc %dt GB/s | dec 1t GB/s | dec %dt GB/s | compress wall s |\n",
              threads, threads);
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const std::string& path : files) {
    auto f = OpenSafetensors(path);
    if (!f.ok()) {
      std::fprintf(stderr, "%s\n", std::string(f.status().message()).c_str());
      return 1;
    }
    std::vector<Tensor> tensors;
    std::vector<uint8_t> all;
    double floor_bits = 0, elements = 0;
    for (const auto& t : f->header.tensors) {
      auto bytes = ReadRange(*f->source, f->header.header_bytes + t.begin, t.size());
      if (!bytes.ok()) return 1;
      floor_bits += ElementEntropyBits(*bytes, t.dtype.width);
      elements += t.dtype.width ? static_cast<double>(t.size()) / t.dtype.width : 0;
      all.insert(all.end(), bytes->begin(), bytes->end());
      tensors.push_back({t, *std::move(bytes)});
    }
    const double total = static_cast<double>(all.size());
    const double z3 = ZstdSize(all, 3, 1) / total;
    const double z19 = zstd19 ? ZstdSize(all, 19, threads) / total : NAN;
    for (Mode mode : {Mode::kBalanced, Mode::kStorage, Mode::kInference}) {
      if (!only_mode.empty() && only_mode != ModeName(mode)) continue;
      Timing tm;
      std::vector<std::vector<uint8_t>> blobs(tensors.size());
      for (int pass = 0; pass < 2; ++pass) {
        ThreadPool* p = pass == 0 ? nullptr : &pool;
        double best = 1e30;
        for (int r = 0; r < (pass == 0 ? 1 : repeat); ++r) {
          bool ok = true;
          // All threads: tensors concurrently (each chunk-parallel), as the
          // library's file paths do.
          auto encode = [&](size_t i) -> absl::Status {
            EncodeOptions eo;
            eo.mode = mode;
            eo.pool = p;
            auto b = EncodeTensorBlob(tensors[i].bytes, tensors[i].info.dtype, eo);
            if (!b.ok()) return b.status();
            blobs[i] = *std::move(b);
            return absl::OkStatus();
          };
          best = std::min(best, TimeIt(pass == 0, [&] {
            if (p != nullptr) {
              ok = p->ParallelFor(tensors.size(), encode).ok();
            } else {
              for (size_t i = 0; i < tensors.size() && ok; ++i) ok = encode(i).ok();
            }
          }));
          if (!ok) return 1;
        }
        (pass == 0 ? tm.encode_1t : tm.encode_mt) = total / best / 1e9;
      }
      // The real product: a .bs file written by CompressPath (index, alignment included),
      // decoded through the library's batch path (DecodeTensors: every chunk of every tensor on
      // one work queue, every tensor's XXH3-128 checked), from its groups held in memory.
      const std::string tmp = (std::filesystem::temp_directory_path() /
                               ("codec_bench_" + std::to_string(::getpid()) + ".bs")).string();
      CompressOptions co;
      co.mode = mode;
      co.force = true;
      auto t0 = Clock::now();
      auto stats = CompressPath(path, tmp, co);
      const double wall = Since(t0);
      if (!stats.ok()) {
        std::fprintf(stderr, "%s\n", std::string(stats.status().message()).c_str());
        return 1;
      }
      auto reader = BsReader::OpenFile(tmp);
      if (!reader.ok()) {
        std::fprintf(stderr, "%s\n", std::string(reader.status().message()).c_str());
        return 1;
      }
      const BsIndex& ix = (*reader)->index();
      std::vector<std::vector<uint8_t>> groups(ix.groups.size());
      for (uint32_t g = 0; g < ix.groups.size(); ++g) {
        auto bytes = (*reader)->ReadGroup(g);
        if (!bytes.ok()) return 1;
        groups[g] = *std::move(bytes);
      }
      std::filesystem::remove(tmp);
      std::vector<std::vector<uint8_t>> outs(ix.tensors.size());
      std::vector<TensorDecodeJob> jobs(ix.tensors.size());
      for (uint32_t i = 0; i < ix.tensors.size(); ++i) {
        outs[i].resize(ix.tensors[i].info.size());
        jobs[i].reader = reader->get();
        jobs[i].tensor = i;
        jobs[i].group_bytes = groups[ix.tensors[i].group];
        jobs[i].out = absl::MakeSpan(outs[i]);
      }
      for (int pass = 0; pass < 2; ++pass) {
        DecodeOptions d;
        d.pool = pass == 0 ? nullptr : &pool;
        double best = 1e30;
        for (int r = 0; r < repeat; ++r) {
          absl::Status st;
          best = std::min(best, TimeIt(pass == 0, [&] { st = DecodeTensors(jobs, d); }));
          if (!st.ok()) {
            std::fprintf(stderr, "decode failed in %s: %s\n", path.c_str(), std::string(st.message()).c_str());
            return 1;
          }
        }
        (pass == 0 ? tm.decode_1t : tm.decode_mt) = total / best / 1e9;
      }
      const double file_ratio = static_cast<double>(stats->output_bytes) / stats->input_bytes;
      uint64_t blob_total = 0;
      for (const auto& b : blobs) blob_total += b.size();
      const double ours_bits = blob_total * 8.0 / elements;
      const double floor_bpw = floor_bits / elements;
      const double floor_ratio = floor_bits / 8 / total;
      std::printf("| %s | %s | %.3f | %.3f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |\n",
                  std::filesystem::path(path).filename().c_str(), ModeName(mode), floor_bpw, ours_bits,
                  100 * floor_ratio, 100 * file_ratio, 100 * z3, 100 * z19, tm.encode_1t, tm.encode_mt,
                  tm.decode_1t, tm.decode_mt, wall);
      std::fflush(stdout);
      rows.push_back({{"file", path},
                      {"mode", ModeName(mode)},
                      {"elements", elements},
                      {"data_bytes", total},
                      {"floor_bits_per_weight", floor_bpw},
                      {"floor_ratio", floor_ratio},
                      {"ours_bits_per_weight", ours_bits},
                      {"ours_ratio_file", file_ratio},
                      {"ours_ratio_blobs", blob_total / total},
                      {"zstd3_ratio", z3},
                      {"zstd19_ratio", zstd19 ? nlohmann::json(z19) : nlohmann::json(nullptr)},
                      {"encode_gbps_1t", tm.encode_1t},
                      {"encode_gbps_mt", tm.encode_mt},
                      {"decode_gbps_1t", tm.decode_1t},
                      {"decode_gbps_mt", tm.decode_mt},
                      {"threads", threads},
                      {"decoder", DecoderImplName(BestDecoderImpl())},
                      {"compress_wall_s", wall}});
    }
  }
  if (!json_out.empty()) {
    std::ofstream o(json_out);
    o << nlohmann::json(rows).dump(1) << "\n";
  }
  return 0;
}

}  // namespace
}  // namespace bigsmall

int main(int argc, char** argv) { return bigsmall::Run(argc, argv); }
