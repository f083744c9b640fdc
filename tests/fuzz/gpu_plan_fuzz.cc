// Fuzzes the GPU decode planner and its CPU emulation on an arbitrary input
// buffer holding one tensor blob: planning must reject what it cannot bound,
// and the emulated kernels must never read or write out of bounds.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "codec/tensor_blob.h"
#include "kernels/gpu_decoder.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace bigsmall;
  auto input = absl::MakeConstSpan(data, size);
  auto parsed = ParseTensorBlob(input);
  if (!parsed.ok() || parsed->num_bytes > (16u << 20)) return 0;
  std::vector<gpu::TensorJob> jobs = {{0, size, 0, parsed->num_bytes}};
  auto plan = gpu::PlanDecode(input, jobs);
  if (!plan.ok()) return 0;
  std::vector<uint8_t> out(plan->output_bytes);
  (void)gpu::EmulateDecode(input, jobs, *plan, absl::MakeSpan(out));
  return 0;
}
