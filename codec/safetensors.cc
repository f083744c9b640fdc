#include "codec/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/string_view.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "codec/format.h"
#include "codec/status_macros.h"

namespace bigsmall {
namespace {

using json = nlohmann::json;

// Deeper JSON than this is not a safetensors header; refusing it keeps the
// DOM (and any recursive walk of it) small.
constexpr size_t kMaxJsonDepth = 64;

// SAX handler: builds the DOM through nlohmann's own DOM builder (with
// exceptions off) and adds what a DOM cannot tell afterwards: duplicate keys
// (nlohmann keeps the last one silently), plus a nesting limit and the text of
// a syntax error.
class StrictSax {
 public:
  using number_integer_t = json::number_integer_t;
  using number_unsigned_t = json::number_unsigned_t;
  using number_float_t = json::number_float_t;
  using string_t = json::string_t;
  using binary_t = json::binary_t;

  explicit StrictSax(json& root) : dom_(root, /*allow_exceptions_=*/false) {}

  bool null() { return dom_.null(); }
  bool boolean(bool v) { return dom_.boolean(v); }
  bool number_integer(number_integer_t v) { return dom_.number_integer(v); }
  bool number_unsigned(number_unsigned_t v) { return dom_.number_unsigned(v); }
  bool number_float(number_float_t v, const string_t& s) { return dom_.number_float(v, s); }
  bool string(string_t& v) { return dom_.string(v); }
  bool binary(binary_t& v) { return dom_.binary(v); }

  bool start_object(std::size_t n) {
    if (!Enter()) return false;
    keys_.emplace_back();
    return dom_.start_object(n);
  }
  bool key(string_t& k) {
    // Tensors plus "__metadata__": stop early instead of building a huge DOM.
    if (keys_.size() == 1 && keys_.back().size() > size_t{kMaxTensors}) {
      error_ = absl::StrCat("more than ", kMaxTensors, " tensors (the limit)");
      return false;
    }
    if (!keys_.back().insert(k).second) {
      error_ = keys_.size() == 1 ? absl::StrCat("duplicate tensor name '", k, "'")
                                 : absl::StrCat("duplicate key '", k, "' in a JSON object");
      return false;
    }
    return dom_.key(k);
  }
  bool end_object() {
    keys_.pop_back();
    --depth_;
    return dom_.end_object();
  }
  bool start_array(std::size_t n) {
    if (!Enter()) return false;
    return dom_.start_array(n);
  }
  bool end_array() {
    --depth_;
    return dom_.end_array();
  }
  bool parse_error(std::size_t position, const std::string& last_token,
                   const nlohmann::detail::exception& ex) {
    std::string what = ex.what();
    // Drop nlohmann's "[json.exception.parse_error.101] " tag.
    if (const size_t close = what.find("] "); !what.empty() && what[0] == '[' &&
                                              close != std::string::npos) {
      what.erase(0, close + 2);
    }
    error_ = absl::StrCat("header is not valid JSON: ", what);
    return false;
  }

  const std::string& error() const { return error_; }

 private:
  bool Enter() {
    if (++depth_ > kMaxJsonDepth) {
      error_ = absl::StrCat("header JSON nests deeper than ", kMaxJsonDepth, " levels");
      return false;
    }
    return true;
  }

  nlohmann::detail::json_sax_dom_parser<json> dom_;
  std::vector<std::unordered_set<std::string>> keys_;  // one per open object
  size_t depth_ = 0;
  std::string error_;
};

// Non-negative JSON integer, or nullopt (negative, fractional, not a number).
std::optional<uint64_t> AsUint(const json& v) {
  if (v.is_number_unsigned()) return v.get<json::number_unsigned_t>();
  if (v.is_number_integer()) {  // nlohmann keeps "-0" and negatives as signed
    const json::number_integer_t i = v.get<json::number_integer_t>();
    if (i >= 0) return static_cast<uint64_t>(i);
  }
  return std::nullopt;
}

std::string ShapeText(const std::vector<uint64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

// Product of dimensions; nullopt on overflow. Any zero dimension makes the
// product zero even if the others would overflow.
std::optional<uint64_t> CheckedElements(const std::vector<uint64_t>& shape) {
  if (std::find(shape.begin(), shape.end(), uint64_t{0}) != shape.end()) return 0;
  uint64_t n = 1;
  for (uint64_t d : shape) {
    if (__builtin_mul_overflow(n, d, &n)) return std::nullopt;
  }
  return n;
}

absl::Status Prefixed(const absl::Status& s, absl::string_view what) {
  return absl::Status(s.code(), absl::StrCat(what, ": ", s.message()));
}

absl::Status ParseTensor(const std::string& name, const json& entry, uint64_t data_size,
                         absl::string_view what, SafetensorsTensor& out) {
  auto bad = [&](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": tensor '", name, "': ", parts...));
  };
  if (!entry.is_object()) return bad("entry is a JSON ", entry.type_name(), ", not an object");
  out.name = name;

