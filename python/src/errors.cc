// Status -> Python exception (see bindings.h).
#include <Python.h>

#include <string>

#include "absl/status/status.h"
#include <nanobind/stl/string.h>

#include "python/src/bindings.h"

namespace bigsmall::python {
namespace {

// Never destroyed: it may outlive the interpreter's teardown of the module.
nb::object& Factory() {
  static nb::object* factory = new nb::object();
  return *factory;
}

}  // namespace

void ThrowStatus(const absl::Status& status) {
  const std::string code = absl::StatusCodeToString(status.code());
  const std::string message(status.message());
  nb::object& factory = Factory();
  if (!factory.is_valid()) {
    PyErr_SetString(PyExc_RuntimeError, (code + ": " + message).c_str());
    throw nb::python_error();
  }
  nb::object exc = factory(static_cast<int>(status.code()), code, message);
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
  throw nb::python_error();
}

void RegisterErrors(nb::module_& m) {
  m.def(
      "_set_error_factory", [](nb::object factory) { Factory() = std::move(factory); },
      nb::arg("factory"),
      "Installs factory(code: int, code_name: str, message: str) -> Exception, used for every "
      "error the extension raises (bigsmall/__init__.py installs bigsmall.errors.from_status).");
  // The code numbers (gRPC's and absl's, which are the same).
  nb::dict codes;
  for (int c = 0; c <= 16; ++c) {
    codes[nb::str(absl::StatusCodeToString(static_cast<absl::StatusCode>(c)).c_str())] = c;
  }
  m.attr("STATUS_CODES") = codes;
  // Tests: raise the exception a status would give.
  m.def(
      "_raise_status",
      [](int code, const std::string& message) {
        ThrowStatus(absl::Status(static_cast<absl::StatusCode>(code), message));
      },
      nb::arg("code"), nb::arg("message"));
}

}  // namespace bigsmall::python
