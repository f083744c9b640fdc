// Internal to kernels/: the entry points of the decode and checksum kernels
// that the DeviceApi implementations call (device_api_cuda.cu,
// device_api_emulated.cc). Everyone else goes through DeviceApi.
#ifndef BIGSMALL_KERNELS_LAUNCH_H_
#define BIGSMALL_KERNELS_LAUNCH_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/device_api.h"

namespace bigsmall::gpu {

// Buffers of a launch: launch.input holds image->input_bytes (the group's
// bytes, then the DecodePlan's prepass region filled by RunHostPrepass);
// launch.plan is a copy of image->bytes, 16-byte aligned; launch.results
// holds image->results_bytes, 8-byte aligned, and need not be initialised
// (the kernels do it); launch.scratch is unused (image->scratch_bytes is 0).
//
// Runs the kernels of `launch` on the calling thread with the kernels' own
// decode functions (kernels/decode_step.h), every pointer being host memory
// standing in for device memory: reads the plan from launch.plan (the
// uploaded image, not launch.image->bytes), bounds-checking every task
// against the image, the input and the output, and writes launch.output and
// launch.results exactly as the CUDA kernels do. A corrupt chunk or a
// checksum mismatch is a verdict in launch.results (CheckDecodeResults), not
// an error. Errors only for a launch that is malformed (a plan image that
// does not parse, a task outside its buffers, a missing buffer): INTERNAL.
absl::Status EmulateDecodeLaunch(const DecodeLaunch& launch);
// The device checksum of `bytes` bytes at `data`, into *out, as the
// checksum kernel computes it.
absl::Status EmulateChecksumLaunch(const uint8_t* data, uint64_t bytes, uint64_t* out);
// Fine-tune deltas: data[i] ^= base[i] for the `bytes` bytes at `data` (both
// 8-byte aligned), then the device checksum of the rebuilt bytes into *out,
// as the XOR kernel does (kernels/xor_step.h).
absl::Status EmulateXorChecksumLaunch(uint8_t* data, const uint8_t* base, uint64_t bytes,
                                      uint64_t* out);

#if defined(BIGSMALL_HAVE_CUDA)
// Enqueues the kernels on `stream` (a cudaStream_t): init results, decode,
// verify (when image->num_verify), finish. Reads only the counts of
// launch.image while enqueuing. The kernels trust the plan (BuildPlanImage's
// output; the emulator is what checks it). Launch errors are returned
// (INVALID_ARGUMENT for misaligned buffers); faults inside the kernels
// surface at the stream's next sync.
absl::Status CudaDecodeLaunch(const DecodeLaunch& launch, void* stream);
absl::Status CudaChecksumLaunch(const uint8_t* data, uint64_t bytes, uint64_t* out, void* stream);
absl::Status CudaXorChecksumLaunch(uint8_t* data, const uint8_t* base, uint64_t bytes, uint64_t* out,
                                   void* stream);
#endif

}  // namespace bigsmall::gpu

#endif  // BIGSMALL_KERNELS_LAUNCH_H_
