#include "cli/info_command.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "cli/format_util.h"
#include "codec/bs_reader.h"
#include "codec/byte_source.h"
#include "codec/file_util.h"
#include "codec/format.h"
#include "codec/model_dir.h"
#include "codec/status_macros.h"
#include "codec/tensor_codec.h"

namespace bigsmall::cli {
namespace {

using Json = nlohmann::ordered_json;

struct DtypeTotals {
  uint64_t tensors = 0;
  uint64_t elements = 0;
  uint64_t original_bytes = 0;
  uint64_t stored_bytes = 0;
};
using DtypeMap = std::map<std::string, DtypeTotals>;

double BitsPerWeight(uint64_t stored_bytes, uint64_t elements) {
  return elements == 0 ? 0.0 : 8.0 * static_cast<double>(stored_bytes) / static_cast<double>(elements);
}

Json DtypesJson(const DtypeMap& dtypes) {
  Json out = Json::array();
  for (const auto& [name, d] : dtypes) {
    out.push_back({{"dtype", name},
                   {"tensors", d.tensors},
                   {"elements", d.elements},
                   {"original_bytes", d.original_bytes},
                   {"stored_bytes", d.stored_bytes},
                   {"ratio", Ratio(d.stored_bytes, d.original_bytes)},
                   {"bits_per_weight", BitsPerWeight(d.stored_bytes, d.elements)}});
  }
  return out;
}

std::string VersionString(const BsIndex& ix) { return absl::StrCat(ix.version_major, ".", ix.version_minor); }

// Info for one .bs file; adds its per-dtype totals to `dtypes`.
absl::StatusOr<Json> FileInfo(BsReader& reader, const std::string& path, bool with_tensors, DtypeMap& dtypes) {
  const BsIndex& ix = reader.index();
  Json j;
  j["path"] = path;
  j["kind"] = "file";
  j["format_version"] = VersionString(ix);
  j["checksums"] = ix.has_checksums();  // 1.1 device and group checksums
  j["mode"] = ModeName(ix.mode);
  j["writer"] = ix.writer;
  j["original_bytes"] = ix.original_size;
  j["stored_bytes"] = ix.stored_size;
  j["ratio"] = Ratio(ix.stored_size, ix.original_size);
  j["tensor_count"] = ix.tensors.size();
  uint64_t delta_tensors = 0;
  for (const auto& t : ix.tensors) delta_tensors += t.is_delta() ? 1 : 0;
  j["delta"] = ix.is_delta();
  j["base_name"] = ix.base_name;
  j["delta_tensors"] = delta_tensors;

  Json groups = Json::array();
  for (const BsGroup& g : ix.groups) {
    uint64_t original = 0;
    for (uint32_t t : g.tensors) original += ix.tensors[t].info.size();
    groups.push_back({{"name", g.name},
                      {"layer", g.layer},
                      {"tensors", g.tensors.size()},
                      {"original_bytes", original},
                      {"stored_bytes", g.size},
                      {"offset", g.offset}});
    if (g.has_checksum) groups.back()["checksum"] = absl::StrFormat("%016x", g.checksum);
  }
  j["groups"] = std::move(groups);

  DtypeMap local;
  Json tensors = Json::array();
  for (const BsTensor& t : ix.tensors) {
    for (DtypeMap* m : {&local, &dtypes}) {
      DtypeTotals& d = (*m)[t.info.dtype_name];
      ++d.tensors;
      d.elements += t.info.num_elements();
      d.original_bytes += t.info.size();
      d.stored_bytes += t.blob_size;
    }
    if (!with_tensors) continue;
    ASSIGN_OR_RETURN(std::vector<uint8_t> blob, ReadRange(reader.source(), t.blob_offset, t.blob_size));
    absl::StatusOr<BlobSummary> summary = SummarizeTensorBlob(blob);
    if (!summary.ok()) {
      return absl::DataLossError(
          absl::StrCat(path, ": tensor '", t.info.name, "': ", summary.status().message()));
    }
    std::vector<std::string> coders;
    Json planes = Json::array();
    for (const PlaneSummary& p : summary->planes) {
      coders.push_back(PlaneCoderName(static_cast<uint8_t>(p.coder)));
      Json pj = {{"coder", coders.back()}, {"raw_bytes", p.raw_bytes}, {"stored_bytes", p.stored_bytes}};
      if (p.context_plane >= 0) pj["context_plane"] = p.context_plane;
      planes.push_back(std::move(pj));
    }
    tensors.push_back({{"name", t.info.name},
                       {"dtype", t.info.dtype_name},
                       {"shape", t.info.shape},
                       {"original_bytes", t.info.size()},
                       {"stored_bytes", t.blob_size},
                       {"ratio", Ratio(t.blob_size, t.info.size())},
                       {"delta", t.is_delta()},
                       {"blob_offset", t.blob_offset},
                       {"chunk_elements", summary->chunk_elements},
                       {"form", BlobFormName(summary->form)},
                       {"coders", absl::StrJoin(coders, "/")},
                       {"planes", std::move(planes)}});
    if (summary->form == 4) tensors.back()["record_bytes"] = summary->record_bytes;
    if (t.has_device_checksum) tensors.back()["device_checksum"] = absl::StrFormat("%016x", t.device_checksum);
  }
  j["dtypes"] = DtypesJson(local);
  if (with_tensors) j["tensors"] = std::move(tensors);
  return j;
}

absl::StatusOr<Json> DirectoryInfo(const std::string& dir, const ModelManifest& manifest, uint64_t manifest_bytes,
                                   const InfoFiles& access, bool with_tensors) {
  DtypeMap dtypes;
  Json files = Json::array();
  Json copied = Json::array();
  uint64_t stored = manifest_bytes;
  uint64_t original = 0;
  uint64_t tensor_count = 0;
  uint64_t delta_tensors = 0;
  std::vector<std::string> modes, versions, writers, bases;
  auto add_unique = [](std::vector<std::string>& v, const std::string& s) {
    if (std::find(v.begin(), v.end(), s) == v.end()) v.push_back(s);
  };
  for (const ManifestEntry& e : manifest.entries) {
    const std::string path = (std::filesystem::path(dir) / e.stored).string();
    if (e.kind == ManifestKind::kCompressed) {
      ASSIGN_OR_RETURN(std::unique_ptr<BsReader> reader, access.open(e.stored));
      ASSIGN_OR_RETURN(Json f, FileInfo(*reader, path, with_tensors, dtypes));
      f["original_name"] = e.original;
      f["stored_name"] = e.stored;
      original += f["original_bytes"].get<uint64_t>();
      stored += f["stored_bytes"].get<uint64_t>();
      tensor_count += f["tensor_count"].get<uint64_t>();
      delta_tensors += f["delta_tensors"].get<uint64_t>();
      add_unique(modes, f["mode"].get<std::string>());
      add_unique(versions, f["format_version"].get<std::string>());
      add_unique(writers, f["writer"].get<std::string>());
      if (f["delta"].get<bool>()) add_unique(bases, f["base_name"].get<std::string>());
      files.push_back(std::move(f));
    } else {
      ASSIGN_OR_RETURN(uint64_t size, access.size(e.stored));
      original += size;
      stored += size;
      copied.push_back({{"name", e.original}, {"bytes", size}});
    }
  }
  Json j;
  j["path"] = dir;
  j["kind"] = "directory";
  j["format_version"] = absl::StrJoin(versions, ",");
  j["mode"] = absl::StrJoin(modes, ",");
  j["writer"] = absl::StrJoin(writers, ",");
  j["original_bytes"] = original;
  j["stored_bytes"] = stored;
  j["ratio"] = Ratio(stored, original);
  j["tensor_count"] = tensor_count;
  j["delta"] = !bases.empty();
  j["base_name"] = absl::StrJoin(bases, ",");
  j["delta_tensors"] = delta_tensors;
  j["dtypes"] = DtypesJson(dtypes);
  j["files"] = std::move(files);
  j["copied"] = std::move(copied);
  return j;
}

// Text table: the first row is the header; columns after the first are right-aligned.
class Table {
 public:
  void Add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  std::string Render(absl::string_view indent) const {
    std::vector<size_t> width;
    for (const auto& r : rows_) {
      if (width.size() < r.size()) width.resize(r.size(), 0);
      for (size_t c = 0; c < r.size(); ++c) width[c] = std::max(width[c], r[c].size());
    }
    std::string out;
    for (const auto& r : rows_) {
      std::string line(indent);
      for (size_t c = 0; c < r.size(); ++c) {
        const std::string pad(width[c] - r[c].size(), ' ');
        if (c == 0) {
          absl::StrAppend(&line, r[c], pad);
        } else if (c + 1 == r.size() && left_last_) {
          absl::StrAppend(&line, "  ", r[c]);
        } else {
          absl::StrAppend(&line, "  ", pad, r[c]);
        }
      }
      while (!line.empty() && line.back() == ' ') line.pop_back();
      absl::StrAppend(&out, line, "\n");
    }
    return out;
  }
  void LeftAlignLast() { left_last_ = true; }

