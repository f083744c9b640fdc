// Fuzzes the tensor blob decoder directly (no hash in front of it), with
// every CPU decoder implementation: all must agree on success and bytes.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "codec/tensor_blob.h"
#include "codec/tensor_codec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace bigsmall;
  auto blob = absl::MakeConstSpan(data, size);
  auto parsed = ParseTensorBlob(blob);
  if (!parsed.ok() || parsed->num_bytes > (16u << 20)) return 0;
  std::vector<uint8_t> reference(parsed->num_bytes);
  DecodeOptions ref;
  ref.impl = DecoderImpl::kReference;
  const absl::Status ref_status = DecodeTensorBlob(blob, absl::MakeSpan(reference), ref);
  for (DecoderImpl impl : {DecoderImpl::kScalar, DecoderImpl::kAvx2, DecoderImpl::kAvx512}) {
    std::vector<uint8_t> out(parsed->num_bytes);
    DecodeOptions opts;
    opts.impl = impl;
    const absl::Status st = DecodeTensorBlob(blob, absl::MakeSpan(out), opts);
    if (st.ok() != ref_status.ok()) __builtin_trap();
    if (st.ok() && out != reference) __builtin_trap();
  }
  return 0;
}
