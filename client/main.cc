// bigsmall-client: talks to bigsmalld (stream, ls, stats, evict, ...).
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <thread>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/client.h"
#include "codec/hash.h"
#include "codec/status_util.h"
#include "google/protobuf/unknown_field_set.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "nlohmann/json.hpp"

namespace {

using bigsmall::client::Client;
using nlohmann::json;

int Fail(const absl::Status& status, bool as_json) {
  if (as_json) {
    std::cout << json{{"error", {{"code", absl::StatusCodeToString(status.code())},
                                 {"message", std::string(status.message())}}}}
                     .dump()
              << std::endl;
  }
  std::fprintf(stderr, "bigsmall-client: %s\n", status.ToString().c_str());
  return 1;
}

bool PathExists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

// MODEL is a path (opened on the daemon) or a model id from `ls`.
absl::StatusOr<bigsmall::v1::ModelDescription> Resolve(Client& client, const std::string& model) {
  if (PathExists(model)) {
    char resolved[PATH_MAX];
    return client.OpenModel(realpath(model.c_str(), resolved) ? resolved : model);
  }
  auto described = client.Describe(model);
  if (described.ok() || described.status().code() != absl::StatusCode::kNotFound) {
    return described;
  }
  return client.OpenModel(model);  // let the daemon say what is wrong
}

json SummaryJson(const bigsmall::v1::ModelSummary& m) {
  return {{"model_id", m.model_id()},         {"path", m.path()},
          {"num_layers", m.num_layers()},     {"original_bytes", m.original_bytes()},
          {"stored_bytes", m.stored_bytes()}, {"cached_layers", m.cached_layers()},
          {"cached_bytes", m.cached_bytes()}, {"active_leases", m.active_leases()},
          {"active_sessions", m.active_sessions()}, {"layer_decodes", m.layer_decodes()},
          {"layers_served", m.layers_served()}};
}

std::string Mib(uint64_t b) { return absl::StrFormat("%.1f MiB", b / 1048576.0); }

// `bigsmall-client health`: grpc.health.v1.Health/Check. The exit codes are
// a contract (container HEALTHCHECK, Kubernetes probes, start-up scripts):
enum HealthExit : int {
  kHealthServing = 0,         // the daemon answered SERVING
  kHealthNotServing = 2,      // it answered NOT_SERVING (or UNKNOWN): e.g. draining
  kHealthUnreachable = 3,     // no answer: no socket, refused, or no reply before --timeout
  kHealthUnknownService = 4,  // it answered, but does not know --service (NOT_FOUND)
};                            // 1: anything else (bad arguments, an unexpected error)

// grpc.health.v1.HealthCheckResponse.ServingStatus.
constexpr uint64_t kServingStatusServing = 1;
constexpr uint64_t kServingStatusNotServing = 2;
constexpr uint64_t kServingStatusServiceUnknown = 3;  // Watch only; Check says NOT_FOUND

struct HealthResult {
  int exit_code = kHealthUnreachable;
  std::string status;  // SERVING, NOT_SERVING, UNKNOWN, SERVICE_UNKNOWN, UNREACHABLE, ERROR
  std::string detail;  // why, for anything but SERVING
};

// One Check call. The health messages are two fields, and the health stubs
// are not installed with Debian's gRPC: the request and response go through
// the generic stub, (de)serialized with protobuf's UnknownFieldSet
// (HealthCheckRequest{string service = 1}, HealthCheckResponse{enum status = 1}).
// `wait_for_ready`: wait for a daemon that is not accepting yet (--wait)
// instead of failing on the first refused connect.
HealthResult HealthCheckOnce(const std::shared_ptr<grpc::Channel>& channel,
                             const std::string& service,
                             std::chrono::system_clock::time_point deadline, bool wait_for_ready) {
  google::protobuf::UnknownFieldSet request_fields;
  request_fields.AddLengthDelimited(1, service);
  std::string request_bytes;
  if (!request_fields.SerializeToString(&request_bytes)) {
    return {1, "ERROR", "cannot serialize the health request"};
  }
  // A completion queue drained on this thread: no gRPC thread runs our
  // code (the callback API's handoff is invisible to TSan: gRPC is not
  // instrumented).
  grpc::GenericStub generic(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(deadline);
  ctx.set_wait_for_ready(wait_for_ready);
  grpc::Slice slice(request_bytes);
  grpc::ByteBuffer request(&slice, 1), response;
  grpc::CompletionQueue cq;
  grpc::Status status;
  auto call = generic.PrepareUnaryCall(&ctx, "/grpc.health.v1.Health/Check", request, &cq);
  call->StartCall();
  call->Finish(&response, &status, reinterpret_cast<void*>(1));
  void* tag = nullptr;
  bool ok = false;
  // gRPC ends the call at its deadline; the extra second only bounds a call
  // that somehow never completes (then it is cancelled and waited for).
  auto next = cq.AsyncNext(&tag, &ok, deadline + std::chrono::seconds(1));
  bool finished = next == grpc::CompletionQueue::GOT_EVENT;
  if (!finished) {
    ctx.TryCancel();
    while (cq.Next(&tag, &ok) && tag != reinterpret_cast<void*>(1)) {
    }
  }
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  if (!finished) return {kHealthUnreachable, "UNREACHABLE", "no answer before the deadline"};
  if (!status.ok()) {
    switch (status.error_code()) {
      case grpc::StatusCode::NOT_FOUND:
        return {kHealthUnknownService, "SERVICE_UNKNOWN",
                absl::StrFormat("the daemon does not know service \"%s\"",
                                bigsmall::EscapeForLog(service))};
      case grpc::StatusCode::UNAVAILABLE:
        return {kHealthUnreachable, "UNREACHABLE", status.error_message()};
      case grpc::StatusCode::CANCELLED:  // a daemon shutting down cancels new calls
        return {kHealthUnreachable, "UNREACHABLE",
                absl::StrCat("the daemon cancelled the call (stopping?): ", status.error_message())};
      case grpc::StatusCode::DEADLINE_EXCEEDED:
        return {kHealthUnreachable, "UNREACHABLE", "no answer before the deadline"};
      default:
        return {1, "ERROR",
                absl::StrFormat("health check failed: %s: %s",
                                absl::StatusCodeToString(
                                    static_cast<absl::StatusCode>(status.error_code())),
                                status.error_message())};
    }
  }
  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (response.Dump(&slices).ok()) {
    for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  google::protobuf::UnknownFieldSet fields;
  if (!fields.ParseFromString(bytes)) {
    return {1, "ERROR", "the daemon's health response does not parse"};
  }
  uint64_t serving_status = 0;  // proto3 default: UNKNOWN (an absent field)
  for (int i = 0; i < fields.field_count(); ++i) {
    const auto& f = fields.field(i);
    if (f.number() == 1 && f.type() == google::protobuf::UnknownField::TYPE_VARINT) {
      serving_status = f.varint();
    }
  }
  if (serving_status == kServingStatusServing) return {kHealthServing, "SERVING", ""};
  if (serving_status == kServingStatusNotServing) {
    return {kHealthNotServing, "NOT_SERVING", "the daemon is not serving (draining?)"};
  }
  if (serving_status == kServingStatusServiceUnknown) {
    return {kHealthUnknownService, "SERVICE_UNKNOWN", "the daemon does not know the service"};
  }
  return {kHealthNotServing, "UNKNOWN", "the daemon reports an unknown serving status"};
}

// Without --wait: one call, deadline --timeout (a refused connect fails at
// once). With --wait: retries (every 100 ms) until SERVING or --timeout.
HealthResult HealthCheck(const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
                         double timeout_s, bool wait) {
  auto deadline = std::chrono::system_clock::now() +
                  std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  while (true) {
    auto now = std::chrono::system_clock::now();
    // Each try gets at most a second (a reconnect gets its chance to
    // finish) and never passes the overall deadline.
    auto try_deadline = wait ? std::min(deadline, now + std::chrono::seconds(1)) : deadline;
    HealthResult r = HealthCheckOnce(channel, service, try_deadline, wait);
    if (!wait || r.exit_code == kHealthServing || r.exit_code == 1) return r;
    if (std::chrono::system_clock::now() + std::chrono::milliseconds(100) >= deadline) return r;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

int RunHealth(const std::shared_ptr<grpc::Channel>& channel, const std::string& socket,
              const std::string& service, double timeout_s, bool wait, bool as_json) {
  HealthResult r = HealthCheck(channel, service, timeout_s, wait);
  if (as_json) {
    json j = {{"status", r.status}, {"service", service}, {"socket", socket},
              {"exit_code", r.exit_code}};
    if (!r.detail.empty()) j["detail"] = r.detail;
    std::cout << j.dump() << std::endl;
  } else if (r.exit_code == kHealthServing) {
    std::cout << "SERVING" << std::endl;
  } else {
    std::fprintf(stderr, "bigsmall-client: health: %s: %s (%s)\n", r.status.c_str(),
                 r.detail.c_str(), bigsmall::EscapeForLog(socket).c_str());
  }
  return r.exit_code;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bigsmall-client: streams model layers from bigsmalld"};
  app.require_subcommand(1);
  std::string socket = bigsmall::client::DefaultSocketPath();
  double timeout_s = 30;
  bool as_json = false;
  app.add_option("--socket", socket, "daemon socket path (or host:port)")->capture_default_str();
  app.add_option("--timeout", timeout_s,
                 "seconds per request, waiting for a starting or busy daemon (0: none)")
      ->capture_default_str();
  double idle_timeout_s = 60;
  app.add_option("--idle-timeout", idle_timeout_s,
                 "stream: seconds to wait for the daemon's next layer (0: forever)")
      ->capture_default_str();
  app.add_flag("--json", as_json, "machine-readable output");

  std::string model;
  int32_t from = 0, to = 0;
  uint32_t window = 0;
  bool verify = false, non_layer = false, unload = false, pin = false;
  std::string device;
  int delay_ms = 0;
  auto* stream = app.add_subcommand("stream", "stream a model's layers in order");
  stream->add_option("model", model, "model path or id")->required();
  stream->add_option("--from", from, "first layer index");
  stream->add_option("--to", to, "one past the last layer (0: end)");
  stream->add_option("--window", window, "unreleased layers (0: daemon default)");
  stream->add_flag("--non-layer", non_layer, "also receive the non-layer tensors first");
  stream->add_flag("--verify", verify,
                   "check every tensor: XXH3-128 of host layers; device layers on the device "
                   "(format 1.1 device checksums; 1.0 files: copied back and hashed, slow)");
  stream->add_option("--device", device,
                     "receive layers in GPU memory: cuda:N (the daemon's device N) or a GPU UUID");
  stream->add_flag("--pin", pin, "host layers: page-lock each arena mapping (needs CUDA)");
  stream->add_option("--delay-ms", delay_ms, "hold each layer this long (a slow consumer)");
  stream->add_flag("--json", as_json, "one JSON object per line");
  auto* open = app.add_subcommand("open", "open a model and print its description");
  open->add_option("model", model, "model path")->required();
  open->add_flag("--json", as_json, "JSON output");
  auto* ls = app.add_subcommand("ls", "list loaded models");
  ls->add_flag("--json", as_json, "JSON output");
  auto* stats = app.add_subcommand("stats", "daemon statistics");
  stats->add_flag("--json", as_json, "JSON output");
  auto* evict = app.add_subcommand("evict", "drop cached, unleased layers");
  evict->add_option("model", model, "model path or id (default: all)");
  evict->add_flag("--unload", unload, "also close the model");
  evict->add_flag("--json", as_json, "JSON output");
  std::string health_service;
  double health_timeout_s = 2;
  bool health_wait = false;
  auto* health = app.add_subcommand(
      "health",
      "ask grpc.health.v1.Health/Check; exit 0 SERVING, 2 NOT_SERVING (draining), "
      "3 unreachable (no socket, refused, no answer in time), 4 unknown --service, 1 other errors");
  health->add_option("--service", health_service, "the service to ask about (\"\": the daemon)")
      ->capture_default_str();
  health->add_option("--timeout", health_timeout_s,
                     "seconds to wait for the answer (with --wait: for SERVING); "
                     "no answer in time is unreachable (3)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  health->add_flag("--wait", health_wait,
                   "retry until SERVING or --timeout (start-up scripts: a daemon that is starting)");
  health->add_flag("--json", as_json, "one JSON object: status, service, socket, exit_code");
  CLI11_PARSE(app, argc, argv);

  bigsmall::client::ClientOptions options;
  options.rpc_timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  options.stream_idle_timeout =
      std::chrono::milliseconds(static_cast<int64_t>(idle_timeout_s * 1000));
  auto connected = Client::Connect(socket, options);
  if (!connected.ok()) return Fail(connected.status(), as_json);
  Client& client = **connected;

  if (*health) {
    return RunHealth(client.channel(), socket, health_service, health_timeout_s, health_wait,
                     as_json);
  }

  if (*stream) {
    auto desc = Resolve(client, model);
    if (!desc.ok()) return Fail(desc.status(), as_json);
    bigsmall::client::StreamOptions so;
    so.from_layer = from;
    so.to_layer = to;
    so.window = window;
    so.include_non_layer = non_layer;
    so.device = device;
    so.pin_host_memory = pin;
    auto start = std::chrono::steady_clock::now();
    auto s = client.Stream(desc->model_id(), so);
    if (!s.ok()) return Fail(s.status(), as_json);
    uint64_t layers = 0, bytes = 0, tensors = 0, verified = 0, mismatches = 0, hits = 0;
    double first_ms = -1;
    auto last = start;
    while (true) {
      auto layer = (*s)->Next();
      if (!layer.ok()) return Fail(layer.status(), as_json);
      if (*layer == nullptr) break;
      auto now = std::chrono::steady_clock::now();
      double ms = std::chrono::duration<double, std::milli>(now - last).count();
      last = now;
      if (first_ms < 0) first_ms = std::chrono::duration<double, std::milli>(now - start).count();
      uint64_t layer_bytes = 0, layer_bad = 0;
      for (const auto& t : (*layer)->tensors()) layer_bytes += t.size;
      if (verify) {
        std::vector<std::string> bad;
        absl::Status checked = (*layer)->Verify(&bad);
        if (!checked.ok() && checked.code() != absl::StatusCode::kDataLoss) {
          return Fail(checked, as_json);
        }
        layer_bad = bad.size();
        verified += (*layer)->tensors().size() - bad.size();
        for (const auto& name : bad) {
          std::fprintf(stderr, "bigsmall-client: layer %d tensor %s: checksum mismatch\n",
                       (*layer)->index(), bigsmall::EscapeForLog(name).c_str());
        }
      }
      ++layers;
      bytes += layer_bytes;
      tensors += (*layer)->tensors().size();
      mismatches += layer_bad;
      hits += (*layer)->cache_hit() ? 1 : 0;
      if (as_json) {
        json line = {{"layer", (*layer)->index()},
                     {"name", (*layer)->name()},
                     {"tensors", (*layer)->tensors().size()},
                     {"bytes", layer_bytes},
                     {"ms", ms},
                     {"cache_hit", (*layer)->cache_hit()}};
        if ((*layer)->on_device()) {
          line["device"] = (*layer)->device();
          line["arena_id"] = (*layer)->handle().memory().cuda().arena_id();
        }
        if (verify) line["verified"] = layer_bad == 0;
        std::cout << line.dump() << std::endl;
      } else {
        std::cout << absl::StrFormat("layer %4d %-24s %3d tensors %12s %8.2f ms%s%s%s\n",
                                     (*layer)->index(), (*layer)->name(),
                                     (*layer)->tensors().size(), Mib(layer_bytes), ms,
                                     (*layer)->on_device()
                                         ? absl::StrFormat("  cuda:%d", (*layer)->device())
                                         : "",
                                     (*layer)->cache_hit() ? "  cached" : "",
                                     verify ? (layer_bad == 0 ? "  verified" : "  MISMATCH") : "")
                  << std::flush;
      }
      if (delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    }
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    double gbps = secs > 0 ? bytes / secs / 1e9 : 0;
    if (as_json) {
      json summary = {{"model_id", desc->model_id()}, {"layers", layers},
                      {"tensors", tensors},           {"bytes", bytes},
                      {"seconds", secs},              {"gbps", gbps},
                      {"first_layer_ms", first_ms},   {"cache_hits", hits},
                      {"device", device.empty() ? "host" : device},
                      {"pinned", pin}};
      if (verify) {
        summary["verified_tensors"] = verified;
        summary["mismatches"] = mismatches;
      }
      std::cout << json{{"summary", summary}}.dump() << std::endl;
    } else {
      std::cout << absl::StrFormat(
          "%d layers, %d tensors, %s in %.3f s (%.2f GB/s), first layer %.1f ms%s\n", layers,
          tensors, Mib(bytes), secs, gbps, first_ms,
          verify ? absl::StrFormat(", %d tensors verified, %d mismatches", verified, mismatches)
                 : "");
    }
    return mismatches == 0 ? 0 : 3;
  }

  if (*open) {
    auto desc = client.OpenModel(model);
    if (!desc.ok()) return Fail(desc.status(), as_json);
    if (as_json) {
      json layers = json::array();
      for (const auto& l : desc->layers()) {
        layers.push_back({{"index", l.index()}, {"name", l.name()}, {"size", l.size()},
                          {"tensors", l.tensors_size()}});
      }
      std::cout << json{{"model_id", desc->model_id()}, {"path", desc->path()},
                        {"num_layers", desc->num_layers()}, {"num_tensors", desc->num_tensors()},
                        {"original_bytes", desc->original_bytes()},
                        {"stored_bytes", desc->stored_bytes()}, {"layers", layers}}
                       .dump()
                << std::endl;
    } else {
      std::cout << absl::StrFormat("%s  %s\n  %d layers, %d tensors, %s (stored %s)\n",
                                   desc->model_id(), desc->path(), desc->num_layers(),
                                   desc->num_tensors(), Mib(desc->original_bytes()),
                                   Mib(desc->stored_bytes()));
    }
    return 0;
  }

  if (*ls) {
    auto list = client.ListModels();
    if (!list.ok()) return Fail(list.status(), as_json);
    if (as_json) {
      json models = json::array();
      for (const auto& m : list->models()) models.push_back(SummaryJson(m));
      std::cout << json{{"models", models}}.dump() << std::endl;
    } else {
      std::cout << absl::StrFormat("%-14s %7s %12s %7s %7s %8s  %s\n", "MODEL", "LAYERS", "SIZE",
                                   "CACHED", "LEASES", "SESSIONS", "PATH");
      for (const auto& m : list->models()) {
        std::cout << absl::StrFormat("%-14s %7d %12s %7d %7d %8d  %s\n", m.model_id(),
                                     m.num_layers(), Mib(m.original_bytes()), m.cached_layers(),
                                     m.active_leases(), m.active_sessions(), m.path());
      }
    }
    return 0;
  }

  if (*stats) {
    auto s = client.Stats();
    if (!s.ok()) return Fail(s.status(), as_json);
    json models = json::array();
    for (const auto& m : s->models()) models.push_back(SummaryJson(m));
    json devices = json::array();
    for (const auto& d : s->devices()) {
      devices.push_back({{"name", d.name()},
                         {"gpu_uuid", d.gpu_uuid()},
                         {"emulated", d.emulated()},
                         {"cache_bytes", d.cache_bytes()},
                         {"cache_budget_bytes", d.cache_budget_bytes()},
                         {"peak_cache_bytes", d.peak_cache_bytes()},
                         {"cache_entries", d.cache_entries()},
                         {"active_leases", d.active_leases()},
                         {"cache_hits", d.cache_hits()},
                         {"cache_misses", d.cache_misses()},
                         {"cache_evictions", d.cache_evictions()},
                         {"arenas", d.arenas()},
                         {"arena_bytes", d.arena_bytes()},
                         {"layers_decoded", d.layers_decoded()},
                         {"verify_failures", d.verify_failures()},
                         {"host_verified_tensors", d.host_verified_tensors()},
                         {"uploaded_bytes", d.uploaded_bytes()}});
    }
    json j = {{"version", s->version()},
              {"io_backend", s->io_backend()},
              {"uptime_seconds", s->uptime_seconds()},
              {"bytes_read", s->bytes_read()},
              {"bytes_decoded", s->bytes_decoded()},
              {"layers_served", s->layers_served()},
              {"layer_decodes", s->layer_decodes()},
              {"cache_hits", s->cache_hits()},
              {"cache_misses", s->cache_misses()},
              {"cache_evictions", s->cache_evictions()},
              {"cache_bytes", s->cache_bytes()},
              {"peak_cache_bytes", s->peak_cache_bytes()},
              {"cache_budget_bytes", s->cache_budget_bytes()},
              {"cache_entries", s->cache_entries()},
              {"active_leases", s->active_leases()},
              {"active_sessions", s->active_sessions()},
              {"errors", s->errors()},
              {"decode_seconds", s->decode_seconds()},
              {"decode_gbps", s->decode_gbps()},
              {"gpu_backend", s->gpu_backend()},
              {"gpu_unavailable", s->gpu_unavailable()},
              {"hub_bytes_fetched", s->hub_bytes_fetched()},
              {"hub_retries", s->hub_retries()},
              {"hub_fetch_errors", s->hub_fetch_errors()},
              {"hub_cache_hit_opens", s->hub_cache_hit_opens()},
              {"hub_cache_hit_reads", s->hub_cache_hit_reads()},
              {"devices", devices},
              {"models", models}};
    std::cout << (as_json ? j.dump() : j.dump(2)) << std::endl;
    return 0;
  }

  if (*evict) {
    std::string id;
    if (!model.empty()) {
      auto desc = Resolve(client, model);
      if (!desc.ok()) return Fail(desc.status(), as_json);
      id = desc->model_id();
    }
    auto r = client.Evict(id, unload);
    if (!r.ok()) return Fail(r.status(), as_json);
    if (as_json) {
      std::cout << json{{"layers_evicted", r->layers_evicted()},
                        {"bytes_evicted", r->bytes_evicted()},
                        {"models_unloaded", r->models_unloaded()}}
                       .dump()
                << std::endl;
    } else {
      std::cout << absl::StrFormat("evicted %d layers (%s), unloaded %d models\n",
                                   r->layers_evicted(), Mib(r->bytes_evicted()),
                                   r->models_unloaded());
    }
    return 0;
  }
  return 0;
}
