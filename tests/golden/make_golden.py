#!/usr/bin/env python3
"""Regenerates the golden files (run only when the format version changes):

    python3 tests/golden/make_golden.py path/to/bigsmall
    python3 tests/golden/make_golden.py path/to/bigsmall --expectations-only

--expectations-only rewrites corrupt/ and expected.json from the committed valid/ files, leaving
valid/ alone (run it when docs/FORMAT.md section 10 changes).

valid/*.safetensors   small originals of several dtypes (deterministic)
valid/NAME.MODE.bs    format 1.0 forms (balanced, storage, inference), written by the 1.0 writer and
                      frozen: this writer cannot make them, so they are never rewritten
valid/NAME.MODE.v1.1.bs  format 1.1 forms, written by the 1.1 writer and frozen like the 1.0 ones
valid/NAME.MODE.v1.2.bs  format 1.2 forms, written by the 1.2 writer and frozen like the 1.1 ones;
                      forms.safetensors holds tensors that take each 1.2 blob form (docs/FORMAT.md
                      5.3-5.5: raw, zstd, fields)
valid/NAME.MODE.v1.3.bs  format 1.3 forms written by this version (forms.*.v1.3.bs: raw, fields,
                      5.4's magicless zstd; small.*.v1.3.bs: 5.6's small planes; drift.*.v1.3.bs:
                      5.1's rans_segmented coder)
                      golden_test.py checks every future build still decodes all of them byte for
                      byte, and checks the 1.1 and 1.2 files' device checksums with an independent
                      Python implementation of docs/FORMAT.md section 3.1 (device_checksum.py)
corrupt/*.bs          damaged copies (and huge_index.bs, a small file declaring a 1 GiB index); expected.json gives, for each, its failure class and the
                      status code and CLI exit code that docs/FORMAT.md section 10.1 assigns to that
                      class (read from the spec's table, never from what a build prints), a
                      message fragment, and the command that must refuse it (decompress, or verify
                      for damage only verify looks for: a wrong 1.1 device or group checksum, a non-zero
                      byte in the padding between groups)
corrupt/v1.1_*.bs     need the Python modules xxhash and zstandard to rebuild (index and header
                      checksums); kept from an earlier run when they are missing
"""
import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
FORMAT_MD = os.path.join(HERE, "..", "..", "docs", "FORMAT.md")