 private:
  std::vector<std::vector<std::string>> rows_;
  bool left_last_ = false;
};

uint64_t U(const Json& j, const char* key) { return j[key].get<uint64_t>(); }

std::string FormatDtypes(const Json& dtypes) {
  Table t;
  t.Add({"dtype", "tensors", "original", "stored", "ratio", "bits/weight"});
  for (const Json& d : dtypes) {
    t.Add({d["dtype"].get<std::string>(), absl::StrCat(U(d, "tensors")), HumanBytes(U(d, "original_bytes")),
           HumanBytes(U(d, "stored_bytes")), Percent(U(d, "stored_bytes"), U(d, "original_bytes")),
           U(d, "elements") == 0 ? "-" : absl::StrFormat("%.2f", d["bits_per_weight"].get<double>())});
  }
  return t.Render("  ");
}

std::string FormatFileBody(const Json& f, absl::string_view indent) {
  std::string out;
  Table g;
  g.Add({"group", "layer", "tensors", "original", "stored", "ratio"});
  for (const Json& gr : f["groups"]) {
    const std::string name = gr["name"].get<std::string>();
    const int64_t layer = gr["layer"].get<int64_t>();
    g.Add({name.empty() ? "(non-layer)" : name, layer < 0 ? "-" : absl::StrCat(layer),
           absl::StrCat(U(gr, "tensors")), HumanBytes(U(gr, "original_bytes")), HumanBytes(U(gr, "stored_bytes")),
           Percent(U(gr, "stored_bytes"), U(gr, "original_bytes"))});
  }
  absl::StrAppend(&out, g.Render(indent));
  if (f.contains("tensors")) {
    Table t;
    t.Add({"tensor", "dtype", "shape", "original", "stored", "ratio", "planes"});
    t.LeftAlignLast();
    for (const Json& tj : f["tensors"]) {
      std::vector<uint64_t> shape = tj["shape"].get<std::vector<uint64_t>>();
      std::string coders = tj["coders"].get<std::string>();
      if (tj["delta"].get<bool>()) absl::StrAppend(&coders, " (delta)");
      t.Add({tj["name"].get<std::string>(), tj["dtype"].get<std::string>(),
             absl::StrCat("[", absl::StrJoin(shape, ","), "]"), HumanBytes(U(tj, "original_bytes")),
             HumanBytes(U(tj, "stored_bytes")), Percent(U(tj, "stored_bytes"), U(tj, "original_bytes")),
             coders});
    }
    absl::StrAppend(&out, "\n", t.Render(indent));
  }
  return out;
}

std::string FormatSummary(const Json& j) {
  std::string out;
  if (j.contains("hub")) {
    const Json& h = j["hub"];
    absl::StrAppend(&out, "  hub       ", h["repo"].get<std::string>(), "@", h["revision"].get<std::string>(),
                    ", commit ", h["commit"].get<std::string>(), h["from_cache"].get<bool>() ? " (from the cache)" : "",
                    "\n            read ", HumanBytes(U(h, "bytes_fetched")), " in ", U(h, "requests"),
                    " requests (headers and indexes only)\n");
  }
  absl::StrAppend(&out, "  format    .bs ", j["format_version"].get<std::string>(),
                  j.contains("checksums") && j["checksums"].get<bool>() ? " (device and group checksums)" : "",
                  ", mode ", j["mode"].get<std::string>(), ", written by ", j["writer"].get<std::string>(), "\n");
  absl::StrAppend(&out, "  original  ", HumanBytes(U(j, "original_bytes")), " (", U(j, "original_bytes"),
                  " bytes, ", U(j, "tensor_count"), " tensors)\n");
  absl::StrAppend(&out, "  stored    ", HumanBytes(U(j, "stored_bytes")), " (", U(j, "stored_bytes"),
                  " bytes, ", Percent(U(j, "stored_bytes"), U(j, "original_bytes")), " of the original)\n");
  if (j["delta"].get<bool>()) {
    absl::StrAppend(&out, "  delta     fine-tune delta against '", j["base_name"].get<std::string>(), "' (",
                    U(j, "delta_tensors"), " of ", U(j, "tensor_count"),
                    " tensors stored as deltas; decompress needs --base)\n");
  } else {
    absl::StrAppend(&out, "  delta     no (self-contained)\n");
  }
  return out;
}

}  // namespace

const char* PlaneCoderName(uint8_t coder) {
  switch (static_cast<PlaneCoder>(coder)) {
    case PlaneCoder::kRaw:
      return "raw";
    case PlaneCoder::kConstant:
      return "const";
    case PlaneCoder::kRans:
      return "rans";
    case PlaneCoder::kRansConditional:
      return "rans-ctx";
    case PlaneCoder::kZstd:
      return "zstd";
    case PlaneCoder::kRansSegmented:
      return "rans-seg";
  }
  return "unknown";
}

absl::StatusOr<Json> BuildInfo(const std::string& path, bool with_tensors) {
  if (!PathExists(path)) return absl::NotFoundError(absl::StrCat(path, ": no such file or directory"));
  if (IsDirectory(path)) {
    ASSIGN_OR_RETURN(ModelManifest manifest, ReadManifest(path));
    ASSIGN_OR_RETURN(uint64_t manifest_bytes, FileSize((std::filesystem::path(path) / kManifestName).string()));
    InfoFiles local;
    local.open = [&path](const std::string& stored) {
      return BsReader::OpenFile((std::filesystem::path(path) / stored).string());
    };
    local.size = [&path](const std::string& stored) {
      return FileSize((std::filesystem::path(path) / stored).string());
    };
    return DirectoryInfo(path, manifest, manifest_bytes, local, with_tensors);
  }
  ASSIGN_OR_RETURN(std::unique_ptr<BsReader> reader, BsReader::OpenFile(path));
  return BuildFileInfo(*reader, path, with_tensors);
}

absl::StatusOr<Json> BuildFileInfo(BsReader& reader, const std::string& path, bool with_tensors) {
  DtypeMap unused;
  return FileInfo(reader, path, with_tensors, unused);
}

absl::StatusOr<Json> BuildDirectoryInfo(const std::string& path, const ModelManifest& manifest,
                                        uint64_t manifest_bytes, const InfoFiles& files, bool with_tensors) {
  return DirectoryInfo(path, manifest, manifest_bytes, files, with_tensors);
}

std::string FormatInfo(const Json& j) {
  std::string out;
  const bool dir = j["kind"].get<std::string>() == "directory";
  absl::StrAppend(&out, j["path"].get<std::string>(), dir ? " (compressed model directory)" : "", "\n");
  absl::StrAppend(&out, FormatSummary(j));
  if (!dir) {
    absl::StrAppend(&out, "\n", FormatFileBody(j, "  "));
  } else {
    for (const Json& f : j["files"]) {
      absl::StrAppend(&out, "\n", f["original_name"].get<std::string>(), " -> ", f["stored_name"].get<std::string>(),
                      ": ", HumanBytes(U(f, "original_bytes")), " -> ", HumanBytes(U(f, "stored_bytes")), " (",
                      Percent(U(f, "stored_bytes"), U(f, "original_bytes")), ")\n");
      absl::StrAppend(&out, FormatFileBody(f, "  "));
    }
    if (!j["copied"].empty()) {
      absl::StrAppend(&out, "\ncopied verbatim:\n");
      Table t;
      for (const Json& c : j["copied"]) t.Add({c["name"].get<std::string>(), HumanBytes(U(c, "bytes"))});
      absl::StrAppend(&out, t.Render("  "));
    }
  }
  absl::StrAppend(&out, "\nby dtype:\n", FormatDtypes(j["dtypes"]));
  return out;
}

}  // namespace bigsmall::cli
