// Model descriptions and other messages as Python dicts (see describe.h).
#include "python/src/describe.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <nanobind/stl/string.h>

#include <cstring>
#include <string>

#include "absl/strings/escaping.h"
#include "codec/hash.h"

namespace bigsmall::python {

std::string HashHex(const std::string& hash_bytes) {
  Hash128 hash;
  if (hash_bytes.size() != hash.size()) return absl::BytesToHexString(hash_bytes);
  std::memcpy(hash.data(), hash_bytes.data(), hash.size());
  return HashToHex(hash);
}

nb::dict TensorDict(const v1::TensorInfo& tensor) {
  nb::dict d;
  d["name"] = tensor.name();
  d["dtype"] = tensor.dtype();
  nb::list shape;
  for (uint64_t dim : tensor.shape()) shape.append(dim);
  d["shape"] = nb::tuple(shape);
  d["size"] = tensor.size();
  d["offset"] = tensor.offset();
  d["hash"] = HashHex(tensor.hash());
  return d;
}

nb::dict LayerDict(const v1::LayerInfo& layer) {
  nb::dict d;
  d["index"] = layer.index();
  d["name"] = layer.name();
  d["number"] = layer.number();
  d["size"] = layer.size();
  d["stored_size"] = layer.stored_size();
  nb::list tensors;
  for (const v1::TensorInfo& t : layer.tensors()) tensors.append(TensorDict(t));
  d["tensors"] = tensors;
  return d;
}

nb::dict DescriptionDict(const v1::ModelDescription& description) {
  nb::dict d;
  d["id"] = description.model_id();
  d["model_id"] = description.model_id();
  d["path"] = description.path();
  d["num_layers"] = description.num_layers();
  d["num_tensors"] = description.num_tensors();
  d["original_bytes"] = description.original_bytes();
  d["stored_bytes"] = description.stored_bytes();
  nb::list shards;
  for (const std::string& s : description.shards()) shards.append(s);
  d["shards"] = shards;
  nb::list layers;
  for (const v1::LayerInfo& l : description.layers()) layers.append(LayerDict(l));
  d["layers"] = layers;
  if (description.has_non_layer() && description.non_layer().tensors_size() > 0) {
    d["non_layer"] = LayerDict(description.non_layer());
  } else {
    d["non_layer"] = nb::none();
  }
  return d;
}

namespace {

namespace pb = google::protobuf;

nb::object FieldValue(const pb::Message& m, const pb::FieldDescriptor* f, int i) {
  const pb::Reflection* r = m.GetReflection();
  const bool rep = f->is_repeated();
  switch (f->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_INT32:
      return nb::int_(rep ? r->GetRepeatedInt32(m, f, i) : r->GetInt32(m, f));
    case pb::FieldDescriptor::CPPTYPE_INT64:
      return nb::int_(rep ? r->GetRepeatedInt64(m, f, i) : r->GetInt64(m, f));
    case pb::FieldDescriptor::CPPTYPE_UINT32:
      return nb::int_(rep ? r->GetRepeatedUInt32(m, f, i) : r->GetUInt32(m, f));
    case pb::FieldDescriptor::CPPTYPE_UINT64:
      return nb::int_(rep ? r->GetRepeatedUInt64(m, f, i) : r->GetUInt64(m, f));
    case pb::FieldDescriptor::CPPTYPE_DOUBLE:
      return nb::float_(rep ? r->GetRepeatedDouble(m, f, i) : r->GetDouble(m, f));
    case pb::FieldDescriptor::CPPTYPE_FLOAT:
      return nb::float_(rep ? r->GetRepeatedFloat(m, f, i) : r->GetFloat(m, f));
    case pb::FieldDescriptor::CPPTYPE_BOOL:
      return nb::bool_(rep ? r->GetRepeatedBool(m, f, i) : r->GetBool(m, f));
    case pb::FieldDescriptor::CPPTYPE_ENUM:
      return nb::str((rep ? r->GetRepeatedEnum(m, f, i) : r->GetEnum(m, f))->name().c_str());
    case pb::FieldDescriptor::CPPTYPE_STRING: {
      const std::string s = rep ? r->GetRepeatedString(m, f, i) : r->GetString(m, f);
      if (f->type() == pb::FieldDescriptor::TYPE_BYTES) return nb::bytes(s.data(), s.size());
      return nb::str(s.data(), s.size());
    }
    case pb::FieldDescriptor::CPPTYPE_MESSAGE:
      return MessageDict(rep ? r->GetRepeatedMessage(m, f, i) : r->GetMessage(m, f));
  }
  return nb::none();
}

}  // namespace

nb::dict MessageDict(const pb::Message& message) {
  nb::dict d;
  const pb::Descriptor* desc = message.GetDescriptor();
  const pb::Reflection* r = message.GetReflection();
  for (int k = 0; k < desc->field_count(); ++k) {
    const pb::FieldDescriptor* f = desc->field(k);
    const char* key = f->name().c_str();
    if (f->is_repeated()) {
      nb::list items;
      const int n = r->FieldSize(message, f);
      for (int i = 0; i < n; ++i) items.append(FieldValue(message, f, i));
      d[key] = items;
    } else if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE && !r->HasField(message, f)) {
      d[key] = nb::none();
    } else {
      d[key] = FieldValue(message, f, -1);
    }
  }
  return d;
}

}  // namespace bigsmall::python
