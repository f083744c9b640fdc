// The base model of a fine-tune delta: every tensor of a safetensors file or
// of all *.safetensors files in a directory, looked up by name.
#ifndef BIGSMALL_CODEC_BASE_MODEL_H_
#define BIGSMALL_CODEC_BASE_MODEL_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "codec/byte_source.h"
#include "codec/safetensors.h"

namespace bigsmall {

// One opened safetensors file.
struct SafetensorsFile {
  std::unique_ptr<ByteSource> source;
  SafetensorsHeader header;
  std::vector<uint8_t> prefix;  // header bytes as stored
};

// Opens and validates a safetensors file (errors name the path).
absl::StatusOr<SafetensorsFile> OpenSafetensors(const std::string& path);

class BaseModel {
 public:
  static absl::StatusOr<BaseModel> Open(const std::string& path);

  // The base tensor usable for `tensor`: same name, dtype and byte size.
  const SafetensorsTensor* Find(const SafetensorsTensor& tensor) const;
  absl::StatusOr<std::vector<uint8_t>> Read(const SafetensorsTensor& tensor) const;
  const std::string& path() const { return path_; }

 private:
  struct Entry {
    size_t file;
    SafetensorsTensor tensor;
  };
  std::string path_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, Entry, std::less<>> tensors_;
};

}  // namespace bigsmall

#endif  // BIGSMALL_CODEC_BASE_MODEL_H_