def error_table(path=FORMAT_MD):
    """docs/FORMAT.md section 10.1 as {class id: (status code, CLI exit code)}."""
    rows, in_section = {}, False
    for line in open(path, encoding="utf-8"):
        if line.startswith("### 10.1"):
            in_section = True
            continue
        if in_section and line.startswith("#"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not in_section or len(cells) != 4 or cells[0] in ("id", "---"):
            continue
        code = cells[2].split(",")[0].strip()
        rows[cells[0]] = (None if code == "\u2014" else code, int(cells[3]))
    if not rows:
        raise SystemExit("no error table (section 10.1) in " + path)
    return rows


def write_st(path, tensors):
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for t in tensors:
            f.write(t[3])


def q41_blocks(rng, blocks):
    out = bytearray()
    for _ in range(blocks):
        out += struct.pack("<HH", 0x2000 + rng.randrange(96), 0xA400 + rng.randrange(64))
        out += bytes(rng.randrange(5, 12) | (rng.randrange(5, 12) << 4) for _ in range(16))
    return bytes(out)


def table_rows(rng, rows, cols, distinct):
    base = [struct.pack("<%df" % cols, *(rng.gauss(0, 0.5) for _ in range(cols))) for _ in range(distinct)]
    return b"".join(base[r % distinct] for r in range(rows))


def drifting_bytes(rng, rows, cols):
    """FP8-like bytes whose spread grows row by row (embedding rows sorted by frequency): the case
    for one rANS table per run of chunks (docs/FORMAT.md 5.1, rans_segmented)."""
    out = bytearray()
    for r in range(rows):
        spread = 2 + 14 * r // rows
        out += bytes(0x30 + min(rng.randrange(spread), rng.randrange(spread)) for _ in range(cols))
    return bytes(out)


def weights(rng, n, width):
    out = bytearray()
    for _ in range(n):
        v = struct.pack("<f", rng.gauss(0, 0.02))
        out += v[4 - width:] if width < 4 else v
    return bytes(out)


V11_CASES = [
    # name, failure class, message fragment, command that must refuse it
    ("v1.1_device_checksum.bs", "tensor-data",
     "tensor 'model.layers.0.self_attn.q_proj.weight' failed its device checksum", "verify"),
    ("v1.1_group_checksum.bs", "tensor-data", "group 1 ('model.layers.0') failed its group checksum", "verify"),
    ("v1.1_blob_flip.bs", "tensor-data", "group 0 ('') failed its group checksum", "verify"),
    ("v1.1_truncated_trailer.bs", "index-structure", "checksum trailer is truncated", "decompress"),
    ("v1.1_trailing_bytes.bs", "index-structure", "trailing bytes", "decompress"),
    ("v1.1_future_minor.bs", "unknown-minor-version", "format version 1.4 is not supported", "decompress"),
]


def put_v11(bigsmall, valid, corrupt, put):
    """Damaged copies of valid/bf16_llama.balanced.v1.1.bs (docs/FORMAT.md 3.2): the index is
    decompressed, edited, recompressed and its index and header checksums fixed up, so only the
    intended damage remains."""
    try:
        import xxhash
        import zstandard
    except ImportError:
        for name, failure_class, fragment, command in V11_CASES:
            if not os.path.exists(os.path.join(corrupt, name)):
                raise SystemExit("%s is missing and rebuilding it needs the Python modules xxhash and "
                                 "zstandard" % name)
            put(name, None, failure_class, fragment, command)
        return
    src = os.path.join(valid, "bf16_llama.balanced.v1.1.bs")
    good = open(src, "rb").read()
    info = json.loads(subprocess.run([bigsmall, "info", src, "--json"], check=True, capture_output=True,
                                     text=True).stdout)
    num_tensors, num_groups = info["tensor_count"], len(info["groups"])
    index_offset, stored, raw_size = struct.unpack_from("<QQQ", good, 16)
    raw = zstandard.ZstdDecompressor().decompress(good[index_offset:index_offset + stored])
    assert len(raw) == raw_size
    trailer = len(raw) - 8 * (num_tensors + num_groups)

    def rebuild(new_raw, minor=1, body=good[:index_offset]):
        frame = zstandard.ZstdCompressor(level=9, write_content_size=True).compress(bytes(new_raw))
        out = bytearray(body + frame)
        struct.pack_into("<H", out, 10, minor)
        struct.pack_into("<QQQ", out, 24, len(frame), len(new_raw), xxhash.xxh3_64_intdigest(frame))
        struct.pack_into("<Q", out, 48, len(out))
        struct.pack_into("<Q", out, 56, xxhash.xxh3_64_intdigest(bytes(out[:56])))
        return bytes(out)

    assert rebuild(raw) == rebuild(bytearray(raw))  # deterministic
    data = {}
    r = bytearray(raw)
    r[trailer + 8 * 1] ^= 0x01  # tensor 1's device checksum (tensors are in data order)
    data["v1.1_device_checksum.bs"] = rebuild(r)
    r = bytearray(raw)
    r[trailer + 8 * (num_tensors + 1) + 7] ^= 0x80  # group 1's checksum
    data["v1.1_group_checksum.bs"] = rebuild(r)
    body = bytearray(good[:index_offset])
    body[4096 + 100] ^= 0x01  # inside group 0's blobs: its group checksum is checked before decoding
    data["v1.1_blob_flip.bs"] = rebuild(raw, body=bytes(body))
    data["v1.1_truncated_trailer.bs"] = rebuild(raw[:-8])
    data["v1.1_trailing_bytes.bs"] = rebuild(raw + b"\0" * 8)
    data["v1.1_future_minor.bs"] = rebuild(raw, minor=4)
    for name, failure_class, fragment, command in V11_CASES:
        put(name, data[name], failure_class, fragment, command)


def main():
    bigsmall = sys.argv[1]
    expectations_only = "--expectations-only" in sys.argv[2:]
    table = error_table()
    rng = random.Random(2026)
    valid, corrupt = os.path.join(HERE, "valid"), os.path.join(HERE, "corrupt")
    frozen = ["%s.%s%s.bs" % (n, m, v) for n in ("bf16_llama", "mixed_dtypes")
              for m in ("balanced", "storage", "inference") for v in ("", ".v1.1", ".v1.2")]
    frozen += ["forms.%s.v1.2.bs" % m for m in ("balanced", "storage", "inference")]
    frozen += ["bf16_llama_tuned.delta.v1.1.bs", "bf16_llama_tuned.delta.v1.2.bs"]
    missing = [f for f in frozen if not os.path.exists(os.path.join(valid, f))]
    if missing:
        raise SystemExit("format 1.0-1.2 golden files missing (this writer cannot make them; restore "
                         "them from git): %s" % missing)
    for d in ((corrupt,) if expectations_only else (valid, corrupt)):
        keep = {}
        for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            # Frozen 1.0 files and the originals stay; corrupt files needing XXH3 to rebuild are kept.
            if d == valid and (name in frozen or name.endswith(".safetensors")):
                keep[name] = open(os.path.join(d, name), "rb").read()
            if d == corrupt and (name in ("future_version.bs", "huge_index.bs", "index_not_last.bs") or
                                 (name.startswith("v1.1_") and name != "v1.1_future_minor.bs")):
                keep[name] = open(os.path.join(d, name), "rb").read()
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        for name, data in keep.items():
            open(os.path.join(d, name), "wb").write(data)
    files = {
        "bf16_llama.safetensors": [
            ("model.embed_tokens.weight", "BF16", [64, 32], weights(rng, 2048, 2)),
            ("model.layers.0.self_attn.q_proj.weight", "BF16", [32, 32], weights(rng, 1024, 2)),
            ("model.layers.0.input_layernorm.weight", "BF16", [32], b"\x80\x3f" * 32),
            ("model.layers.1.mlp.down_proj.weight", "BF16", [32, 64], weights(rng, 2048, 2)),
            ("model.norm.weight", "BF16", [32], b"\x80\x3f" * 32)],
        "mixed_dtypes.safetensors": [
            ("encoder.layer.0.w", "F32", [300], weights(rng, 300, 4)),
            ("encoder.layer.0.h", "F16", [100], bytes(rng.getrandbits(8) for _ in range(200))),
            ("encoder.layer.1.q", "F8_E4M3", [257], bytes(rng.randrange(40, 60) for _ in range(257))),
            ("encoder.layer.1.packed", "U8", [64], bytes(rng.getrandbits(8) for _ in range(64))),
            ("ids", "I64", [16], struct.pack("<16q", *range(16))),
            ("mask", "BOOL", [8], bytes([1, 0] * 4)),
            ("future", "F4", [6], bytes([0x12, 0x34, 0x56]))],
        "forms.safetensors": [
            # Q4_1-like blocks as bytes (20-byte records: f16 scale, f16 minimum, 16 nibble bytes):
            # the fields form (5.5).
            ("blocks.0.q41", "U8", [2000, 20], q41_blocks(rng, 2000)),
            # A table whose rows repeat: whole-tensor zstd (5.4).
            ("blocks.0.table", "F32", [96, 16], table_rows(rng, 96, 16, 3)),
            # Tiny tensors: raw (5.3).
            ("blocks.1.step", "I64", [1], struct.pack("<q", 123456789)),
            ("blocks.1.scale", "BF16", [2], b"\x80\x3f\x00\x40"),
            ("blocks.1.w", "BF16", [48, 32], weights(rng, 1536, 2))],
        # 1.3: a drifting tensor (rans_segmented, 5.1; compressed with 64K-element chunks).
        "drift.safetensors": [("embed.weight", "F8_E4M3", [512, 512], drifting_bytes(rng, 512, 512))],
        # 1.3: tensors of one chunk (at most 100 elements here): small planes (5.6).
        "small.safetensors": [
            ("head.bias", "F32", [96], weights(rng, 96, 4)),
            ("head.norm", "BF16", [100], weights(rng, 100, 2)),
            ("head.gate", "F16", [64], weights(rng, 64, 2))],
    }
    expected = {"valid": {}, "corrupt": {}, "versions": {}}
    for name, tensors in files.items():
        path = os.path.join(valid, name)
        if not expectations_only and not os.path.exists(path):
            write_st(path, tensors)
        expected["valid"][name] = hashlib.sha256(open(path, "rb").read()).hexdigest()
        for mode, flag in (("balanced", []), ("storage", ["--storage"]), ("inference", ["--inference"])):
            stem = "%s.%s" % (name[:-len(".safetensors")], mode)
            frozen_versions = {"forms.safetensors": ("1.2",), "small.safetensors": (),
                               "drift.safetensors": ()}.get(name, ("1.0", "1.1", "1.2"))
            for version in frozen_versions:
                frozen_name = stem + (".bs" if version == "1.0" else ".v%s.bs" % version)
                expected["valid"][frozen_name] = name
                expected["versions"][frozen_name] = version
            out = os.path.join(valid, stem + ".v1.3.bs")
            if not expectations_only:
                chunk = "65536" if name == "drift.safetensors" else "100"
                subprocess.run([bigsmall, "compress", path, "-o", out, "-q", "--chunk-elements", chunk] + flag,
                               check=True)
            expected["valid"][os.path.basename(out)] = name
            expected["versions"][os.path.basename(out)] = "1.3"
    # A fine-tune delta (docs/FORMAT.md 7, 1.1 frozen and 1.2): bf16_llama with the low mantissa bit of about one
    # element in eight flipped, stored against bf16_llama.safetensors (given relative, as the index
    # keeps it). Its device checksums are those of the rebuilt tensors (3.1).
    tuned_rng = random.Random(7)
    tuned = []
    for tname, dtype, shape, data in files["bf16_llama.safetensors"]:
        data = bytearray(data)
        for i in range(0, len(data), 2):
            if tuned_rng.random() < 0.125:
                data[i] ^= 0x01
        tuned.append((tname, dtype, shape, bytes(data)))
    tuned_name = "bf16_llama_tuned.safetensors"
    if not expectations_only and not os.path.exists(os.path.join(valid, tuned_name)):
        write_st(os.path.join(valid, tuned_name), tuned)
    expected["valid"][tuned_name] = hashlib.sha256(open(os.path.join(valid, tuned_name), "rb").read()).hexdigest()
    frozen_deltas, delta = ["bf16_llama_tuned.delta.v1.1.bs", "bf16_llama_tuned.delta.v1.2.bs"], \
        "bf16_llama_tuned.delta.v1.3.bs"
    if not expectations_only:
        subprocess.run([os.path.abspath(bigsmall), "compress", tuned_name, "-o", delta, "-q", "--chunk-elements",
                        "100", "--base", "bf16_llama.safetensors"], check=True, cwd=valid)
    expected["bases"] = {}
    for name, version in zip(frozen_deltas + [delta], ("1.1", "1.2", "1.3")):
        expected["valid"][name] = tuned_name
        expected["versions"][name] = version
        expected["bases"][name] = "bf16_llama.safetensors"
    good = open(os.path.join(valid, "bf16_llama.balanced.bs"), "rb").read()
    hdr_index_offset = struct.unpack_from("<Q", good, 16)[0]

    def put(name, data, failure_class, fragment, command="decompress"):
        if data is not None:
            open(os.path.join(corrupt, name), "wb").write(data)
        code, exit_code = table[failure_class]
        expected["corrupt"][name] = {"class": failure_class, "code": code, "exit": exit_code,
                                     "message": fragment, "command": command}

    put("bad_magic.bs", b"X" + good[1:], "bad-magic", "not a .bs file")
    flipped = bytearray(good)
    flipped[20] ^= 1
    put("header_checksum.bs", bytes(flipped), "header-checksum", "header checksum mismatch")
    put("truncated.bs", good[:len(good) - 10], "file-size", "truncated or appended to")
    put("appended.bs", good + b"\0", "file-size", "truncated or appended to")
    flipped = bytearray(good)
    flipped[hdr_index_offset + 5] ^= 0x40
    put("index_checksum.bs", bytes(flipped), "index-checksum", "index checksum mismatch")
    flipped = bytearray(good)
    flipped[4096 + 200] ^= 0x01  # inside the first group's blobs
    put("blob_flip.bs", bytes(flipped), "tensor-data", "model.embed_tokens.weight")
    put("empty.bs", b"", "truncated", "too short")
    # docs/FORMAT.md 1: padding must be zero; the header padding is checked at open, the padding
    # between groups by verify (decompress never reads it).
    flipped = bytearray(good)
    flipped[100] ^= 0x01
    put("header_padding.bs", bytes(flipped), "padding", "non-zero byte at offset 100 in the padding after the header")
    groups = json.loads(subprocess.run([bigsmall, "info", os.path.join(valid, "bf16_llama.balanced.bs"), "--json"],
                                       check=True, capture_output=True, text=True).stdout)["groups"]
    gap = groups[0]["offset"] + groups[0]["stored_bytes"]
    assert gap < groups[1]["offset"]
    flipped = bytearray(good)
    flipped[gap] ^= 0x01
    put("group_padding.bs", bytes(flipped), "padding",
        "non-zero byte at offset %d in the padding after group 0" % gap, "verify")
    version = bytearray(good)
    version[8] = 9  # major version 9, header checksum fixed up below
    import importlib
    try:
        xxhash = importlib.import_module("xxhash")
        struct.pack_into("<Q", version, 56, xxhash.xxh3_64_intdigest(bytes(version[:56])))
        put("future_version.bs", bytes(version), "unknown-major-version", "is not supported")
        # Eight zero bytes after the index, inside file_size: nothing would cover them.
        tail = bytearray(good + b"\0" * 8)
        struct.pack_into("<Q", tail, 48, len(tail))
        struct.pack_into("<Q", tail, 56, xxhash.xxh3_64_intdigest(bytes(tail[:56])))
        put("index_not_last.bs", bytes(tail), "index-size", "index does not end the file")
    except ImportError:
        if os.path.exists(os.path.join(corrupt, "future_version.bs")):  # kept from an earlier run
            put("future_version.bs", None, "unknown-major-version", "is not supported")
        if os.path.exists(os.path.join(corrupt, "index_not_last.bs")):
            put("index_not_last.bs", None, "index-size", "index does not end the file")
    # 37 KB declaring a 1 GiB index (one zstd frame of RLE blocks that truly inflates to 1 GiB):
    # rejected before allocating. Written by hand once (codec/bs_roundtrip_test.cc FileWithIndex
    # with ZeroFrame(2^30)); kept across regenerations.
    if os.path.exists(os.path.join(corrupt, "huge_index.bs")):
        put("huge_index.bs", None, "index-size", "claims 1073741824 bytes")
    put_v11(bigsmall, valid, corrupt, put)
    json.dump(expected, open(os.path.join(HERE, "expected.json"), "w"), indent=1, sort_keys=True)
    print("golden files written")


if __name__ == "__main__":
    main()
