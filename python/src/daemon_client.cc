// Placeholder: filled by its owner.
#include "python/src/bindings.h"

namespace bigsmall::python {
void RegisterDaemon(nb::module_& m) {}
}  // namespace bigsmall::python
