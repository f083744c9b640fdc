"""dtype mapping: safetensors dtypes -> torch dtypes, exactly; unknown dtypes as raw tagged bytes."""
from __future__ import annotations

import pytest
import torch

import bigsmall
from bigsmall import _core, dtypes
from conftest import assert_equal_to_reference, tensor_bytes

EXACT = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


def test_the_mapping_is_exact():
    for name, dtype in EXACT.items():
        assert dtypes.torch_dtype(name) is dtype, name
        assert dtypes.safetensors_dtype(dtype) == name
    for name, attr in {"U16": "uint16", "U32": "uint32", "U64": "uint64",
                       "F8_E8M0": "float8_e8m0fnu"}.items():
        if hasattr(torch, attr):
            assert dtypes.torch_dtype(name) is getattr(torch, attr), name
        else:
            assert dtypes.torch_dtype(name) is None
    for name in ("F4", "F6_E2M3", "F6_E3M2", "I4", "U4", "Q9_X", "", "f32"):
        assert dtypes.torch_dtype(name) is None, name


def test_the_mapping_agrees_with_safetensors_torch():
    st = pytest.importorskip("safetensors.torch")
    for name, dtype in st._TYPES.items():
        assert dtypes.torch_dtype(name) is dtype, name


def _record(name, dtype, shape, raw: bytes):
    return (name, dtype, shape, _core._test_byte_tensor(raw))


def test_to_tensor_is_zero_copy():
    rec = _record("w", "F32", (2, 2), torch.arange(4, dtype=torch.float32).numpy().tobytes())
    t = dtypes.to_tensor(rec)
    assert t.dtype == torch.float32 and t.shape == (2, 2)
    assert t.data_ptr() == rec[3].data_ptr()
    assert torch.equal(t, torch.arange(4, dtype=torch.float32).reshape(2, 2))
    c = dtypes.to_tensor(rec, copy=True)
    assert c.data_ptr() != rec[3].data_ptr() and torch.equal(c, t)


def test_to_tensor_keeps_the_memory_alive():
    before = _core._test_live_buffers()
    rec = _record("w", "BF16", (3,), b"\x80\x3f\x00\x40\x40\x40")
    t = dtypes.to_tensor(rec)
    del rec
    assert _core._test_live_buffers() == before + 1
    assert t.tolist() == [1.0, 2.0, 3.0]
    del t
    assert _core._test_live_buffers() == before


def test_scalars_and_empty_tensors():
    s = dtypes.to_tensor(_record("s", "F64", (), torch.tensor(2.5, dtype=torch.float64).numpy().tobytes()))
    assert s.shape == () and s.item() == 2.5
    e = dtypes.to_tensor(_record("e", "BF16", (0, 7), b""))
    assert e.dtype == torch.bfloat16 and e.shape == (0, 7)
    b = dtypes.to_tensor(_record("b", "BOOL", (3,), b"\x01\x00\x01"))
    assert b.tolist() == [True, False, True]


@pytest.mark.parametrize("dtype,shape,nbytes", [("F6_E3M2", (4, 4), 12), ("F4", (3, 2), 3),
                                                ("SOMETHING_NEW", (2, 5), 10)])
def test_unknown_dtypes_are_raw_tagged_bytes(dtype, shape, nbytes):
    raw = bytes(range(nbytes))
    t = dtypes.to_tensor(_record("x", dtype, shape, raw))
    assert t.dtype == torch.uint8 and tuple(t.shape) == (nbytes,)
    assert t.bigsmall_dtype == dtype and t.bigsmall_shape == shape
    assert dtypes.is_raw(t)
    assert t.numpy().tobytes() == raw
    moved = dtypes.retag(t, t.clone())
    assert moved.bigsmall_dtype == dtype
    assert dtypes.to_tensor(_record("x", dtype, shape, raw), copy=True).bigsmall_dtype == dtype


def test_a_size_that_does_not_match_is_an_error():
    with pytest.raises(ValueError, match="6 bytes for F32"):
        dtypes.to_tensor(_record("w", "F32", (2,), b"\x00" * 6))


def test_every_dtype_round_trips_in_process(dtype_model, no_daemon_env):
    got = bigsmall.from_pretrained(dtype_model.compressed, daemon=False)
    assert_equal_to_reference(got, dtype_model.tensors)


def test_every_dtype_streamed_in_process(dtype_model, no_daemon_env):
    got = {}
    with bigsmall.StreamingLoader(dtype_model.compressed, daemon=False) as loader:
        assert loader.layer_count() == 2
        got.update(loader.load_non_layer_tensors())
        for _, tensors in loader.iter_layers():
            got.update(tensors)
    assert_equal_to_reference(got, dtype_model.tensors)


def test_known_dtypes_equal_safetensors_load_file(dtype_model, no_daemon_env):
    st = pytest.importorskip("safetensors.torch")
    want = st.load_file(str(dtype_model.known))
    got = bigsmall.from_pretrained(dtype_model.known_compressed, daemon=False)
    assert sorted(got) == sorted(want)
    for name, w in want.items():
        g = got[name]
        assert g.dtype == w.dtype and g.shape == w.shape, name
        assert tensor_bytes(g) == tensor_bytes(w), name
        if not w.dtype.is_floating_point or w.dtype.itemsize > 1:
            assert torch.equal(g, w), name


def test_minilm_variants_equal_safetensors_load_file(minilm_variant, no_daemon_env):
    st = pytest.importorskip("safetensors.torch")
    original, compressed = minilm_variant
    want = st.load_file(str(original))
    got = bigsmall.from_pretrained(compressed, daemon=False)
    assert sorted(got) == sorted(want)
    for name, w in want.items():
        assert got[name].dtype == w.dtype and got[name].shape == w.shape, name
        assert tensor_bytes(got[name]) == tensor_bytes(w), name
