// The CLI's operations for Python (see _core.pyi, "codec_ops.cc"): compress,
// decompress, verify, info, compress_hub and upload call the same cores as
// `bigsmall <command>` (cli/commands.h, cli/hub_commands.h) and return what
// `--json` prints, as a dict; a failure raises the status the CLI reports
// (its code: the exception's .code). The work runs without the GIL.
#include <Python.h>

#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <cstdint>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/hub_commands.h"
#include "nlohmann/json.hpp"
#include "python/src/bindings.h"

namespace bigsmall::python {
namespace {

using Json = nlohmann::ordered_json;

// A new reference, or throws the Python error already set.
nb::object Steal(PyObject* o) {
  if (o == nullptr) throw nb::python_error();
  return nb::steal(o);
}

// JSON -> Python: objects become dicts (in order), arrays lists. Strings are
// UTF-8 with bad bytes as surrogates (surrogateescape, as os.fsdecode does
// with paths), so a path that is not UTF-8 comes back as Python names it.
nb::object ToPython(const Json& j) {
  switch (j.type()) {
    case Json::value_t::null:
    case Json::value_t::discarded:
      return nb::none();
    case Json::value_t::boolean:
      return nb::bool_(j.get<bool>());
    case Json::value_t::number_unsigned:
      return Steal(PyLong_FromUnsignedLongLong(j.get<uint64_t>()));
    case Json::value_t::number_integer:
      return Steal(PyLong_FromLongLong(j.get<int64_t>()));
    case Json::value_t::number_float:
      return nb::float_(j.get<double>());
    case Json::value_t::string: {
      const std::string& s = j.get_ref<const std::string&>();
      return Steal(PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "surrogateescape"));
    }
    case Json::value_t::array: {
      nb::list out;
      for (const Json& e : j) out.append(ToPython(e));
      return out;
    }
    case Json::value_t::object: {
      nb::dict out;
      for (auto it = j.begin(); it != j.end(); ++it) {
        const std::string& k = it.key();
        out[Steal(PyUnicode_DecodeUTF8(k.data(), static_cast<Py_ssize_t>(k.size()), "surrogateescape"))] =
            ToPython(it.value());
      }
      return out;
    }
    case Json::value_t::binary:
      break;
  }
  return nb::none();
}

// Runs a core without the GIL; its summary as a dict, or its status raised.
template <typename Fn>
nb::object RunCore(Fn&& fn) {
  absl::StatusOr<Json> j;
  {
    nb::gil_scoped_release release;
    j = fn();
  }
  if (!j.ok()) ThrowStatus(j.status());
  return ToPython(*j);
}

// The checks the command line's parser makes (a usage error there).
absl::Status CheckThreads(int threads) {
  if (threads < 0) return cli::UsageError(absl::StrCat("threads: ", threads, " is negative (0: all cores)"));
  return absl::OkStatus();
}

absl::Status SetMode(const std::string& mode, cli::CompressArgs& args) {
  args.storage = mode == "storage";
  args.inference = mode == "inference";
  if (mode == "balanced" || args.storage || args.inference) return absl::OkStatus();
  return cli::UsageError(absl::StrCat("mode: '", mode, "' is not balanced, storage or inference"));
}

// Python callers get no progress bar and nothing on stdout.
template <typename Args>
void Quiet(Args& args) {
  args.json = true;
  args.quiet = true;
}

}  // namespace

