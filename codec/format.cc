#include "codec/format.h"

namespace bigsmall {

const char* ModeName(Mode mode) {
  switch (mode) {
    case Mode::kBalanced:
      return "balanced";
    case Mode::kStorage:
      return "storage";
    case Mode::kInference:
      return "inference";
  }
  return "unknown";
}

}  // namespace bigsmall
