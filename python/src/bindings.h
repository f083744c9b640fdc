// Shared by the files of the bigsmall._core extension (nanobind): status ->
// Python exception, byte views as torch tensors, and each file's Register
// function. Only the extension includes this header (it includes nanobind).
//
// Errors: every non-OK absl::Status becomes a Python exception made by the
// factory the package installs at import (_core._set_error_factory, called
// by bigsmall/__init__.py with bigsmall.errors.from_status): the class
// follows the status code (bigsmall.DataLossError for DATA_LOSS, ...), and
// carries .code (the code's name, as gRPC spells it) and .message. C++
// exceptions never leave the extension: ThrowStatus throws nb::python_error,
// which nanobind turns into the Python exception already set.
#ifndef BIGSMALL_PYTHON_SRC_BINDINGS_H_
#define BIGSMALL_PYTHON_SRC_BINDINGS_H_

#include <nanobind/nanobind.h>

#include <cstdint>
#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace bigsmall::python {

namespace nb = nanobind;

// Raises the status as a Python exception (status must not be OK).
[[noreturn]] void ThrowStatus(const absl::Status& status);

inline void CheckOk(const absl::Status& status) {
  if (!status.ok()) ThrowStatus(status);
}
template <typename T>
T ValueOrThrow(absl::StatusOr<T> value) {
  if (!value.ok()) ThrowStatus(value.status());
  return *std::move(value);
}

// A 1-D torch.uint8 tensor over [data, data + size) without a copy (DLPack):
// `keep_alive` is held until torch frees the tensor (and every view of it).
// `device` -1: host memory (kDLCPU); else a CUDA device pointer on that local
// ordinal (kDLCUDA). size 0 gives an empty tensor (data may be null).
nb::object ByteTensor(const uint8_t* data, uint64_t size, int device,
                      std::shared_ptr<const void> keep_alive);

void RegisterErrors(nb::module_& m);       // errors.cc: _set_error_factory, status codes
void RegisterLocal(nb::module_& m);        // local_model.cc: LocalModel, LocalStream, LoadedLayer
void RegisterDaemon(nb::module_& m);       // daemon_client.cc: DaemonClient, DaemonStream, DaemonLayer
void RegisterCodecOps(nb::module_& m);     // codec_ops.cc: compress, decompress, verify, info, hub ops

}  // namespace bigsmall::python

#endif  // BIGSMALL_PYTHON_SRC_BINDINGS_H_
