// The fine-tune delta step of the GPU path, written once (decode_step.h
// style): word k of a decoded delta tensor is XORed with word k of its base
// tensor in place (docs/FORMAT.md §7: tensor = stored XOR base), and the
// checksum term of the rebuilt word is returned, so the device checksum
// (§3.1, of the rebuilt tensor) is summed in the same pass, after the XOR.
// BIGSMALL_HD: compiled by nvcc for the XOR kernel (gpu_decoder.cu,
// CudaXorChecksumLaunch) and by the host compiler for the emulator
// (gpu_emulator.cc, EmulateXorChecksumLaunch), so the emulated backend runs
// the kernel's own code.
#ifndef BIGSMALL_KERNELS_XOR_STEP_H_
#define BIGSMALL_KERNELS_XOR_STEP_H_

#include <cstdint>

#include "kernels/decode_step.h"

namespace bigsmall::gpu {

// data[8k, 8k + 8) ^= base[8k, 8k + 8) (fewer bytes in the last word of a
// tensor of `size` bytes), then the checksum term of the rebuilt word.
// `data` and `base` are 8-byte aligned.
BIGSMALL_HD uint64_t XorChecksumWordAt(uint8_t* data, const uint8_t* base, uint64_t size,
                                       uint64_t k) {
  const uint64_t off = 8 * k;
  const uint64_t rest = size - off;
  if (rest >= 8) {
    uint64_t* word = reinterpret_cast<uint64_t*>(data + off);
    const uint64_t rebuilt = *word ^ *reinterpret_cast<const uint64_t*>(base + off);
    *word = rebuilt;
    return ChecksumTerm(k, rebuilt);
  }
  for (uint64_t b = 0; b < rest; ++b) data[off + b] ^= base[off + b];
  return ChecksumWordAt(data, size, k);
}

}  // namespace bigsmall::gpu

#endif  // BIGSMALL_KERNELS_XOR_STEP_H_
