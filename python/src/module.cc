// bigsmall._core: the C++ core of the Python package (see bindings.h).
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "python/src/bindings.h"

namespace bigsmall::python {
namespace {

// Tests of ByteTensor's lifetime: buffers made by _test_byte_tensor and not
// yet freed.
std::atomic<int64_t> live_test_buffers{0};

struct TestBuffer {
  explicit TestBuffer(const std::string& bytes) : data(bytes.begin(), bytes.end()) { ++live_test_buffers; }
  ~TestBuffer() { --live_test_buffers; }
  std::vector<uint8_t> data;
};

}  // namespace
}  // namespace bigsmall::python

NB_MODULE(_core, m) {
  namespace py = bigsmall::python;
  m.doc() = "BigSmall's C++ core: codec, in-process loader (the daemon's load pipeline), daemon client";
  m.attr("__version__") = BIGSMALL_VERSION;
  py::RegisterErrors(m);
  py::RegisterLocal(m);
  py::RegisterDaemon(m);
  py::RegisterCodecOps(m);
  m.def(
      "_test_byte_tensor",
      [](nanobind::bytes bytes) {
        auto buffer = std::make_shared<py::TestBuffer>(std::string(bytes.c_str(), bytes.size()));
        const uint8_t* data = buffer->data.data();
        const uint64_t size = buffer->data.size();
        return py::ByteTensor(data, size, -1, std::move(buffer));
      },
      nanobind::arg("data"), "Tests: a zero-copy uint8 tensor over a C++ copy of `data`.");
  m.def("_test_live_buffers", [] { return py::live_test_buffers.load(); });
}
