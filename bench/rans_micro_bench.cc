// Google Benchmark micro-benchmarks of the rANS chunk coders on BF16-like
// planes of normal weights (64 Ki symbols per chunk): the exponent plane
// (order-0), the sign+mantissa plane conditioned on the exponent (as
// --storage codes it, one table per exponent seen >= 2048 times), the two
// planes decoded as a pair (DecodeChunkPair), and the encoders.
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "codec/rans_decode.h"
#include "codec/rans_encode.h"

namespace bigsmall::rans {
namespace {

constexpr int kChunks = 2;
constexpr size_t kChunkSymbols = 1 << 16;

struct Fixture {
  std::vector<uint8_t> exponent[kChunks], mantissa[kChunks];
  std::vector<uint8_t> exp_stream[kChunks], man_stream[kChunks], cond_stream[kChunks];
  Frequencies exp_freqs, man_freqs;
  DecodeTable exp_table, man_table;
  std::vector<Frequencies> cond_freqs;
  std::vector<DecodeTable> cond_tables;
  uint8_t map[256] = {};
  Fixture() {
    std::mt19937 rng(1);
    std::normal_distribution<float> d(0, 0.02f);
    Counts ec{}, mc{};
    std::vector<uint64_t> joint(256 * 256);
    for (int c = 0; c < kChunks; ++c) {
      exponent[c].resize(kChunkSymbols);
      mantissa[c].resize(kChunkSymbols);
      for (size_t i = 0; i < kChunkSymbols; ++i) {
        float f = d(rng);
        uint32_t u;
        std::memcpy(&u, &f, 4);
        const uint32_t v = u >> 16;  // bf16
        exponent[c][i] = static_cast<uint8_t>(v >> 7);
        mantissa[c][i] = static_cast<uint8_t>(((v >> 8) & 0x80) | (v & 0x7f));
        ++ec[exponent[c][i]];
        ++mc[mantissa[c][i]];
        ++joint[exponent[c][i] * 256 + mantissa[c][i]];
      }
    }
    exp_freqs = NormalizeFrequencies(ec);
    man_freqs = NormalizeFrequencies(mc);
    (void)BuildDecodeTable(exp_freqs, &exp_table);
    (void)BuildDecodeTable(man_freqs, &man_table);
    std::vector<Counts> counts(1);
    counts[0].fill(0);
    for (int e = 0; e < 256; ++e) {
      uint64_t total = 0;
      for (int s = 0; s < 256; ++s) total += joint[e * 256 + s];
      int t = 0;
      if (total >= 2048) {
        t = static_cast<int>(counts.size());
        counts.emplace_back();
        counts.back().fill(0);
      }
      map[e] = static_cast<uint8_t>(t);
      for (int s = 0; s < 256; ++s) counts[t][s] += joint[e * 256 + s];
    }
    uint64_t shared = 0;
    for (uint64_t v : counts[0]) shared += v;
    if (shared == 0) counts[0][0] = 1;
    for (const auto& c : counts) cond_freqs.push_back(NormalizeFrequencies(c));
    cond_tables.resize(cond_freqs.size());
    for (size_t t = 0; t < cond_freqs.size(); ++t) (void)BuildDecodeTable(cond_freqs[t], &cond_tables[t]);
    for (int c = 0; c < kChunks; ++c) {
      EncodeChunk(exp_freqs, exponent[c], &exp_stream[c]);
      EncodeChunk(man_freqs, mantissa[c], &man_stream[c]);
      EncodeChunkConditional(cond_freqs.data(), map, exponent[c], mantissa[c], &cond_stream[c]);
    }
  }
};

const Fixture& Data() {
  static const Fixture f;
  return f;
}

const char* Label(DecoderImpl impl) {
  return DecoderImplAvailable(impl) ? DecoderImplName(impl) : "(not available: ran scalar)";
}

void BM_Decode(benchmark::State& state) {
  const auto impl = static_cast<DecoderImpl>(state.range(0));
  const Fixture& f = Data();
  std::vector<uint8_t> out(kChunkSymbols);
  for (auto _ : state) {
    for (int i = 0; i < kChunks; ++i) {
      if (!DecodeChunk(impl, f.exp_table, f.exp_stream[i], absl::MakeSpan(out)).ok()) state.SkipWithError("decode");
    }
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * kChunks * out.size());
  state.SetLabel(Label(impl));
}

void BM_DecodeConditional(benchmark::State& state) {
  const auto impl = static_cast<DecoderImpl>(state.range(0));
  const Fixture& f = Data();
  std::vector<uint8_t> out(kChunkSymbols);
  for (auto _ : state) {
    for (int i = 0; i < kChunks; ++i) {
      if (!DecodeChunkConditional(impl, f.cond_tables.data(), f.cond_tables.size(), f.map, f.exponent[i],
                                  f.cond_stream[i], absl::MakeSpan(out)).ok()) {
        state.SkipWithError("decode");
      }
    }
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * kChunks * out.size());
  state.SetLabel(std::string(Label(impl)) + ", " + std::to_string(f.cond_tables.size()) + " tables");
}

// Both planes of a BF16 chunk, one call each (range(1) == 0) or as a pair
// (1); range(2) == 1: the mantissa conditioned on the exponent (--storage).
// Items: symbols of both planes.
void BM_DecodeTwoPlanes(benchmark::State& state) {
  const auto impl = static_cast<DecoderImpl>(state.range(0));
  const bool pair = state.range(1) != 0, cond = state.range(2) != 0;
  const Fixture& f = Data();
  std::vector<uint8_t> e(kChunkSymbols), m(kChunkSymbols);
  for (auto _ : state) {
    for (int i = 0; i < kChunks; ++i) {
      ChunkJob a, b;
      a.tables = &f.exp_table;
      a.chunk = f.exp_stream[i];
      a.out = absl::MakeSpan(e);
      if (cond) {
        b.tables = f.cond_tables.data();
        b.num_tables = f.cond_tables.size();
        b.context_map = f.map;
        b.context = e;
        b.chunk = f.cond_stream[i];
      } else {
        b.tables = &f.man_table;
        b.chunk = f.man_stream[i];
      }
      b.out = absl::MakeSpan(m);
      absl::Status st = pair ? DecodeChunkPair(impl, a, b) : DecodeChunkJob(impl, a);
      if (st.ok() && !pair) st = DecodeChunkJob(impl, b);
      if (!st.ok()) state.SkipWithError("decode");
    }
    benchmark::DoNotOptimize(m.data());
  }
  state.SetItemsProcessed(state.iterations() * kChunks * 2 * kChunkSymbols);
  state.SetLabel(std::string(Label(impl)) + (pair ? " pair" : " one by one") + (cond ? " conditional" : ""));
}

void BM_Encode(benchmark::State& state) {
  const bool cond = state.range(0) != 0;
  const Fixture& f = Data();
  std::vector<uint8_t> out;
  for (auto _ : state) {
    for (int i = 0; i < kChunks; ++i) {
      out.clear();
      if (cond) {
        EncodeChunkConditional(f.cond_freqs.data(), f.map, f.exponent[i], f.mantissa[i], &out);
      } else {
        EncodeChunk(f.exp_freqs, f.exponent[i], &out);
      }
      benchmark::DoNotOptimize(out.data());
    }
  }
  state.SetItemsProcessed(state.iterations() * kChunks * kChunkSymbols);
  state.SetLabel(cond ? "conditional" : "order-0");
}

void BM_CountSymbols(benchmark::State& state) {
  const Fixture& f = Data();
  for (auto _ : state) {
    for (int i = 0; i < kChunks; ++i) benchmark::DoNotOptimize(CountSymbols(f.mantissa[i]));
  }
  state.SetItemsProcessed(state.iterations() * kChunks * kChunkSymbols);
}

void Impls(benchmark::internal::Benchmark* b) {
  for (DecoderImpl impl : {DecoderImpl::kReference, DecoderImpl::kScalar, DecoderImpl::kAvx2, DecoderImpl::kAvx512}) {
    b->Arg(static_cast<int>(impl));
  }
}
void PairArgs(benchmark::internal::Benchmark* b) {
  for (DecoderImpl impl : {DecoderImpl::kScalar, DecoderImpl::kAvx2, DecoderImpl::kAvx512}) {
    for (int cond : {0, 1}) {
      for (int pair : {0, 1}) b->Args({static_cast<int>(impl), pair, cond});
    }
  }
}

BENCHMARK(BM_Decode)->Apply(Impls);
BENCHMARK(BM_DecodeConditional)->Apply(Impls);
BENCHMARK(BM_DecodeTwoPlanes)->Apply(PairArgs);
BENCHMARK(BM_Encode)->Arg(0)->Arg(1);
BENCHMARK(BM_CountSymbols);

}  // namespace
}  // namespace bigsmall::rans

BENCHMARK_MAIN();
