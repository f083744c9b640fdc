// Google Benchmark micro-benchmarks of the rANS chunk decoders on BF16
// exponent-like symbols (normal weights, 64 Ki symbols per chunk).
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "codec/rans_decode.h"
#include "codec/rans_encode.h"

namespace bigsmall::rans {
namespace {

struct Fixture {
  std::vector<uint8_t> symbols[2];
  std::vector<uint8_t> streams[2];
  DecodeTable table;
  Fixture() {
    std::mt19937 rng(1);
    std::normal_distribution<float> d(0, 0.02f);
    Counts counts{};
    for (auto& s : symbols) {
      s.resize(1 << 16);
      for (auto& b : s) {
        float f = d(rng);
        uint32_t u;
        std::memcpy(&u, &f, 4);
        b = static_cast<uint8_t>(u >> 23);
      }
      for (uint8_t b : s) ++counts[b];
    }
    const Frequencies f = NormalizeFrequencies(counts);
    for (int i = 0; i < 2; ++i) EncodeChunk(f, symbols[i], &streams[i]);
    (void)BuildDecodeTable(f, &table);
  }
};

const Fixture& Data() {
  static const Fixture f;
  return f;
}

void BM_Decode(benchmark::State& state) {
  const auto impl = static_cast<DecoderImpl>(state.range(0));
  const Fixture& f = Data();
  std::vector<uint8_t> out(f.symbols[0].size());
  for (auto _ : state) {
    for (int i = 0; i < 2; ++i) {
      if (!DecodeChunk(impl, f.table, f.streams[i], absl::MakeSpan(out)).ok()) state.SkipWithError("decode");
    }
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * 2 * out.size());
  state.SetLabel(DecoderImplName(impl));
}
BENCHMARK(BM_Decode)->Arg(static_cast<int>(DecoderImpl::kReference))->Arg(static_cast<int>(DecoderImpl::kScalar))
    ->Arg(static_cast<int>(DecoderImpl::kAvx2))->Arg(static_cast<int>(DecoderImpl::kAvx512));


}  // namespace
}  // namespace bigsmall::rans

BENCHMARK_MAIN();
