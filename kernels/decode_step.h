// The GPU kernels' decode loops, written once. DecodeChunkOnWarp is the
// whole rANS chunk loop of RansChunkKernel and MergeTaskElement the body of
// MergeKernel; both are BIGSMALL_HD (__host__ __device__ under nvcc, plain
// inline for the host compiler) and compiled twice: by nvcc in
// gpu_decoder.cu, where a `Warp` is the calling thread's lane of a real warp
// (DeviceWarp, defined there: one register per value, __ballot_sync,
// __shfl_sync), and by the host compiler in gpu_emulator.cc with HostWarp
// below, which holds the 32 lanes' values side by side and steps them in
// lockstep. The emulator therefore runs the kernels' own code, so the CPU
// tests of the emulator (kernels/gpu_decoder_test.cc) test the kernels.
//
// A Warp provides:
//   template <class T> using Reg = ...;  one T per lane, indexed reg[lane]
//   ForLanes(f)        f(lane) for each lane this thread holds (GPU: its own)
//   Ballot(Reg<bool>)  bit l set when lane l's value is true (all lanes)
//   Shuffle(v, src, out)  out[l] = v[src[l] & 31] (Reg<uint32_t>s)
//   All(Reg<bool>)     true when every lane's value is true
// Values outside a Reg (base, pos, wbase, ballots) are warp-uniform: every
// lane computes the same one.
#ifndef BIGSMALL_KERNELS_DECODE_STEP_H_
#define BIGSMALL_KERNELS_DECODE_STEP_H_

#include <cstdint>

#include "codec/rans.h"
#include "kernels/warp_rans.h"

namespace bigsmall::gpu {

// A chunk stream must hold the 32 lane states and whole 16-bit words.
BIGSMALL_HD bool ChunkSizeValid(uint32_t in_size) {
  return in_size >= rans::kChunkHeaderBytes && (in_size & 1u) == 0;
}

// Decodes one rANS chunk (docs/FORMAT.md §6 warp schedule): `count` symbols
// from the `in_size`-byte stream at `chunk` into out[0..count), with
// `table` the 4096-slot decode table. Returns false (on every lane) when the
// stream is corrupt: a bad size, a word read past the end, or final states
// other than the initial ones.
//
// Word window: lane l holds words wbase + l (w0) and wbase + 32 + l (w1),
// loaded one window ahead, so a renormalisation is a register shuffle
// instead of a dependent global load. Invariant: pos - wbase < 32.
template <class Warp>
BIGSMALL_HD bool DecodeChunkOnWarp(Warp& warp, const uint8_t* chunk, uint32_t in_size, uint32_t count,
                                   const uint32_t* table, uint8_t* out) {
  using U32 = typename Warp::template Reg<uint32_t>;
  using Bool = typename Warp::template Reg<bool>;
  if (!ChunkSizeValid(in_size)) return false;
  const uint8_t* words = chunk + rans::kChunkHeaderBytes;
  const uint32_t num_words = (in_size - rans::kChunkHeaderBytes) / 2;
  auto load = [&](uint32_t k) { return k < num_words ? LoadWord(words, k) : 0u; };
  U32 x, w0, w1, k, src, v0, v1;
  Bool need, ok;
  warp.ForLanes([&](uint32_t l) {
    x[l] = LoadU32(chunk + 4 * l);
    w0[l] = load(l);
    w1[l] = load(32 + l);
    ok[l] = true;
  });
  uint32_t wbase = 0;
  uint32_t pos = 0;
  for (uint32_t base = 0; base < count; base += rans::kLanes) {
    warp.ForLanes([&](uint32_t l) {
      const uint32_t i = base + l;
      uint8_t sym = 0;
      need[l] = LaneDecode(x[l], i < count, table, &sym);
      if (i < count) out[i] = sym;
    });
    const uint32_t ballot = warp.Ballot(need);
    warp.ForLanes([&](uint32_t l) {
      k[l] = pos + PopCount(ballot & ((1u << l) - 1u));
      src[l] = (k[l] - wbase) & 31u;  // k - wbase < 64
    });
    warp.Shuffle(w0, src, v0);
    warp.Shuffle(w1, src, v1);
    warp.ForLanes([&](uint32_t l) {
      if (need[l]) {
        ok[l] = ok[l] && k[l] < num_words;
        x[l] = (x[l] << rans::kWordBits) | (k[l] - wbase < 32 ? v0[l] : v1[l]);
      }
    });
    pos += PopCount(ballot);
    if (pos - wbase >= 32) {
      wbase += 32;
      warp.ForLanes([&](uint32_t l) {
        w0[l] = w1[l];
        w1[l] = load(wbase + 32 + l);
      });
    }
  }
  warp.ForLanes([&](uint32_t l) { ok[l] = ok[l] && x[l] == rans::kRansLow && pos == num_words; });
  return warp.All(ok);
}

// Element k of merge task m: its plane bytes gathered from the input, the
// scratch planes or a constant, then rebuilt into the output.
BIGSMALL_HD void MergeTaskElement(const MergeTask& m, uint32_t k, const uint8_t* input,
                                  const uint8_t* scratch, uint8_t* output) {
  uint8_t v[8];
  for (uint32_t p = 0; p < m.num_planes; ++p) {
    const uint8_t kind = m.kind[p];
    v[p] = kind == kSourceInput     ? input[m.source[p] + k]
           : kind == kSourceScratch ? scratch[m.source[p] + k]
                                    : static_cast<uint8_t>(m.source[p]);
  }
  MergeElement(m.split, m.width, v, output + m.out_offset + uint64_t{k} * m.width);
}

// The 32 lanes of one warp on the CPU, stepped in lockstep.
struct HostWarp {
  template <class T>
  struct Reg {
    T v[rans::kLanes];
    T& operator[](uint32_t l) { return v[l]; }
    const T& operator[](uint32_t l) const { return v[l]; }
  };
  template <class F>
  void ForLanes(F&& f) {
    for (uint32_t l = 0; l < rans::kLanes; ++l) f(l);
  }
  uint32_t Ballot(const Reg<bool>& b) const {
    uint32_t bits = 0;
    for (uint32_t l = 0; l < rans::kLanes; ++l) bits |= uint32_t{b[l]} << l;
    return bits;
  }
  void Shuffle(const Reg<uint32_t>& v, const Reg<uint32_t>& src, Reg<uint32_t>& out) const {
    for (uint32_t l = 0; l < rans::kLanes; ++l) out[l] = v[src[l] & 31u];
  }
  bool All(const Reg<bool>& b) const {
    bool all = true;
    for (uint32_t l = 0; l < rans::kLanes; ++l) all = all && b[l];
    return all;
  }
};

}  // namespace bigsmall::gpu

#endif  // BIGSMALL_KERNELS_DECODE_STEP_H_
