#include "codec/rans_encode.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "codec/byte_io.h"

namespace bigsmall::rans {

Counts CountSymbols(absl::Span<const uint8_t> symbols) {
  // Four histograms break the store-to-load dependency on repeated symbols.
  std::array<std::array<uint64_t, 256>, 4> h{};
  size_t i = 0;
  const size_t n = symbols.size();
  for (; i + 4 <= n; i += 4) {
    ++h[0][symbols[i]];
    ++h[1][symbols[i + 1]];
    ++h[2][symbols[i + 2]];
    ++h[3][symbols[i + 3]];
  }
  for (; i < n; ++i) ++h[0][symbols[i]];
  Counts c{};
  for (int s = 0; s < 256; ++s) c[s] = h[0][s] + h[1][s] + h[2][s] + h[3][s];
  return c;
}

Frequencies NormalizeFrequencies(const Counts& counts) {
  Frequencies f{};
  uint64_t total = 0;
  for (uint64_t c : counts) total += c;
  if (total == 0) {
    f[0] = kProbScale;
    return f;
  }
  // Proportional first guess, every present symbol at least 1.
  int64_t sum = 0;
  for (int s = 0; s < 256; ++s) {
    if (counts[s] == 0) continue;
    // Round to nearest: leaves only a small residual for the loop below.
    const uint64_t q = (counts[s] * kProbScale * 2 + total) / (2 * total);
    f[s] = static_cast<uint16_t>(std::clamp<uint64_t>(q, 1, kProbScale));
    sum += f[s];
  }
  // The proportional guess is off by at most a few hundred units (floors and
  // the >= 1 floor for rare symbols). Fix it one unit at a time where that
  // costs the fewest coded bits (or saves the most): near optimal for order-0.
  while (sum != static_cast<int64_t>(kProbScale)) {
    const int step = sum < static_cast<int64_t>(kProbScale) ? 1 : -1;
    int best = -1;
    double best_cost = 0;
    for (int s = 0; s < 256; ++s) {
      if (counts[s] == 0 || (step < 0 && f[s] <= 1)) continue;
      const double a = f[s];
      const double cost = static_cast<double>(counts[s]) * (std::log2(a) - std::log2(a + step));
      if (best < 0 || cost < best_cost) {
        best = s;
        best_cost = cost;
      }
    }
    f[best] = static_cast<uint16_t>(f[best] + step);
    sum += step;
  }
  return f;
}

double EstimateBits(const Counts& counts, const Frequencies& freqs) {
  double bits = 0;
  for (int s = 0; s < 256; ++s) {
    if (counts[s] == 0) continue;
    bits += static_cast<double>(counts[s]) * (kProbBits - std::log2(static_cast<double>(freqs[s])));
  }
  return bits;
}

size_t SerializedFrequenciesSize(const Frequencies& freqs) {
  size_t present = 0;
  for (uint16_t f : freqs) present += f != 0;
  return 32 + 2 * present;
}

void AppendFrequencies(const Frequencies& freqs, std::vector<uint8_t>* out) {
  uint8_t bitmap[32] = {};
  for (int s = 0; s < 256; ++s) {
    if (freqs[s]) bitmap[s >> 3] |= static_cast<uint8_t>(1u << (s & 7));
  }
  ByteWriter w(out);
  w.Bytes(absl::MakeConstSpan(bitmap, 32));
  for (int s = 0; s < 256; ++s) {
    if (freqs[s]) w.U16(static_cast<uint16_t>(freqs[s] - 1));
  }
}

namespace {

// Encoder-side symbol: x / freq is computed as the high half of x * rcp
// (rcp = ceil(2^64 / freq)), exact for every 32-bit x (Granlund-Montgomery),
// which is several times cheaper than a hardware divide.
struct EncSymbol {
  uint64_t rcp = 0;
  uint64_t x_max = 0;  // EncodeNeedsWord threshold
  uint32_t freq = 0;
  uint32_t cum = 0;
};

using EncTable = std::array<EncSymbol, 256>;

EncTable MakeEncTable(const Frequencies& freqs) {
  EncTable t{};
  uint32_t cum = 0;
  for (int s = 0; s < 256; ++s) {
    t[s].freq = freqs[s];
    t[s].cum = cum;
    t[s].x_max = uint64_t{(kRansLow >> kProbBits) << kWordBits} * freqs[s];
    t[s].rcp = freqs[s] > 1 ? ~uint64_t{0} / freqs[s] + 1 : 0;
    cum += freqs[s];
  }
  return t;
}

// Runs the decoder's schedule backwards. `table_of(i)` gives symbol i's table.
template <typename TableOf>
void EncodeLanes(absl::Span<const uint8_t> symbols, TableOf table_of, std::vector<uint8_t>* out) {
  const size_t n = symbols.size();
  uint32_t state[kLanes];
  for (auto& x : state) x = kRansLow;
  // Words are produced in reverse decode order; at most one per symbol.
  std::vector<uint16_t> words;
  words.reserve(n);
  for (size_t i = n; i-- > 0;) {
    const int lane = static_cast<int>(i % kLanes);
    const EncSymbol& sym = table_of(i)[symbols[i]];
    uint32_t x = state[lane];
    if (x >= sym.x_max) {
      words.push_back(static_cast<uint16_t>(x & 0xffff));
      x >>= kWordBits;
    }
    const uint32_t q = sym.freq > 1
        ? static_cast<uint32_t>((static_cast<unsigned __int128>(x) * sym.rcp) >> 64)
        : x;
    state[lane] = (q << kProbBits) + (x - q * sym.freq) + sym.cum;
  }
  const size_t base = out->size();
  out->resize(base + kChunkHeaderBytes + 2 * words.size());
  uint8_t* p = out->data() + base;
  for (int l = 0; l < kLanes; ++l) StoreLe32(p + 4 * l, state[l]);
  p += kChunkHeaderBytes;
  for (size_t k = 0; k < words.size(); ++k) {
    uint16_t w = words[words.size() - 1 - k];
    std::memcpy(p + 2 * k, &w, 2);
  }
}

}  // namespace

void EncodeChunk(const Frequencies& freqs, absl::Span<const uint8_t> symbols,
                 std::vector<uint8_t>* out) {
  const EncTable table = MakeEncTable(freqs);
  EncodeLanes(symbols, [&](size_t) -> const EncTable& { return table; }, out);
}

void EncodeChunkConditional(const Frequencies* tables, const uint8_t* context_map,
                            absl::Span<const uint8_t> context, absl::Span<const uint8_t> symbols,
                            std::vector<uint8_t>* out) {
  int num_tables = 0;
  for (int c = 0; c < 256; ++c) num_tables = std::max(num_tables, context_map[c] + 1);
  std::vector<EncTable> enc(num_tables);
  for (int t = 0; t < num_tables; ++t) enc[t] = MakeEncTable(tables[t]);
  EncodeLanes(symbols, [&](size_t i) -> const EncTable& { return enc[context_map[context[i]]]; },
              out);
}

}  // namespace bigsmall::rans
