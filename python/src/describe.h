// Model descriptions as Python dicts, one layout for the in-process
// LocalModel (local_model.cc) and the daemon client (daemon_client.cc), both
// built from the same v1::ModelDescription (see _core.pyi "Layer dicts").
#ifndef BIGSMALL_PYTHON_SRC_DESCRIBE_H_
#define BIGSMALL_PYTHON_SRC_DESCRIBE_H_

#include <string>

#include "bigsmall/v1/bigsmall.pb.h"
#include "python/src/bindings.h"

namespace google::protobuf {
class Message;
}  // namespace google::protobuf

namespace bigsmall::python {

// 32 lowercase hex digits of a 16-byte XXH3-128 (the order HashToHex and the
// CLI print); other lengths: the bytes in hex as they are.
std::string HashHex(const std::string& hash_bytes);

// {"name", "dtype", "shape": tuple, "size", "offset", "hash": 32 hex}.
nb::dict TensorDict(const v1::TensorInfo& tensor);

// {"index", "name", "number", "size", "stored_size", "tensors": [TensorDict]}.
nb::dict LayerDict(const v1::LayerInfo& layer);

// The description: {"id" and "model_id" (the same id), "path",
// "num_layers", "num_tensors", "original_bytes", "stored_bytes",
// "shards": [str], "layers": [LayerDict], "non_layer": LayerDict or None
// (None when the model has no non-layer tensors)}.
nb::dict DescriptionDict(const v1::ModelDescription& description);

// Any message as a dict by reflection (field names as in the .proto; every
// field, defaults included; repeated -> list, messages -> dict, bytes ->
// bytes, enums -> their name). For stats() and list_models().
nb::dict MessageDict(const google::protobuf::Message& message);

}  // namespace bigsmall::python

#endif  // BIGSMALL_PYTHON_SRC_DESCRIBE_H_