  const auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end()) return bad("missing \"dtype\"");
  if (!dtype_it->is_string()) return bad("\"dtype\" is a JSON ", dtype_it->type_name(), ", not a string");
  out.dtype_name = dtype_it->get_ref<const json::string_t&>();
  if (out.dtype_name.empty()) return bad("\"dtype\" is empty");
  out.dtype = ResolveDtype(out.dtype_name);

  const auto shape_it = entry.find("shape");
  if (shape_it == entry.end()) return bad("missing \"shape\"");
  if (!shape_it->is_array()) return bad("\"shape\" is a JSON ", shape_it->type_name(), ", not an array");
  out.shape.reserve(shape_it->size());
  for (const json& dim : *shape_it) {
    std::optional<uint64_t> d = AsUint(dim);
    if (!d) return bad("\"shape\" has ", dim.dump(-1, ' ', false, json::error_handler_t::replace), ", not a non-negative integer");
    out.shape.push_back(*d);
  }

  const auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end()) return bad("missing \"data_offsets\"");
  if (!offsets_it->is_array() || offsets_it->size() != 2) {
    return bad("\"data_offsets\" is not an array [begin, end]");
  }
  std::optional<uint64_t> begin = AsUint((*offsets_it)[0]);
  std::optional<uint64_t> end = AsUint((*offsets_it)[1]);
  if (!begin || !end) return bad("\"data_offsets\" must hold two non-negative integers");
  out.begin = *begin;
  out.end = *end;
  if (out.begin > out.end) {
    return bad("data_offsets [", out.begin, ",", out.end, ") end before they begin");
  }
  if (out.end > data_size) {
    // Most often a truncated download, hence kDataLoss.
    return absl::DataLossError(absl::StrCat(what, ": tensor '", name, "': data_offsets [",
                                            out.begin, ",", out.end,
                                            ") past end of data (size ", data_size, ")"));
  }

  const std::optional<uint64_t> elements = CheckedElements(out.shape);
  if (!elements) return bad("shape ", ShapeText(out.shape), " has more than 2^64 elements");
  if (out.dtype.known) {
    uint64_t bits;
    if (__builtin_mul_overflow(*elements, uint64_t{out.dtype.bits}, &bits)) {
      return bad("shape ", ShapeText(out.shape), " of ", out.dtype_name, " is over 2^64 bits");
    }
    const uint64_t expected = bits / 8 + (bits % 8 != 0 ? 1 : 0);
    if (out.size() != expected) {
      return bad(out.dtype_name, " with shape ", ShapeText(out.shape), " needs ", expected,
                 " bytes but data_offsets [", out.begin, ",", out.end, ") hold ", out.size());
    }
  }
  return absl::OkStatus();
}

}  // namespace

uint64_t SafetensorsTensor::num_elements() const {
  // Saturates instead of wrapping for shapes that never passed the parser.
  return CheckedElements(shape).value_or(std::numeric_limits<uint64_t>::max());
}

