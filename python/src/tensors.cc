// Zero-copy byte views as torch tensors (DLPack through nanobind::ndarray).
#include <nanobind/ndarray.h>

#include <cstdint>
#include <memory>
#include <utility>

#include "python/src/bindings.h"

namespace bigsmall::python {

nb::object ByteTensor(const uint8_t* data, uint64_t size, int device,
                      std::shared_ptr<const void> keep_alive) {
  // DLPack wants a non-null pointer even for an empty tensor.
  static uint8_t empty_byte = 0;
  if (size == 0 || data == nullptr) {
    data = &empty_byte;
    size = 0;
    if (device >= 0) device = -1;  // an empty host tensor; the caller moves it if it must
  }
  auto* holder = new std::shared_ptr<const void>(std::move(keep_alive));
  nb::capsule owner(holder, [](void* p) noexcept {
    delete static_cast<std::shared_ptr<const void>*>(p);
  });
  const size_t shape[1] = {static_cast<size_t>(size)};
  const int device_type = device < 0 ? nb::device::cpu::value : nb::device::cuda::value;
  const int device_id = device < 0 ? 0 : device;
  nb::ndarray<nb::pytorch, uint8_t, nb::ndim<1>> array(const_cast<uint8_t*>(data), 1, shape, owner,
                                                       nullptr, nb::dtype<uint8_t>(), device_type,
                                                       device_id);
  return nb::cast(std::move(array), nb::rv_policy::reference);
}

}  // namespace bigsmall::python
