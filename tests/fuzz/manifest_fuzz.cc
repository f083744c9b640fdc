// Fuzzes the compressed-directory manifest parser (untrusted JSON naming paths).
#include <cstddef>
#include <cstdint>
#include <string>

#include "codec/model_dir.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto m = bigsmall::ParseManifest(std::string(reinterpret_cast<const char*>(data), size), "fuzz.json");
  if (m.ok()) {
    for (const auto& e : m->entries) {
      // Accepted paths are relative and never climb out of the directory.
      if (e.original.empty() || e.original[0] == '/' || e.stored.empty() || e.stored[0] == '/') __builtin_trap();
    }
  }
  return 0;
}
