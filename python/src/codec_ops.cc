// Placeholder: filled by its owner.
#include "python/src/bindings.h"

namespace bigsmall::python {
void RegisterCodecOps(nb::module_& m) {}
}  // namespace bigsmall::python