void RegisterCodecOps(nb::module_& m) {
  // A library does not disable its host interpreter's core dumps and ptrace
  // because a Hub call saw a token (the CLI does: cli/hub_commands.h).
  cli::SetHardenProcessWithToken(false);
  m.def(
      "compress",
      [](const std::string& src, const std::string& dst, const std::string& mode, const std::string& base,
         int threads, bool force, const std::string& layer_pattern, bool follow_symlinks) {
        cli::CompressArgs args;
        args.input = src;
        args.output = dst;
        CheckOk(SetMode(mode, args));
        CheckOk(CheckThreads(threads));
        args.base = base;
        args.threads = threads;
        args.force = force;
        args.layer_pattern = layer_pattern;
        args.follow_symlinks = follow_symlinks;
        Quiet(args);
        return RunCore([&] { return cli::CompressToJson(args); });
      },
      nb::arg("src"), nb::arg("dst") = "", nb::arg("mode") = "balanced", nb::arg("base") = "",
      nb::arg("threads") = 0, nb::arg("force") = false, nb::arg("layer_pattern") = "",
      nb::arg("follow_symlinks") = false,
      "As `bigsmall compress SRC -o DST --json` (a Hub name as SRC: compress_hub): a .safetensors "
      "file or a model directory into .bs; returns the summary dict.");
  m.def(
      "decompress",
      [](const std::string& src, const std::string& dst, const std::string& base, int threads, bool force) {
        cli::DecompressArgs args;
        args.input = src;
        args.output = dst;
        CheckOk(CheckThreads(threads));
        args.base = base;
        args.threads = threads;
        args.force = force;
        Quiet(args);
        return RunCore([&] { return cli::DecompressToJson(args); });
      },
      nb::arg("src"), nb::arg("dst") = "", nb::arg("base") = "", nb::arg("threads") = 0, nb::arg("force") = false,
      "As `bigsmall decompress SRC -o DST --json` (SRC may be a Hub name): the original files back.");
  m.def(
      "verify",
      [](const std::string& src, const std::string& against, const std::string& base, int threads) {
        cli::VerifyArgs args;
        args.input = src;
        args.against = against;
        CheckOk(CheckThreads(threads));
        args.base = base;
        args.threads = threads;
        Quiet(args);
        return RunCore([&] { return cli::VerifyToJson(args); });
      },
      nb::arg("src"), nb::arg("against") = "", nb::arg("base") = "", nb::arg("threads") = 0,
      "As `bigsmall verify SRC --json`: decodes everything and checks every hash (DATA_LOSS on a mismatch).");
  m.def(
      "info",
      [](const std::string& src, bool tensors) {
        cli::InfoArgs args;
        args.input = src;
        args.tensors = tensors;
        args.json = true;
        return RunCore([&] { return cli::InfoToJson(args); });
      },
      nb::arg("src"), nb::arg("tensors") = false,
      "What `bigsmall info SRC --json` prints (a local path or a Hub name).");
  m.def(
      "compress_hub",
      [](const std::string& repo, const std::string& output_dir, const std::string& mode, int threads, bool force) {
        cli::CompressArgs args;
        args.input = repo;
        args.output = output_dir;
        CheckOk(SetMode(mode, args));
        CheckOk(CheckThreads(threads));
        args.threads = threads;
        args.force = force;
        Quiet(args);
        return RunCore([&] { return cli::HubCompress(args); });
      },
      nb::arg("repo"), nb::arg("output_dir") = "", nb::arg("mode") = "balanced", nb::arg("threads") = 0,
      nb::arg("force") = false,
      "As `bigsmall compress owner/repo[@rev] -o OUTPUT_DIR --json`: downloads the repo into the HF cache "
      "and compresses it (with a model card).");
  m.def(
      "upload",
      [](const std::string& directory, const std::string& repo, const std::string& revision, bool private_repo,
         const std::string& commit_message, bool create) {
        cli::UploadArgs args;
        args.dir = directory;
        args.repo = repo;
        args.revision = revision;
        args.private_repo = private_repo;
        args.message = commit_message;
        args.create = create;
        Quiet(args);
        return RunCore([&] { return cli::HubUpload(args); });
      },
      nb::arg("directory"), nb::arg("repo"), nb::arg("revision") = "main", nb::arg("private") = false,
      nb::arg("commit_message") = "", nb::arg("create") = true,
      "As `bigsmall upload DIRECTORY REPO --json`: publishes every regular file as one commit.");
}

}  // namespace bigsmall::python
