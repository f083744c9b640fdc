// Test-only: a layer group built from tensors encoded by the codec, as the
// daemon stages them (blobs back to back), with each tensor's job and device
// checksum and the original bytes at their output offsets. Shared by
// kernels_test and device_api_test.
#ifndef BIGSMALL_KERNELS_TEST_GROUP_H_
#define BIGSMALL_KERNELS_TEST_GROUP_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "codec/device_checksum.h"
#include "codec/dtype.h"
#include "codec/tensor_codec.h"
#include "kernels/gpu_decoder.h"

namespace bigsmall::gpu::testing {

struct TestGroup {
  std::vector<uint8_t> input;     // blobs back to back, like a layer group
  std::vector<TensorJob> jobs;
  std::vector<uint8_t> expected;  // the original tensors at their out_offsets
};

// Encodes `bytes` and appends it: its blob to the input, its job (output
// offset rounded up to `align`, expected device checksum) and its bytes.
inline absl::Status AppendTensor(TestGroup& g, const std::vector<uint8_t>& bytes,
                                 const DtypeInfo& dtype, const EncodeOptions& options,
                                 uint64_t align) {
  auto blob = EncodeTensorBlob(bytes, dtype, options);
  if (!blob.ok()) return blob.status();
  TensorJob job;
  job.blob_offset = g.input.size();
  job.blob_size = blob->size();
  job.out_offset = (g.expected.size() + align - 1) / align * align;
  job.out_size = bytes.size();
  job.has_checksum = true;
  job.checksum = DeviceChecksum(bytes.data(), bytes.size());
  g.jobs.push_back(job);
  g.input.insert(g.input.end(), blob->begin(), blob->end());
  g.expected.resize(job.out_offset, 0);
  g.expected.insert(g.expected.end(), bytes.begin(), bytes.end());
  return absl::OkStatus();
}

}  // namespace bigsmall::gpu::testing

#endif  // BIGSMALL_KERNELS_TEST_GROUP_H_
