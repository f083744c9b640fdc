// Writes seed inputs for the decoder fuzzers: small tensor blobs of every
// split and coder, and small .bs files (plain and delta), into
// corpus/tensor_blob/ and corpus/bs_file/, and those .bs files plus
// tests/golden/valid/*.bs with an uncompressed index into corpus/bs_index/.
// Run once; the seeds are committed.
//
// usage: make_seeds OUT_DIR
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "codec/compress.h"
#include "codec/dtype.h"
#include "codec/rans_encode.h"
#include "codec/tensor_codec.h"
#include "zstd.h"

namespace fs = std::filesystem;
using namespace bigsmall;

static void Write(const fs::path& p, const std::vector<uint8_t>& b) {
  std::ofstream o(p, std::ios::binary);
  o.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

static std::vector<uint8_t> Values(size_t bytes, uint32_t seed, int spread) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(bytes);
  for (size_t i = 0; i < bytes; ++i) v[i] = static_cast<uint8_t>(i % 2 ? 60 + rng() % spread : rng());
  return v;
}

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const fs::path out = argv[1];
  fs::create_directories(out / "tensor_blob");
  fs::create_directories(out / "bs_file");
  int k = 0;
  for (const char* dtype : {"BF16", "F32", "F16", "U8", "I64"}) {
    for (Mode mode : {Mode::kBalanced, Mode::kStorage, Mode::kInference}) {
      EncodeOptions eo;
      eo.mode = mode;
      eo.chunk_elements = 96;
      const DtypeInfo info = ResolveDtype(dtype);
      auto blob = EncodeTensorBlob(Values(info.width * 300, k, 5), info, eo);
      if (!blob.ok()) return 1;
      Write(out / "tensor_blob" / (std::string(dtype) + "_" + ModeName(mode)), *blob);
      ++k;
    }
  }
  // Every blob form (docs/FORMAT.md §5.3-§5.6): a tiny tensor (raw), a
  // table of repeating rows (zstd: form 5, and form 3 written by hand as the
  // 1.2 writer did), Q4_1-like blocks as bytes (fields), a tensor of one
  // chunk (small planes).
  {
    const std::vector<uint8_t> tiny = {1, 2, 3, 4, 5, 6, 7, 8};
    std::vector<uint8_t> table;
    const auto row = Values(64, 7, 200);
    for (int r = 0; r < 64; ++r) table.insert(table.end(), row.begin(), row.end());
    std::mt19937 rng(9);
    std::vector<uint8_t> blocks;
    for (int b = 0; b < 2000; ++b) {
      const uint16_t d = static_cast<uint16_t>(0x2000 + rng() % 96), m = static_cast<uint16_t>(0xA400 + rng() % 64);
      for (uint16_t v : {d, m}) {
        blocks.push_back(static_cast<uint8_t>(v));
        blocks.push_back(static_cast<uint8_t>(v >> 8));
      }
      for (int q = 0; q < 16; ++q) blocks.push_back(static_cast<uint8_t>((5 + rng() % 7) | ((5 + rng() % 7) << 4)));
    }
    const auto small = Values(4 * 80, 11, 9);
    const std::pair<const char*, const std::vector<uint8_t>*> forms[] = {
        {"form_raw", &tiny}, {"form_zstd", &table}, {"form_fields", &blocks}, {"form_small_planes", &small}};
    for (const auto& [name, bytes] : forms) {
      auto blob = EncodeTensorBlob(*bytes, ResolveDtype(bytes == &table || bytes == &small ? "F32" : "U8"), {});
      if (!blob.ok()) return 1;
      Write(out / "tensor_blob" / name, *blob);
    }
    std::vector<uint8_t> form3(1 + ZSTD_compressBound(table.size()));
    form3[0] = 3;
    const size_t n = ZSTD_compress(form3.data() + 1, form3.size() - 1, table.data(), table.size(), 19);
    if (ZSTD_isError(n)) return 1;
    form3.resize(1 + n);
    Write(out / "tensor_blob" / "form_zstd_standard", form3);
    // A rans_segmented plane (§5.1), written by hand small: 4 chunks of 50
    // bytes, a table per 2 chunks (the writer uses it on planes of 256K+).
    std::vector<uint8_t> seg = {1, 0, 1, 1};
    auto put = [&seg](uint64_t v, int bytes) {
      for (int i = 0; i < bytes; ++i) seg.push_back(static_cast<uint8_t>(v >> (8 * i)));
    };
    put(200, 8);
    put(50, 4);
    put(4, 4);
    seg.push_back(5);
    put(2, 4);
    const auto data = Values(200, 13, 4);
    std::vector<std::vector<uint8_t>> streams(4);
    for (int t = 0; t < 2; ++t) {
      const auto freqs = rans::NormalizeFrequencies(rans::CountSymbols(absl::MakeConstSpan(data).subspan(t * 100, 100)));
      rans::AppendFrequencies(freqs, &seg);
      for (int c = 2 * t; c < 2 * t + 2; ++c) rans::EncodeChunk(freqs, absl::MakeConstSpan(data).subspan(c * 50, 50), &streams[c]);
    }
    for (const auto& st : streams) put(st.size(), 4);
    for (const auto& st : streams) seg.insert(seg.end(), st.begin(), st.end());
    std::vector<uint8_t> check(200);
    if (!DecodeTensorBlob(seg, absl::MakeSpan(check)).ok() || check != data) return 1;
    Write(out / "tensor_blob" / "coder_rans_segmented", seg);
  }
  // A tiny safetensors file, compressed plain (packed and aligned layouts)
  // and as a delta.
  const fs::path tmp = fs::temp_directory_path() / "bigsmall_seeds";
  fs::create_directories(tmp);
  std::string json = R"({"model.layers.0.w":{"dtype":"BF16","shape":[64],"data_offsets":[0,128]},"embed":{"dtype":"F32","shape":[8],"data_offsets":[128,160]}})";
  while (json.size() % 8) json.push_back(' ');
  for (int variant = 0; variant < 2; ++variant) {
    std::vector<uint8_t> f(8);
    const uint64_t n = json.size();
    std::memcpy(f.data(), &n, 8);
    f.insert(f.end(), json.begin(), json.end());
    auto data = Values(160, 100 + variant, 7);
    f.insert(f.end(), data.begin(), data.end());
    Write(tmp / ("m" + std::to_string(variant) + ".safetensors"), f);
  }
  CompressOptions co;
  co.force = true;
  if (!CompressPath((tmp / "m0.safetensors").string(), (out / "bs_file" / "plain.bs").string(), co).ok()) return 1;
  co.layout = Layout::kAligned;
  if (!CompressPath((tmp / "m0.safetensors").string(), (out / "bs_file" / "aligned.bs").string(), co).ok()) return 1;
  co.layout = Layout::kAuto;
  co.mode = Mode::kStorage;
  if (!CompressPath((tmp / "m0.safetensors").string(), (out / "bs_file" / "storage.bs").string(), co).ok()) return 1;
  co.base = (tmp / "m0.safetensors").string();
  if (!CompressPath((tmp / "m1.safetensors").string(), (out / "bs_file" / "delta.bs").string(), co).ok()) return 1;
  fs::remove_all(tmp);
  // bs_index_fuzz seeds: the same files, and the golden valid files, with the
  // index stored uncompressed (see bs_index_fuzz.cc).
  fs::create_directories(out / "bs_index");
  std::vector<fs::path> sources;
  for (const auto& e : fs::directory_iterator(out / "bs_file")) sources.push_back(e.path());
  const fs::path golden = fs::path(BIGSMALL_SOURCE_DIR) / "tests" / "golden" / "valid";
  for (const auto& e : fs::directory_iterator(golden)) {
    if (e.path().extension() == ".bs") sources.push_back(e.path());
  }
  for (const fs::path& src : sources) {
    std::ifstream in(src, std::ios::binary);
    std::vector<uint8_t> file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (file.size() < 64) return 1;
    uint64_t index_offset, stored, raw_size;
    std::memcpy(&index_offset, file.data() + 16, 8);
    std::memcpy(&stored, file.data() + 24, 8);
    std::memcpy(&raw_size, file.data() + 32, 8);
    std::vector<uint8_t> raw(raw_size);
    if (ZSTD_decompress(raw.data(), raw.size(), file.data() + index_offset, stored) != raw_size) return 1;
    file.resize(index_offset);
    file.insert(file.end(), raw.begin(), raw.end());
    Write(out / "bs_index" / src.filename(), file);
  }
  std::printf("seeds written to %s\n", out.c_str());
  return 0;
}
