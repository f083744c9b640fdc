// daemon_bench: streams a large LLM-shaped model through bigsmalld to an
// in-process client and compares, in the same run, with `bigsmall
// decompress` of the same file and a plain read of the uncompressed
// safetensors. Prints a markdown table and writes it to --out.
//
//   python3 bench/gen_llm.py --out /tmp/llm-2g.safetensors --size-gb 2
//   build/bench/daemon_bench --input /tmp/llm-2g.safetensors
//
// Page cache: every path reads files that were just written or read, so the
// numbers are warm-cache decode/serve throughput (what the daemon adds on
// top of storage), not storage speed.
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <ctime>
#include <ctime>
#include <climits>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/client.h"
#include "codec/bs_reader.h"
#include "codec/compress.h"
#include "codec/thread_pool.h"
#include "tests/integration/daemon_process.h"

namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point a) { return std::chrono::duration<double>(Clock::now() - a).count(); }

struct Row {
  std::string path;
  double seconds = 0;
  double gbps = 0;
  std::string layers_per_s = "-";
  std::string first_layer_ms = "-";
  std::string rss = "-";
};

uint64_t FileSize(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

// Runs a command; returns wall seconds and the child's peak RSS (kB).
bool RunTimed(const std::vector<std::string>& args, double* seconds, long* maxrss_kb) {
  auto start = Clock::now();
  pid_t pid = bigsmall::testing::Spawn(args, "/dev/null", "");
  int status = 0;
  rusage ru{};
  if (wait4(pid, &status, 0, &ru) != pid) return false;
  *seconds = Seconds(start);
  *maxrss_kb = ru.ru_maxrss;
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

// A process's CPU seconds (user, system) and minor faults, from /proc.
struct ProcCpu {
  double user = 0, sys = 0;
  long minflt = 0;
};
ProcCpu ReadProcCpu(pid_t pid) {
  ProcCpu c;
  std::string stat = bigsmall::testing::ReadFile("/proc/" + std::to_string(pid) + "/stat");
  size_t close = stat.rfind(')');
  if (close == std::string::npos) return c;
  std::istringstream in(stat.substr(close + 2));
  std::vector<std::string> f;
  for (std::string w; in >> w;) f.push_back(w);
  // Fields from 3 (state) on: minflt is field 10, utime 14, stime 15.
  if (f.size() < 13) return c;
  const double tick = static_cast<double>(::sysconf(_SC_CLK_TCK));
  c.minflt = std::atol(f[10 - 3].c_str());
  c.user = std::atof(f[14 - 3].c_str()) / tick;
  c.sys = std::atof(f[15 - 3].c_str()) / tick;
  return c;
}
ProcCpu Minus(const ProcCpu& a, const ProcCpu& b) {
  return {a.user - b.user, a.sys - b.sys, a.minflt - b.minflt};
}

// The library's all-core decode of the whole file: every group read into
// memory first (not timed), then one DecodeTensors batch (hashes checked)
// into output memory already faulted in (the fastest decode can go: what
// codec_bench's "dec Nt" measures). Best of `repeat`.
double ProcessCpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

double LibraryDecodeGbps(const std::string& bs, int repeat, int threads, double* cpu_s_per_gb) {
  auto reader = bigsmall::BsReader::OpenFile(bs);
  if (!reader.ok()) return 0;
  const bigsmall::BsIndex& ix = (*reader)->index();
  std::vector<std::vector<uint8_t>> groups(ix.groups.size());
  for (size_t g = 0; g < ix.groups.size(); ++g) {
    auto bytes = (*reader)->ReadGroup(static_cast<uint32_t>(g));
    if (!bytes.ok()) return 0;
    groups[g] = std::move(*bytes);
  }
  uint64_t total = 0;
  for (const auto& t : ix.tensors) total += t.info.size();
  std::vector<uint8_t> out(total, 1);  // faulted in
  std::vector<bigsmall::TensorDecodeJob> jobs;
  uint64_t at = 0;
  for (uint32_t t = 0; t < ix.tensors.size(); ++t) {
    const auto& bt = ix.tensors[t];
    if (bt.is_delta()) return 0;
    bigsmall::TensorDecodeJob job;
    job.reader = reader->get();
    job.tensor = t;
    job.group_bytes = groups[bt.group];
    job.out = absl::MakeSpan(out).subspan(at, bt.info.size());
    at += bt.info.size();
    jobs.push_back(job);
  }
  bigsmall::ThreadPool pool(threads);
  bigsmall::DecodeOptions options;
  options.pool = &pool;
  double best = 1e30, best_cpu = 1e30;
  for (int r = 0; r < repeat + 1; ++r) {  // the first run warms up
    auto start = Clock::now();
    const double cpu0 = ProcessCpuSeconds();
    absl::Status st = bigsmall::DecodeTensors(jobs, options);
    double s = Seconds(start);
    if (r > 0) best_cpu = std::min(best_cpu, ProcessCpuSeconds() - cpu0);
    if (!st.ok()) {
      std::fprintf(stderr, "library decode: %s\n", st.ToString().c_str());
      return 0;
    }
    if (r > 0) best = std::min(best, s);
  }
  *cpu_s_per_gb = best_cpu / (total / 1e9);
  return total / best / 1e9;
}

// `safetensors` load_file + clone of every tensor (torch), from page cache,
// on `threads` torch threads: loading the uncompressed file. Best of
// `repeat`, in a python3 child (0 when it cannot run: no torch).
double SafetensorsLoadCloneGbps(const std::string& python, const std::string& input, int repeat,
                                int threads, const std::string& work, double* cpu_s_per_gb) {
  const std::string script = work + "/daemon_bench_st.py";
  const std::string result = work + "/daemon_bench_st.out";
  std::ofstream(script) << absl::StrFormat(R"(import sys, time
import torch
from safetensors.torch import load_file
torch.set_num_threads(%d)
best = 1e30
best_cpu = 1e30
total = 0
for r in range(%d):
    t0 = time.perf_counter()
    c0 = time.process_time()
    d = load_file(sys.argv[1])
    c = {k: v.clone() for k, v in d.items()}
    s = time.perf_counter() - t0
    cpu = time.process_time() - c0
    total = sum(v.numel() * v.element_size() for v in c.values())
    del d, c
    best = min(best, s)
    best_cpu = min(best_cpu, cpu)
print("%%.6f %%.6f" %% (total / best / 1e9, best_cpu / (total / 1e9)), file=open(sys.argv[2], "w"))
)",
                                           threads, repeat);
  double seconds = 0;
  long rss = 0;
  ::unlink(result.c_str());
  if (!RunTimed({"/usr/bin/env", python, script, input, result}, &seconds, &rss)) return 0;
  std::istringstream text(bigsmall::testing::ReadFile(result));
  ::unlink(script.c_str());
  ::unlink(result.c_str());
  double gbps = 0;
  text >> gbps >> *cpu_s_per_gb;
  return gbps;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"daemon_bench: bigsmalld streaming vs bigsmall decompress vs plain read"};
  std::string input, bs, out = "bench/results/daemon.md", work = "/dev/shm";
  std::string bigsmalld = BIGSMALLD_PATH, cli = BIGSMALL_CLI_PATH, budget = "2G";
  uint32_t window = 4;
  int prefetch = 2;
  app.add_option("--input", input, "LLM-shaped .safetensors (bench/gen_llm.py)")->required();
  app.add_option("--bs", bs, "its .bs (default INPUT.bs, compressed if missing)");
  app.add_option("--out", out, "markdown output")->capture_default_str();
  app.add_option("--work", work, "scratch dir for the decompress output and socket")
      ->capture_default_str();
  app.add_option("--budget", budget, "daemon cache budget")->capture_default_str();
  app.add_option("--window", window, "client window")->capture_default_str();
  app.add_option("--prefetch", prefetch, "daemon prefetch depth")->capture_default_str();
  std::string python = "python3";
  int repeat = 3;
  app.add_option("--python", python, "python3 with torch + safetensors (the load + clone row)")
      ->capture_default_str();
  app.add_option("--repeat", repeat, "best of N for the library and safetensors rows")
      ->capture_default_str();
  std::string staging = "";
  app.add_option("--staging-bytes", staging, "bigsmalld --staging-bytes (default: the daemon's)");
  app.add_option("--bigsmalld", bigsmalld)->capture_default_str();
  app.add_option("--bigsmall", cli)->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (bs.empty()) bs = input + ".bs";
  if (FileSize(bs) == 0) {
    std::fprintf(stderr, "compressing %s ...\n", input.c_str());
    bigsmall::CompressOptions options;
    auto st = bigsmall::CompressPath(input, bs, options);
    if (!st.ok()) {
      std::fprintf(stderr, "compress: %s\n", st.status().ToString().c_str());
      return 1;
    }
  }
  const uint64_t original = FileSize(input);
  std::vector<Row> rows;

  // 1. Plain read of the uncompressed file.
  {
    std::vector<char> buf(16 << 20);
    int fd = ::open(input.c_str(), O_RDONLY);
    auto start = Clock::now();
    uint64_t total = 0;
    ssize_t n;
    while ((n = ::read(fd, buf.data(), buf.size())) > 0) total += static_cast<uint64_t>(n);
    ::close(fd);
    Row r;
    r.path = "plain read of .safetensors (16 MiB reads)";
    r.seconds = Seconds(start);
    r.gbps = total / r.seconds / 1e9;
    rows.push_back(r);
  }
  // 2. bigsmall decompress of the same .bs.
  double cli_gbps = 0;
  {
    std::string dest = work + "/daemon_bench_out.safetensors";
    Row r;
    long rss = 0;
    r.path = "`bigsmall decompress` (to tmpfs)";
    if (!RunTimed({cli, "decompress", bs, "-o", dest, "--force", "--quiet"}, &r.seconds, &rss)) {
      std::fprintf(stderr, "bigsmall decompress failed\n");
      return 1;
    }
    ::unlink(dest.c_str());
    r.gbps = original / r.seconds / 1e9;
    r.rss = absl::StrFormat("%.0f MiB", rss / 1024.0);
    cli_gbps = r.gbps;
    rows.push_back(r);
  }
  // 3. The daemon, streamed to this process.
  double daemon_gbps = 0, ttfl_ms = 0, first_handle_ms = 0, sigterm_s = 0;
  double layers_only_ttfl_ms = 0, layers_only_gbps = 0;
  {
    std::string dir = work + "/daemon_bench." + std::to_string(getpid());
    char bs_real[PATH_MAX];
    const std::string bs_abs = realpath(bs.c_str(), bs_real) != nullptr ? bs_real : bs;
    std::string bs_dir = bs_abs;
    bs_dir = bs_dir.substr(0, std::max<size_t>(bs_dir.find_last_of('/'), 1));
    ::mkdir(dir.c_str(), 0700);
    std::string socket = dir + "/s.sock";
    std::vector<std::string> daemon_args = {
        bigsmalld, "--socket", socket, "--shm-dir", dir + "/shm", "--cache-budget", budget,
        "--prefetch", std::to_string(prefetch), "--log-level", "warn",
        // The model must lie beneath a model directory: the .bs file's.
        "--model-dir", bs_dir};
    if (!staging.empty()) {
      daemon_args.push_back("--staging-bytes");
      daemon_args.push_back(staging);
    }
    pid_t pid = bigsmall::testing::Spawn(daemon_args, "", dir + "/daemon.log");
    auto client = bigsmall::client::Client::Connect(socket);
    if (!client.ok() || !(*client)->WaitReady(std::chrono::seconds(20)).ok()) {
      std::fprintf(stderr, "daemon did not start: %s\n",
                   bigsmall::testing::ReadFile(dir + "/daemon.log").c_str());
      bigsmall::testing::StopProcess(pid, SIGKILL, std::chrono::seconds(5));
      return 1;
    }
    auto open_start = Clock::now();
    auto desc = (*client)->OpenModel(bs_abs);  // the daemon wants an absolute path
    double open_ms = Seconds(open_start) * 1000;
    if (!desc.ok()) {
      std::fprintf(stderr, "open: %s\n", desc.status().ToString().c_str());
      bigsmall::testing::StopProcess(pid, SIGKILL, std::chrono::seconds(5));
      return 1;
    }
    bigsmall::client::StreamOptions so;
    so.include_non_layer = true;
    so.window = window;
    // One pass over the model: bytes, layers, time to the first handle (the
    // non-layer group: embeddings + head) and to transformer layer 0.
    struct Pass {
      double seconds = 0, first_ms = -1, layer0_ms = -1;
      uint64_t bytes = 0, layers = 0;
      ProcCpu daemon_cpu;  // the daemon's CPU time and minor faults in the pass
    };
    auto stream_once = [&](Pass* p) -> bool {
      const ProcCpu cpu0 = ReadProcCpu(pid);
      auto start = Clock::now();
      auto stream = (*client)->Stream(desc->model_id(), so);
      volatile uint8_t sink = 0;
      while (true) {
        auto layer = (*stream)->Next();
        if (!layer.ok()) {
          std::fprintf(stderr, "stream: %s\n", layer.status().ToString().c_str());
          return false;
        }
        if (*layer == nullptr) break;
        if (p->first_ms < 0) p->first_ms = Seconds(start) * 1000;
        if (p->layer0_ms < 0 && (*layer)->index() >= 0) p->layer0_ms = Seconds(start) * 1000;
        for (const auto& t : (*layer)->tensors()) {
          p->bytes += t.size;
          // Touch one byte per page so the client really maps the layer.
          for (uint64_t i = 0; i < t.size; i += 4096) sink = sink + t.data[i];
        }
        ++p->layers;
      }
      p->seconds = Seconds(start);
      p->daemon_cpu = Minus(ReadProcCpu(pid), cpu0);
      return true;
    };
    Pass cold, warm;
    if (!stream_once(&cold)) return 1;
    long daemon_hwm = bigsmall::testing::ProcStatusKb(pid, "VmHWM");
    rusage self{};
    getrusage(RUSAGE_SELF, &self);
    long client_hwm = self.ru_maxrss;
    // A second client pass: every layer from the daemon's cache.
    if (!stream_once(&warm)) return 1;
    // Layers only, decoded again (cache emptied): time to layer 0 when the
    // embeddings/head are fetched separately (GetTensors).
    Pass layers_only;
    {
      auto ev = (*client)->Evict(desc->model_id(), /*unload=*/false);
      if (!ev.ok()) {
        std::fprintf(stderr, "evict: %s\n", ev.status().ToString().c_str());
        return 1;
      }
      so.include_non_layer = false;
      if (!stream_once(&layers_only)) return 1;
    }
    auto stop_start = Clock::now();
    int stop_status = bigsmall::testing::StopProcess(pid, SIGTERM, std::chrono::seconds(20));
    double stop_s = Seconds(stop_start);
    std::string cmd = "rm -rf " + dir;
    (void)!system(cmd.c_str());
    if (stop_status < 0 || !WIFEXITED(stop_status) || WEXITSTATUS(stop_status) != 0) {
      std::fprintf(stderr, "bigsmalld did not exit cleanly on SIGTERM\n");
    }
    for (const Pass* p : {&cold, &warm, &layers_only}) {
      Row r;
      r.path = p == &cold
                   ? absl::StrFormat("bigsmalld -> client, decoding (budget %s, window %d, "
                                     "prefetch %d)",
                                     budget, window, prefetch)
               : p == &warm ? std::string("bigsmalld -> client, 2nd pass from the daemon cache")
                            : std::string("bigsmalld -> client, decoding, layers only (no "
                                          "non-layer group)");
      r.seconds = p->seconds;
      r.gbps = p->bytes / p->seconds / 1e9;
      r.layers_per_s = absl::StrFormat("%.1f", p->layers / p->seconds);
      r.first_layer_ms = absl::StrFormat("%.1f (first handle %.1f)", p->layer0_ms, p->first_ms);
      r.rss = absl::StrFormat("daemon CPU %.2f s user + %.2f s sys (%.3f s per GB), %.0fk faults",
                              p->daemon_cpu.user, p->daemon_cpu.sys,
                              (p->daemon_cpu.user + p->daemon_cpu.sys) / (p->bytes / 1e9),
                              p->daemon_cpu.minflt / 1e3);
      if (p == &cold) {
        r.first_layer_ms += absl::StrFormat(", open %.1f", open_ms);
        r.rss += absl::StrFormat("; peak RSS daemon %.0f MiB, client %.0f MiB",
                                 daemon_hwm / 1024.0, client_hwm / 1024.0);
      }
      rows.push_back(r);
    }
    daemon_gbps = rows[rows.size() - 3].gbps;
    layers_only_gbps = rows[rows.size() - 1].gbps;
    ttfl_ms = cold.layer0_ms;
    layers_only_ttfl_ms = layers_only.layer0_ms;
    first_handle_ms = cold.first_ms;
    sigterm_s = stop_s;
  }

  // 4. The library's all-core decode and the uncompressed file's load +
  // copy, on the same cores in the same run.
  const int threads = bigsmall::ThreadPool::DefaultThreads();
  double library_cpu = 0, st_cpu = 0;
  const double library_gbps = LibraryDecodeGbps(bs, repeat, threads, &library_cpu);
  {
    Row r;
    r.path = absl::StrFormat("library DecodeTensors, whole file, %d threads, warm output (best of %d)",
                             threads, repeat);
    r.gbps = library_gbps;
    r.seconds = library_gbps > 0 ? original / library_gbps / 1e9 : 0;
    r.rss = absl::StrFormat("CPU %.3f s per GB", library_cpu);
    rows.push_back(r);
  }
  const double st_gbps = SafetensorsLoadCloneGbps(python, input, repeat, threads, work, &st_cpu);
  {
    Row r;
    r.path = absl::StrFormat("safetensors load_file + clone (torch, %d threads, page cache, best of %d)",
                             threads, repeat);
    r.gbps = st_gbps;
    r.seconds = st_gbps > 0 ? original / st_gbps / 1e9 : 0;
    r.rss = absl::StrFormat("CPU %.3f s per GB", st_cpu);
    rows.push_back(r);
  }
  double load1 = 0;
  {
    std::ifstream la("/proc/loadavg");
    la >> load1;
  }

  std::string md = absl::StrFormat(
      "# daemon_bench\n\nInput: `%s` (%.2f GB, %.2f GB stored), %d cores, warm page cache.\n\n"
      "| path | seconds | GB/s (decoded output) | layers/s | layer 0 ms | CPU, faults, RSS |\n"
      "|---|---|---|---|---|---|\n",
      input, original / 1e9, FileSize(bs) / 1e9, std::thread::hardware_concurrency());
  for (const Row& r : rows) {
    md += absl::StrFormat("| %s | %.3f | %.2f | %s | %s | %s |\n", r.path, r.seconds, r.gbps,
                          r.layers_per_s, r.first_layer_ms, r.rss);
  }
  md += absl::StrFormat(
      "\nDaemon throughput (decoding pass) = %.0f%% of the CLI's decode throughput (target >= "
      "90%%); time to transformer layer 0 %.1f ms, to the first handle (non-layer group, sent "
      "first) %.1f ms, to layer 0 without the non-layer group %.1f ms (target < 100 ms for a "
      "7B-shaped model). SIGTERM to exit: %.0f ms. "
      "Daemon peak RSS includes the decoded layers it holds in its tmpfs cache (shared memory, "
      "mapped).\n",
      cli_gbps > 0 ? 100 * daemon_gbps / cli_gbps : 0, ttfl_ms, first_handle_ms,
      layers_only_ttfl_ms, sigterm_s * 1000);
  md += absl::StrFormat(
      "\nDaemon decoding pass = %.0f%% of the library's all-core decode (target >= 80%%), %.2fx "
      "safetensors load + clone (target > 1); layers-only pass %.0f%% of the library. "
      "1-minute load average at the end: %.2f.\n",
      library_gbps > 0 ? 100 * daemon_gbps / library_gbps : 0,
      st_gbps > 0 ? daemon_gbps / st_gbps : 0,
      library_gbps > 0 ? 100 * layers_only_gbps / library_gbps : 0, load1);
  std::fputs(md.c_str(), stdout);
  std::ofstream(out) << md;
  return 0;
}