absl::StatusOr<uint64_t> ParseSafetensorsHeaderLength(absl::Span<const uint8_t> first8,
                                                      uint64_t file_size) {
  if (file_size < 8 || first8.size() < 8) {
    return absl::DataLossError(absl::StrCat("file of ", std::min<uint64_t>(file_size, first8.size()),
                                            " bytes is too short for the 8-byte safetensors "
                                            "header length"));
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | first8[i];
  if (n < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("safetensors header length ", n, " is too small for a JSON object"));
  }
  if (n > kMaxSafetensorsHeader) {
    return absl::InvalidArgumentError(absl::StrCat("safetensors header length ", n,
                                                   " exceeds the limit of ",
                                                   kMaxSafetensorsHeader, " bytes"));
  }
  if (n > file_size - 8) {
    return absl::DataLossError(absl::StrCat("safetensors header length ", n,
                                            " runs past end of file (size ", file_size, ")"));
  }
  return n;
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(absl::Span<const uint8_t> prefix,
                                                         uint64_t file_size,
                                                         absl::string_view what) {
  absl::StatusOr<uint64_t> length =
      ParseSafetensorsHeaderLength(prefix.subspan(0, std::min<size_t>(prefix.size(), 8)),
                                   file_size);
  if (!length.ok()) return Prefixed(length.status(), what);
  const uint64_t n = *length;
  if (prefix.size() - 8 < n) {
    return absl::DataLossError(absl::StrCat(what, ": only ", prefix.size(),
                                            " bytes given for a header of ", 8 + n, " bytes"));
  }

  SafetensorsHeader header;
  header.header_bytes = 8 + n;
  header.data_size = file_size - header.header_bytes;
  const uint8_t* text = prefix.data() + 8;
  if (text[0] != '{') {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": header does not start with '{'"));
  }

  // nlohmann's lexer reads a NUL byte as end of input, so "{}\0junk" would
  // pass strict parsing. Valid JSON never holds a raw NUL (strings escape it).
  if (std::memchr(text, 0, n) != nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": header is not valid JSON: it contains a NUL byte"));
  }

  json root;
  StrictSax sax(root);
  // strict=true: only whitespace (the spec's space padding) may follow the object.
  const bool parsed = json::sax_parse(text, text + n, &sax, nlohmann::detail::input_format_t::json,
                                      /*strict=*/true, /*ignore_comments=*/false);
  if (!parsed || !sax.error().empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": ", sax.error().empty() ? "header is not valid JSON" : sax.error()));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": header is a JSON ", root.type_name(), ", not an object"));
  }

  size_t count = root.size();
  const auto meta_it = root.find("__metadata__");
  if (meta_it != root.end()) {
    --count;
    if (!meta_it->is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": \"__metadata__\" is a JSON ", meta_it->type_name(), ", not an object"));
    }
    for (auto it = meta_it->begin(); it != meta_it->end(); ++it) {
      if (!it.value().is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat(what, ": \"__metadata__\" value of '", it.key(), "' is a JSON ",
                         it.value().type_name(), ", not a string"));
      }
    }
    // Strings were UTF-8-checked by the parser; `replace` makes dump() unable to throw.
    header.metadata_json = meta_it->dump(-1, ' ', false, json::error_handler_t::replace);
  }
  if (count > kMaxTensors) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", count,
                                                   " tensors exceed the limit of ", kMaxTensors));
  }

  header.tensors.reserve(count);
  for (auto it = root.begin(); it != root.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    SafetensorsTensor tensor;
    RETURN_IF_ERROR(ParseTensor(it.key(), it.value(), header.data_size, what, tensor));
    header.tensors.push_back(std::move(tensor));
  }

  // Sorted ranges must tile [0, data_size) exactly. Empty tensors sort before
  // a non-empty one at the same offset, so they never count as overlaps.
  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const SafetensorsTensor& a, const SafetensorsTensor& b) {
              if (a.begin != b.begin) return a.begin < b.begin;
              if (a.end != b.end) return a.end < b.end;
              return a.name < b.name;
            });
  uint64_t covered = 0;
  const SafetensorsTensor* previous = nullptr;
  for (const SafetensorsTensor& t : header.tensors) {
    if (t.begin < covered) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": tensor '", t.name, "': data_offsets [", t.begin, ",", t.end,
          ") overlap tensor '", previous->name, "' [", previous->begin, ",", previous->end, ")"));
    }
    if (t.begin > covered) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": data bytes [", covered, ",",
                                                     t.begin, ") belong to no tensor (hole "
                                                     "before tensor '", t.name, "')"));
    }
    covered = t.end;
    previous = &t;
  }
  if (covered != header.data_size) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": data bytes [", covered, ",",
                                                   header.data_size,
                                                   ") at the end belong to no tensor"));
  }
  return header;
}

namespace {

bool IsLayerContainer(absl::string_view segment) {
  return segment == "layers" || segment == "layer" || segment == "h" || segment == "blocks" ||
         segment == "block";
}

// Parses a run of decimal digits; nullopt if empty, not all digits, or too long.
std::optional<int64_t> ParseLayerNumber(absl::string_view digits) {
  if (digits.empty() || digits.size() > 18) return std::nullopt;
  int64_t n = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return std::nullopt;
    n = n * 10 + (c - '0');
  }
  return n;
}

LayerKey CustomLayerOf(absl::string_view name, absl::string_view pattern) {
  const size_t at = pattern.find("{N}");
  if (at == absl::string_view::npos || pattern.find("{N}", at + 3) != absl::string_view::npos) {
    return {};
  }
  const absl::string_view prefix = pattern.substr(0, at);
  const absl::string_view suffix = pattern.substr(at + 3);
  if (name.substr(0, prefix.size()) != prefix) return {};
  size_t digits_end = prefix.size();
  while (digits_end < name.size() && name[digits_end] >= '0' && name[digits_end] <= '9') {
    ++digits_end;
  }
  const std::optional<int64_t> layer =
      ParseLayerNumber(name.substr(prefix.size(), digits_end - prefix.size()));
  if (!layer) return {};
  if (name.substr(digits_end, suffix.size()) != suffix) return {};
  return {*layer, std::string(name.substr(0, digits_end))};
}

}  // namespace

LayerKey LayerOf(absl::string_view tensor_name, absl::string_view custom_pattern) {
  if (!custom_pattern.empty()) return CustomLayerOf(tensor_name, custom_pattern);
  // Walk the dot-separated segments looking for "<container>.<N>." with more
  // after it: model.layers.N., transformer.h.N., encoder.layer.N., blocks.N., ...
  size_t start = 0;
  while (start < tensor_name.size()) {
    const size_t dot = tensor_name.find('.', start);
    if (dot == absl::string_view::npos) break;
    if (IsLayerContainer(tensor_name.substr(start, dot - start))) {
      const size_t num_start = dot + 1;
      const size_t num_end = tensor_name.find('.', num_start);
      if (num_end == absl::string_view::npos) break;  // N must be followed by '.'
      if (std::optional<int64_t> layer =
              ParseLayerNumber(tensor_name.substr(num_start, num_end - num_start))) {
        return {*layer, std::string(tensor_name.substr(0, num_end))};
      }
    }
    start = dot + 1;
  }
  return {};
}

}  // namespace bigsmall
