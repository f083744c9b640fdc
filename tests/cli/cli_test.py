#!/usr/bin/env python3
"""End-to-end tests of the `bigsmall` command-line tool.

Usage: cli_test.py PATH/TO/bigsmall [-k SUBSTRING]

Writes small safetensors files and model directories itself (stdlib only),
runs the binary as a subprocess and checks outputs, exit codes and that
failures leave nothing behind. With BIGSMALL_CORPUS=/path/to/x.safetensors it
also round-trips that file in every mode. Prints "N passed, M failed" last
and exits non-zero on any failure.
"""

import array
import hashlib
import json
import os
import pty
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "golden"))
import device_checksum  # noqa: E402  (docs/FORMAT.md 3.1, written from the spec)

BIGSMALL = None
MODES = ["balanced", "storage", "inference"]
MODE_FLAGS = {"balanced": [], "storage": ["--storage"], "inference": ["--inference"]}

# Exit codes (cli/exit_codes.h).
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_DATA_LOSS, EXIT_NOT_FOUND, EXIT_PRECONDITION, EXIT_EXISTS = range(7)


# ----------------------------------------------------------------------------
# Writing safetensors files.

def f32_bytes(values):
    return array.array("f", values).tobytes()


def bf16_from_f32(raw):
    """Truncates little-endian float32 bytes to bfloat16 (top two bytes)."""
    out = bytearray(len(raw) // 2)
    out[0::2] = raw[2::4]
    out[1::2] = raw[3::4]
    return bytes(out)


def gauss(rng, n, sigma=0.02):
    return [rng.gauss(0.0, sigma) for _ in range(n)]


def make_tensor(rng, dtype, shape, sigma=0.02):
    n = 1
    for d in shape:
        n *= d
    if dtype == "BF16":
        return bf16_from_f32(f32_bytes(gauss(rng, n, sigma)))
    if dtype == "F32":
        return f32_bytes(gauss(rng, n, sigma))
    if dtype == "F16":
        return struct.pack("<%de" % n, *gauss(rng, n, sigma))
    if dtype == "U8":
        return bytes(min(255, int(abs(rng.gauss(0, 20)))) for _ in range(n))
    if dtype == "I64":
        return struct.pack("<%dq" % n, *[rng.randrange(-1000, 50000) for _ in range(n)])
    raise ValueError(dtype)


def write_safetensors(path, tensors, metadata=None):
    """tensors: list of (name, dtype, shape, bytes), written in this order."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for _, _, _, data in tensors:
            f.write(data)


def model_tensors(seed, layers=2, big=False):
    """Layer-style tensors of every dtype the tests cover."""
    rng = random.Random(seed)
    t = []
    t.append(("model.embed_tokens.weight", "BF16", [64, 32], make_tensor(rng, "BF16", [64, 32])))
    for i in range(layers):
        p = "model.layers.%d." % i
        t.append((p + "self_attn.q_proj.weight", "BF16", [32, 32], make_tensor(rng, "BF16", [32, 32])))
        t.append((p + "mlp.up_proj.weight", "F16", [32, 48], make_tensor(rng, "F16", [32, 48])))
        t.append((p + "input_layernorm.weight", "F32", [32], make_tensor(rng, "F32", [32], 1.0)))
        t.append((p + "mlp.quant_map", "U8", [16, 16], make_tensor(rng, "U8", [16, 16])))
    t.append(("model.position_ids", "I64", [40], make_tensor(rng, "I64", [40])))
    t.append(("model.norm.weight", "F32", [32], make_tensor(rng, "F32", [32], 1.0)))
    t.append(("model.zeros", "BF16", [8, 8], bytes(128)))
    t.append(("model.empty", "F32", [0, 4], b""))
    t.append(("model.scalar", "F32", [], f32_bytes([3.5])))
    if big:
        # Several chunks at the default chunk size (65536 elements).
        t.append(("lm_head.weight", "BF16", [320, 512], make_tensor(rng, "BF16", [320, 512])))
    return t


def write_model_dir(path, seed):
    tensors = model_tensors(seed, layers=4)
    half = len(tensors) // 2
    shards = {"model-00001-of-00002.safetensors": tensors[:half],
              "model-00002-of-00002.safetensors": tensors[half:]}
    weight_map = {}
    for name, ts in shards.items():
        write_safetensors(os.path.join(path, name), ts, metadata={"format": "pt"})
        for t in ts:
            weight_map[t[0]] = name
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": sum(len(t[3]) for t in tensors)}, "weight_map": weight_map}, f)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"model_type": "llama", "num_hidden_layers": 4}, f)
    os.makedirs(os.path.join(path, "tokenizer"), exist_ok=True)
    with open(os.path.join(path, "tokenizer", "tokenizer.json"), "w") as f:
        f.write('{"version": "1.0", "vocab": {"a": 0, "b": 1}}\n')


# ----------------------------------------------------------------------------
# Helpers.

class Failure(Exception):
    pass


def check(cond, message):
    if not cond:
        raise Failure(message)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_hashes(root):
    out = {}
    for d, _, files in os.walk(root):
        for name in files:
            p = os.path.join(d, name)
            out[os.path.relpath(p, root)] = sha256(p)
    return out


def run(args, expect=None, env=None, stdin=subprocess.DEVNULL):
    proc = subprocess.run([BIGSMALL] + [str(a) for a in args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, stdin=stdin, env=env, timeout=600)
    proc.stdout = proc.stdout.decode("utf-8", "replace")
    proc.stderr = proc.stderr.decode("utf-8", "replace")
    if expect is not None and proc.returncode != expect:
        raise Failure("bigsmall %s: exit %d, expected %d\nstdout: %s\nstderr: %s" %
                      (" ".join(map(str, args)), proc.returncode, expect, proc.stdout[-2000:],
                       proc.stderr[-2000:]))
    return proc


def check_error(proc, *needles):
    """An error went to stderr as 'bigsmall: error: ...' and names the needles."""
    check(proc.stderr.startswith("bigsmall: error: "), "stderr lacks 'bigsmall: error: ': %r" % proc.stderr)
    for n in needles:
        check(str(n) in proc.stderr, "stderr does not mention %r: %r" % (n, proc.stderr))


def no_temp_files(directory):
    leftovers = [n for n in os.listdir(directory) if ".tmp" in n]
    check(not leftovers, "temporary files left in %s: %s" % (directory, leftovers))


def flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x5A]))


def info_json(path, *extra):
    return json.loads(run(["info", path, "--json"] + list(extra), expect=0).stdout)


class Env:
    """Per-run scratch space with shared fixtures built once."""

    def __init__(self, root):
        self.root = root
        self.model = os.path.join(root, "fixtures", "model.safetensors")
        write_safetensors(self.model, model_tensors(1, big=True), metadata={"format": "pt"})
        self.model_dir = os.path.join(root, "fixtures", "model_dir")
        write_model_dir(self.model_dir, 2)
        self.counter = 0

    def scratch(self):
        self.counter += 1
        d = os.path.join(self.root, "case%03d" % self.counter)
        os.makedirs(d)
        return d

    def copy_model(self, d, name="model.safetensors"):
        p = os.path.join(d, name)
        shutil.copyfile(self.model, p)
        return p


# ----------------------------------------------------------------------------
# Cases.

def test_version(env):
    p = run(["--version"], expect=0)
    check(p.stdout.startswith("bigsmall "), "version: %r" % p.stdout)


def test_help(env):
    p = run(["help"], expect=0)
    for word in ["compress", "decompress", "info", "verify", "Exit codes", "6  output exists"]:
        check(word in p.stdout, "help lacks %r" % word)
    p = run(["help", "compress"], expect=0)
    check("--storage" in p.stdout and "--base" in p.stdout, "help compress: %r" % p.stdout)
    run(["help", "nonsense"], expect=EXIT_USAGE)
    p = run(["--help"], expect=0)
    check("Exit codes" in p.stdout, "--help lacks exit codes")
    run(["compress", "--help"], expect=0)


def test_usage_errors(env):
    d = env.scratch()
    m = env.copy_model(d)
    cases = [
        [],
        ["frobnicate"],
        ["compress"],
        ["compress", m, "--bogus-flag"],
        ["compress", m, "--storage", "--inference"],
        ["compress", m, "--threads", "-1"],
        ["compress", m, "--threads", "many"],
        ["compress", m, "--chunk-elements", "0"],
        ["compress", m, "extra-positional"],
        ["decompress"],
        ["info"],
        ["verify"],
        ["verify", m, "--against"],
    ]
    for args in cases:
        p = run(args, expect=EXIT_USAGE)
        check_error(p)
    check(sorted(os.listdir(d)) == ["model.safetensors"], "usage errors wrote files: %s" % os.listdir(d))


def test_roundtrip_file_modes(env):
    d = env.scratch()
    m = env.copy_model(d)
    want = sha256(m)
    sizes = {}
    for mode in MODES:
        bs = os.path.join(d, "m.%s.bs" % mode)
        out = os.path.join(d, "m.%s.out" % mode)
        p = run(["compress", m, "-o", bs] + MODE_FLAGS[mode], expect=0)
        check(p.stderr == "", "progress or noise on a non-terminal stderr: %r" % p.stderr)
        check(p.stdout.startswith("compressed %s -> %s: " % (m, bs)), "summary: %r" % p.stdout)
        check("%" in p.stdout and "MB/s" in p.stdout, "summary: %r" % p.stdout)
        run(["decompress", bs, "-o", out], expect=0)
        check(sha256(out) == want, "%s: round trip differs" % mode)
        check(info_json(bs)["mode"] == mode, "info mode for %s" % mode)
        sizes[mode] = os.path.getsize(bs)
    check(sha256(m) == want, "input changed")
    # Weights compress.
    check(sizes["storage"] < os.path.getsize(m), "storage output is not smaller: %s" % sizes)
    no_temp_files(d)


def test_default_names(env):
    d = env.scratch()
    m = env.copy_model(d)
    want = sha256(m)
    run(["compress", m, "-q"], expect=0)
    check(os.path.exists(m + ".bs"), "default output name")
    os.remove(m)
    p = run(["decompress", m + ".bs", "--quiet"], expect=0)
    check(p.stdout == "", "--quiet printed %r" % p.stdout)
    check(sha256(m) == want, "default decompress name round trip")


def test_roundtrip_directory(env):
    d = env.scratch()
    want = tree_hashes(env.model_dir)
    for mode in MODES:
        bs = os.path.join(d, "dir.%s.bs" % mode)
        out = os.path.join(d, "dir.%s" % mode)
        run(["compress", env.model_dir, "-o", bs] + MODE_FLAGS[mode], expect=0)
        check(os.path.isfile(os.path.join(bs, "bigsmall-manifest.json")), "no manifest")
        check(os.path.isfile(os.path.join(bs, "model-00001-of-00002.safetensors.bs")), "no shard .bs")
        check(os.path.isfile(os.path.join(bs, "tokenizer", "tokenizer.json")), "subdirectory file not copied")
        run(["verify", bs], expect=0)
        run(["verify", bs, "--against", env.model_dir], expect=0)
        run(["decompress", bs, "-o", out], expect=0)
        got = tree_hashes(out)
        check(got == want, "%s: directory round trip differs:\n%s\n%s" % (mode, sorted(got), sorted(want)))
    # Default name for a directory with a trailing slash.
    src = os.path.join(d, "mydir")
    shutil.copytree(env.model_dir, src)
    run(["compress", src + "/", "-q"], expect=0)
    check(os.path.isdir(src + ".bs"), "DIR/ -> DIR.bs")
    shutil.rmtree(src)
    run(["decompress", src + ".bs/", "-q"], expect=0)
    check(tree_hashes(src) == want, "default-name directory round trip")
    no_temp_files(d)


def test_info_file(env):
    d = env.scratch()
    m = env.copy_model(d)
    bs = m + ".bs"
    run(["compress", m, "-q"], expect=0)
    j = info_json(bs)
    check(j["kind"] == "file", "kind")
    check(j["format_version"] == "1.3", "format_version %r" % j["format_version"])
    check(j["checksums"] is True, "1.1 files carry device and group checksums")
    check(j["mode"] == "balanced", "mode")
    check(j["writer"].startswith("bigsmall"), "writer %r" % j["writer"])
    check(j["original_bytes"] == os.path.getsize(m), "original_bytes")
    check(j["stored_bytes"] == os.path.getsize(bs), "stored_bytes")
    check(abs(j["ratio"] - os.path.getsize(bs) / os.path.getsize(m)) < 1e-9, "ratio")
    tensors = model_tensors(1, big=True)
    check(j["tensor_count"] == len(tensors), "tensor_count %d" % j["tensor_count"])
    check(j["delta"] is False and j["delta_tensors"] == 0, "delta")
    dtypes = {x["dtype"]: x for x in j["dtypes"]}
    check(set(dtypes) == {"BF16", "F16", "F32", "U8", "I64"}, "dtypes %s" % sorted(dtypes))
    for name in dtypes:
        want = sum(len(t[3]) for t in tensors if t[1] == name)
        check(dtypes[name]["original_bytes"] == want, "%s original bytes" % name)
        check(dtypes[name]["stored_bytes"] > 0, "%s stored bytes" % name)
    bf = dtypes["BF16"]
    check(0 < bf["bits_per_weight"] < 16, "BF16 bits/weight %r" % bf["bits_per_weight"])
    groups = {g["name"]: g for g in j["groups"]}
    check("model.layers.0" in groups and groups["model.layers.1"]["layer"] == 1, "groups %s" % sorted(groups))
    check(groups["model.layers.0"]["tensors"] == 4, "layer 0 tensor count")
    check(sum(g["tensors"] for g in j["groups"]) == len(tensors), "group tensor counts")
    check("tensors" not in j, "per-tensor list without --tensors")

    j = info_json(bs, "--tensors")
    check(len(j["tensors"]) == len(tensors), "--tensors count")
    by_name = {t["name"]: t for t in j["tensors"]}
    for name, dtype, shape, data in tensors:
        t = by_name[name]
        check(t["dtype"] == dtype and t["shape"] == shape and t["original_bytes"] == len(data),
              "tensor %s: %s" % (name, t))
        # docs/FORMAT.md 3.1, from the independent Python reference.
        want = "%016x" % device_checksum.device_checksum(data)
        check(t.get("device_checksum") == want, "tensor %s device checksum %s, spec says %s" %
              (name, t.get("device_checksum"), want))
    # Planes blobs (form 1, or 6 for one chunk) have the dtype's planes; raw and zstd blobs
    # (docs/FORMAT.md 5.3, 5.4: tiny or table-like tensors) one.
    planes = {"BF16": 2, "F16": 2, "F32": 4, "U8": 1, "I64": 8}
    forms = set()
    for t in j["tensors"]:
        forms.add(t["form"])
        if t["original_bytes"] == 0:
            continue
        n = planes[t["dtype"]] if t["form"] in ("planes", "small-planes") else 1
        check(t["form"] in ("planes", "small-planes", "raw", "zstd-magicless", "fields"),
              "form of %s: %s" % (t["name"], t["form"]))
        check(len(t["planes"]) == n and t["coders"].count("/") == n - 1, "planes of %s: %s" % (t["name"], t))
        if t["form"] == "raw":
            check(t["stored_bytes"] == t["original_bytes"] + 1, "a raw blob costs its bytes + 1: %s" % t)
    check("planes" in forms and "raw" in forms, "blob forms %s" % sorted(forms))
    check(by_name["model.zeros"]["coders"] == "const/const", "zeros coders %r" % by_name["model.zeros"]["coders"])
    check("rans" in by_name["lm_head.weight"]["coders"], "lm_head coders %r" % by_name["lm_head.weight"]["coders"])

    p = run(["info", bs], expect=0)
    for word in ["format", "1.3", "balanced", "model.layers.1", "by dtype", "BF16", "I64", "bits/weight"]:
        check(word in p.stdout, "info lacks %r:\n%s" % (word, p.stdout))
    check("lm_head.weight" not in p.stdout, "info without --tensors lists tensors")
    p = run(["info", bs, "--tensors"], expect=0)
    for word in ["lm_head.weight", "[320,512]", "rans", "model.position_ids"]:
        check(word in p.stdout, "info --tensors lacks %r:\n%s" % (word, p.stdout))


def test_info_directory(env):
    d = env.scratch()
    bs = os.path.join(d, "dir.bs")
    run(["compress", env.model_dir, "-o", bs, "--storage", "-q"], expect=0)
    j = info_json(bs)
    check(j["kind"] == "directory" and j["mode"] == "storage", "kind/mode %s %s" % (j["kind"], j["mode"]))
    check(len(j["files"]) == 2, "files")
    orig_total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(env.model_dir) for f in fs)
    stored_total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(bs) for f in fs)
    check(j["original_bytes"] == orig_total, "original %d vs %d" % (j["original_bytes"], orig_total))
    check(j["stored_bytes"] == stored_total, "stored %d vs %d" % (j["stored_bytes"], stored_total))
    copied = {c["name"] for c in j["copied"]}
    check(copied == {"config.json", "model.safetensors.index.json", "tokenizer/tokenizer.json"}, "copied %s" % copied)
    check(j["tensor_count"] == len(model_tensors(2, layers=4)), "tensor count")
    j = info_json(bs, "--tensors")
    check(all("tensors" in f for f in j["files"]), "--tensors on directory")
    p = run(["info", bs], expect=0)
    check("compressed model directory" in p.stdout and "tokenizer/tokenizer.json" in p.stdout, p.stdout)


def test_json_output(env):
    d = env.scratch()
    m = env.copy_model(d)
    bs = m + ".bs"
    j = json.loads(run(["compress", m, "--json", "--inference"], expect=0).stdout)
    check(j["ok"] is True and j["command"] == "compress" and j["mode"] == "inference", "compress json %s" % j)
    check(j["input_bytes"] == os.path.getsize(m) and j["output_bytes"] == os.path.getsize(bs), "sizes %s" % j)
    check(j["output"] == bs and j["tensors"] == len(model_tensors(1, big=True)) and j["files"] == 1, "%s" % j)
    out = os.path.join(d, "out.safetensors")
    j = json.loads(run(["decompress", bs, "-o", out, "--json"], expect=0).stdout)
    check(j["ok"] is True and j["output_bytes"] == os.path.getsize(m) and j["tensors"] > 0, "decompress json %s" % j)
    j = json.loads(run(["verify", bs, "--json", "--against", m], expect=0).stdout)
    check(j["ok"] is True and j["output_bytes"] == os.path.getsize(m), "verify json %s" % j)
    # Errors with --json: still one JSON object on stdout.
    p = run(["decompress", bs, "-o", out, "--json"], expect=EXIT_EXISTS)
    j = json.loads(p.stdout)
    check(j["ok"] is False and j["exit_code"] == EXIT_EXISTS and "--force" in j["error"], "error json %s" % j)
    check_error(p, "--force")


def test_verify(env):
    d = env.scratch()
    m = env.copy_model(d)
    bs = m + ".bs"
    run(["compress", m, "-q"], expect=0)
    p = run(["verify", bs], expect=0)
    check("OK" in p.stdout, p.stdout)
    check("device checksums" in p.stdout and "group checksums" in p.stdout, "1.1 checks reported: " + p.stdout)
    j = json.loads(run(["verify", bs, "--json"], expect=0).stdout)
    info = info_json(bs)
    check(j["device_checksums"] == info["tensor_count"] and j["group_checksums"] == len(info["groups"]),
          "verify --json counts %s" % j)
    run(["verify", bs, "--against", m], expect=0)
    # One byte of tensor data differs.
    other = os.path.join(d, "other.safetensors")
    shutil.copyfile(m, other)
    flip_byte(other, os.path.getsize(other) - 100)
    p = run(["verify", bs, "--against", other], expect=EXIT_DATA_LOSS)
    check_error(p, "other.safetensors")
    # Longer and shorter originals.
    with open(other, "wb") as f:
        f.write(open(m, "rb").read() + b"\0")
    run(["verify", bs, "--against", other], expect=EXIT_DATA_LOSS)
    with open(other, "wb") as f:
        f.write(open(m, "rb").read()[:-1])
    run(["verify", bs, "--against", other], expect=EXIT_DATA_LOSS)
    run(["verify", bs, "--against", os.path.join(d, "missing.safetensors")], expect=EXIT_NOT_FOUND)
    # Directory against a directory with one changed file.
    bsd = os.path.join(d, "dir.bs")
    run(["compress", env.model_dir, "-o", bsd, "-q"], expect=0)
    changed = os.path.join(d, "changed")
    shutil.copytree(env.model_dir, changed)
    with open(os.path.join(changed, "config.json"), "a") as f:
        f.write(" ")
    run(["verify", bsd, "--against", changed], expect=EXIT_DATA_LOSS)
    shutil.rmtree(changed)
    shutil.copytree(env.model_dir, changed)
    flip_byte(os.path.join(changed, "model-00002-of-00002.safetensors"), 200)
    run(["verify", bsd, "--against", changed], expect=EXIT_DATA_LOSS)
    shutil.rmtree(changed)
    shutil.copytree(env.model_dir, changed)
    with open(os.path.join(changed, "extra.txt"), "w") as f:
        f.write("x")
    run(["verify", bsd, "--against", changed], expect=EXIT_DATA_LOSS)


def delta_fixtures(d):
    """base, fine-tune (two tensors changed, one added) and an unrelated wrong base."""
    base = model_tensors(10, big=True)
    rng = random.Random(11)
    tuned = []
    for name, dtype, shape, data in base:
        if name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.up_proj.weight"):
            data = make_tensor(rng, dtype, shape)
        elif dtype == "BF16" and name == "lm_head.weight":
            # Small perturbation of a few elements, as a fine-tune would.
            b = bytearray(data)
            for i in range(0, len(b), 997):
                b[i] ^= 0x01
            data = bytes(b)
        tuned.append((name, dtype, shape, data))
    tuned.append(("model.lora_extra.weight", "BF16", [16, 32], make_tensor(rng, "BF16", [16, 32])))
    wrong = model_tensors(12, big=True)
    paths = {}
    for key, tensors in (("base", base), ("tuned", tuned), ("wrong", wrong)):
        paths[key] = os.path.join(d, key + ".safetensors")
        write_safetensors(paths[key], tensors)
    return paths


def test_delta(env):
    d = env.scratch()
    p = delta_fixtures(d)
    bs = os.path.join(d, "tuned.bs")
    plain = os.path.join(d, "tuned.plain.bs")
    run(["compress", p["tuned"], "-o", bs, "--base", p["base"], "-q"], expect=0)
    run(["compress", p["tuned"], "-o", plain, "-q"], expect=0)
    check(os.path.getsize(bs) < os.path.getsize(plain),
          "delta not smaller: %d vs %d" % (os.path.getsize(bs), os.path.getsize(plain)))
    j = info_json(bs)
    check(j["delta"] is True and j["delta_tensors"] > 0, "info delta %s" % {k: j[k] for k in ("delta", "delta_tensors")})
    check("base" in j["base_name"], "base_name %r" % j["base_name"])
    check("delta" in run(["info", bs], expect=0).stdout, "info text lacks delta")
    out = os.path.join(d, "out.safetensors")
    run(["decompress", bs, "-o", out, "--base", p["base"]], expect=0)
    check(sha256(out) == sha256(p["tuned"]), "delta round trip")
    os.remove(out)
    run(["verify", bs, "--base", p["base"], "--against", p["tuned"]], expect=0)
    # Missing --base.
    r = run(["decompress", bs, "-o", out], expect=EXIT_PRECONDITION)
    check_error(r, "--base")
    check(not os.path.exists(out), "output left after missing base")
    run(["verify", bs], expect=EXIT_PRECONDITION)
    # Wrong base.
    r = run(["decompress", bs, "-o", out, "--base", p["wrong"]], expect=EXIT_PRECONDITION)
    check_error(r, "base")
    check(not os.path.exists(out), "output left after wrong base")
    run(["verify", bs, "--base", p["wrong"]], expect=EXIT_PRECONDITION)
    # Base that does not exist.
    run(["decompress", bs, "-o", out, "--base", os.path.join(d, "nope.safetensors")], expect=EXIT_NOT_FOUND)
    run(["compress", p["tuned"], "-o", os.path.join(d, "x.bs"), "--base", os.path.join(d, "nope")],
        expect=EXIT_NOT_FOUND)
    no_temp_files(d)
    check(not os.path.exists(out) and not os.path.exists(os.path.join(d, "x.bs")), "outputs left behind")


def test_delta_directory(env):
    d = env.scratch()
    tuned = os.path.join(d, "tuned")
    shutil.copytree(env.model_dir, tuned)
    shard = os.path.join(tuned, "model-00001-of-00002.safetensors")
    flip_byte(shard, os.path.getsize(shard) - 10)
    bs = os.path.join(d, "tuned.bs")
    run(["compress", tuned, "-o", bs, "--base", env.model_dir, "-q"], expect=0)
    out = os.path.join(d, "out")
    run(["decompress", bs, "-o", out], expect=EXIT_PRECONDITION)
    check(not os.path.exists(out), "output dir left after missing base")
    run(["decompress", bs, "-o", out, "--base", env.model_dir], expect=0)
    check(tree_hashes(out) == tree_hashes(tuned), "directory delta round trip")
    no_temp_files(d)


def test_existing_output(env):
    d = env.scratch()
    m = env.copy_model(d)
    want = sha256(m)
    bs = m + ".bs"
    with open(bs, "w") as f:
        f.write("keep me")
    p = run(["compress", m], expect=EXIT_EXISTS)
    check_error(p, bs, "--force")
    check(open(bs).read() == "keep me", "existing output overwritten")
    check(sha256(m) == want, "input changed")
    run(["compress", m, "--force", "-q"], expect=0)
    run(["verify", bs, "-q"], expect=0)
    # Decompress onto an existing file.
    p = run(["decompress", bs], expect=EXIT_EXISTS)
    check_error(p, "--force")
    check(sha256(m) == want, "decompress touched the existing output")
    out = os.path.join(d, "out.safetensors")
    with open(out, "w") as f:
        f.write("old")
    run(["decompress", bs, "-o", out, "-f", "-q"], expect=0)
    check(sha256(out) == want, "forced decompress")
    # Directories.
    bsd = os.path.join(d, "dir.bs")
    os.makedirs(bsd)
    run(["compress", env.model_dir, "-o", bsd], expect=EXIT_EXISTS)
    check(os.listdir(bsd) == [], "existing directory output modified")
    run(["compress", env.model_dir, "-o", bsd, "--force", "-q"], expect=0)
    run(["verify", bsd, "-q"], expect=0)
    no_temp_files(d)


def test_same_output_as_input(env):
    d = env.scratch()
    m = env.copy_model(d)
    want = sha256(m)
    for args in (["compress", m, "-o", m], ["compress", m, "-o", m, "--force"],
                 ["compress", m, "-o", os.path.join(d, ".", "model.safetensors"), "--force"]):
        p = run(args, expect=EXIT_USAGE)
        check_error(p, "overwrite the input")
        check(sha256(m) == want, "input changed")
    run(["compress", m, "-q"], expect=0)
    bs = m + ".bs"
    bs_sum = sha256(bs)
    run(["decompress", bs, "-o", bs, "--force"], expect=EXIT_USAGE)
    check(sha256(bs) == bs_sum, ".bs changed")
    run(["compress", env.model_dir, "-o", env.model_dir, "--force"], expect=EXIT_USAGE)
    no_temp_files(d)


def check_corrupt(bs, d, what):
    out = os.path.join(d, "out.safetensors")
    before = sorted(os.listdir(d))
    p = run(["decompress", bs, "-o", out], expect=EXIT_DATA_LOSS)
    check_error(p, os.path.basename(bs))
    check(not os.path.exists(out), "%s: output left behind" % what)
    check(sorted(os.listdir(d)) == before, "%s: files appeared: %s" % (what, set(os.listdir(d)) - set(before)))
    p = run(["verify", bs], expect=EXIT_DATA_LOSS)
    check_error(p, os.path.basename(bs))
    no_temp_files(d)


def test_corrupt(env):
    d = env.scratch()
    m = env.copy_model(d)
    bs = os.path.join(d, "model.bs")
    run(["compress", m, "-o", bs, "-q"], expect=0)
    good = open(bs, "rb").read()
    tensors = info_json(bs, "--tensors")["tensors"]
    big = max(tensors, key=lambda t: t["stored_bytes"])
    # A byte in the middle of the largest tensor blob (payload, not padding).
    flip_byte(bs, big["blob_offset"] + big["stored_bytes"] // 2)
    check_corrupt(bs, d, "flipped blob byte")
    # The first byte of a blob (its header).
    with open(bs, "wb") as f:
        f.write(good)
    flip_byte(bs, big["blob_offset"] + 1)
    check_corrupt(bs, d, "flipped blob header")
    # Header (after the magic) and the index at the end.
    for off, what in ((20, "header"), (len(good) - 5, "index")):
        with open(bs, "wb") as f:
            f.write(good)
        flip_byte(bs, off)
        check_corrupt(bs, d, what)
        run(["info", bs], expect=EXIT_DATA_LOSS)
    # Truncated, in the middle and by one byte; and appended to.
    for data, what in ((good[:len(good) // 2], "half"), (good[:-1], "minus one"), (good[:40], "40 bytes"),
                       (good + b"\0", "appended")):
        with open(bs, "wb") as f:
            f.write(data)
        check_corrupt(bs, d, what)
        run(["info", bs], expect=EXIT_DATA_LOSS)


def decoder_reads(bs, offset):
    """True when `offset` of the .bs is a byte a decoder reads (header, a layer group, the index),
    False for alignment padding (docs/FORMAT.md section 1)."""
    with open(bs, "rb") as f:
        head = f.read(64)
    index_offset = struct.unpack_from("<Q", head, 16)[0]
    if offset < 64 or offset >= index_offset:
        return True
    return any(g["offset"] <= offset < g["offset"] + g["stored_bytes"] for g in info_json(bs)["groups"])


def test_corrupt_exact_middle(env):
    """Flipping the exact middle byte, then a byte of the header padding, then one of the padding after
    a group: what the decoder reads is caught (exit 3); padding must be zero (docs/FORMAT.md section 1):
    verify refuses both padding flips naming the offset (exit 3), decompress refuses the header padding
    (checked at open) and rebuilds identical bytes past a flip in padding it never reads. Which case
    each flip is, is known beforehand."""
    d = env.scratch()
    m = env.copy_model(d)
    bs = os.path.join(d, "model.bs")
    # The aligned layout: the one with padding (a packed file, section 1.1, has none).
    run(["compress", m, "-o", bs, "--layout", "aligned", "-q"], expect=0)
    good = open(bs, "rb").read()
    header_padding = next(o for o in range(64, 4096) if not decoder_reads(bs, o))
    groups = sorted(info_json(bs)["groups"], key=lambda g: g["offset"])
    group_padding = next(g["offset"] + g["stored_bytes"] for g in groups[:-1]  # the last one ends at the index
                         if (g["offset"] + g["stored_bytes"]) % 4096 != 0)
    check(not decoder_reads(bs, group_padding), "padding at %d" % group_padding)
    check(header_padding < 4096, "header padding at %d" % header_padding)
    for offset in (len(good) // 2, header_padding, group_padding):
        with open(bs, "wb") as f:
            f.write(good)
        read = decoder_reads(bs, offset)
        flip_byte(bs, offset)
        out = os.path.join(d, "out.safetensors")
        if read or offset < 4096:
            p = run(["decompress", bs, "-o", out], expect=EXIT_DATA_LOSS)
            check_error(p, "model.bs")
            check(not os.path.exists(out), "output left")
        else:
            run(["decompress", bs, "-o", out, "-q"], expect=0)
            check(sha256(out) == sha256(m), "padding flip at %d changed the output" % offset)
            os.remove(out)
        if not read:
            p = run(["verify", bs], expect=EXIT_DATA_LOSS)
            check_error(p, "model.bs")
            check("non-zero byte at offset %d in the padding" % offset in p.stderr, "verify: %s" % p.stderr)
    no_temp_files(d)


def test_corrupt_directory(env):
    d = env.scratch()
    bsd = os.path.join(d, "dir.bs")
    run(["compress", env.model_dir, "-o", bsd, "-q"], expect=0)
    shard = os.path.join(bsd, "model-00002-of-00002.safetensors.bs")
    j = info_json(shard, "--tensors")
    big = max(j["tensors"], key=lambda t: t["stored_bytes"])
    flip_byte(shard, big["blob_offset"] + big["stored_bytes"] // 2)
    out = os.path.join(d, "out")
    p = run(["decompress", bsd, "-o", out], expect=EXIT_DATA_LOSS)
    check_error(p, "model-00002-of-00002.safetensors.bs")
    check(not os.path.exists(out), "output dir left")
    run(["verify", bsd], expect=EXIT_DATA_LOSS)
    no_temp_files(d)
    # A missing shard.
    shutil.rmtree(bsd)
    run(["compress", env.model_dir, "-o", bsd, "-q"], expect=0)
    os.remove(os.path.join(bsd, "model-00001-of-00002.safetensors.bs"))
    # docs/FORMAT.md 10.1 input-not-found: a shard the manifest lists is an input.
    p = run(["decompress", bsd, "-o", out], expect=EXIT_NOT_FOUND)
    check_error(p, "model-00001-of-00002.safetensors.bs")
    check(not os.path.exists(out), "output dir left")
    no_temp_files(d)


def test_not_found(env):
    d = env.scratch()
    nope = os.path.join(d, "nope.safetensors")
    for args in (["compress", nope], ["decompress", nope + ".bs"], ["info", nope + ".bs"],
                 ["verify", nope + ".bs"], ["info", "--json", nope]):
        p = run(args, expect=EXIT_NOT_FOUND)
        check_error(p, "nope.safetensors")
    check(os.listdir(d) == [], "files created: %s" % os.listdir(d))


def test_garbage(env):
    d = env.scratch()
    g = os.path.join(d, "garbage.bs")
    with open(g, "wb") as f:
        f.write(os.urandom(10000))
    # docs/FORMAT.md 10.1: bad-magic exits 1, truncated (shorter than the header) exits 3.
    for args in (["decompress", g, "-o", os.path.join(d, "o")], ["info", g], ["verify", g]):
        p = run(args, expect=EXIT_FAILURE)
        check_error(p, "garbage.bs", "not a .bs file")
    empty = os.path.join(d, "empty.bs")
    open(empty, "wb").close()
    p = run(["info", empty], expect=EXIT_DATA_LOSS)
    check_error(p, "empty.bs")
    # Garbage as a compress input.
    gs = os.path.join(d, "garbage.safetensors")
    with open(gs, "wb") as f:
        f.write(struct.pack("<Q", 12) + b"not json!!!!" + os.urandom(100))
    p = run(["compress", gs], expect=EXIT_FAILURE)  # input-invalid: not JSON
    check_error(p, "garbage.safetensors")
    check(not os.path.exists(gs + ".bs"), "output left")
    # A directory without safetensors files.
    empty_dir = os.path.join(d, "nothing")
    os.makedirs(empty_dir)
    with open(os.path.join(empty_dir, "README"), "w") as f:
        f.write("hi")
    p = run(["compress", empty_dir], expect=EXIT_FAILURE)  # input-invalid
    check_error(p, "nothing")
    check(not os.path.exists(empty_dir + ".bs"), "output left")
    # A plain directory is not a compressed directory.
    p = run(["info", empty_dir], expect=EXIT_NOT_FOUND)  # input-not-found: no manifest
    check_error(p)
    no_temp_files(d)


def test_options(env):
    d = env.scratch()
    m = env.copy_model(d)
    bs = os.path.join(d, "c.bs")
    run(["compress", m, "-o", bs, "--chunk-elements", "1000", "--threads", "2", "-q"], expect=0)
    j = info_json(bs, "--tensors")
    lm = [t for t in j["tensors"] if t["name"] == "lm_head.weight"][0]
    check(lm["chunk_elements"] == 1000, "chunk_elements %r" % lm["chunk_elements"])
    out = os.path.join(d, "o.safetensors")
    run(["decompress", bs, "-o", out, "--threads", "1", "-q"], expect=0)
    check(sha256(out) == sha256(m), "chunked round trip")
    # Custom layer pattern.
    rng = random.Random(5)
    t5 = [("decoder.block.%d.layer.0.weight" % i, "BF16", [16, 16], make_tensor(rng, "BF16", [16, 16]))
          for i in range(3)]
    t5.append(("shared.weight", "BF16", [8, 16], make_tensor(rng, "BF16", [8, 16])))
    t5p = os.path.join(d, "t5.safetensors")
    write_safetensors(t5p, t5)
    run(["compress", t5p, "--layer-pattern", "decoder.block.{N}.", "-q"], expect=0)
    layers = sorted(g["layer"] for g in info_json(t5p + ".bs")["groups"])
    check(layers == [-1, 0, 1, 2], "layer-pattern groups %s" % layers)
    run(["verify", t5p + ".bs", "--against", t5p, "-q"], expect=0)
    # --layout (docs/FORMAT.md 1.1): small files are packed by default (groups back to back from 64),
    # aligned on request; both verify and decode to the same file.
    sizes = {}
    for layout in ("auto", "packed", "aligned"):
        out_bs = os.path.join(d, "l-%s.bs" % layout)
        run(["compress", m, "-o", out_bs, "--layout", layout, "-q"], expect=0)
        offsets = [g["offset"] for g in info_json(out_bs)["groups"]]
        if layout == "aligned":
            check(offsets[0] == 4096 and all(o % 4096 == 0 for o in offsets), "aligned offsets %s" % offsets)
        else:
            check(offsets[0] == 64, "%s: first group at %s" % (layout, offsets[0]))
        run(["verify", out_bs, "--against", m, "-q"], expect=0)
        sizes[layout] = os.path.getsize(out_bs)
    check(sizes["auto"] == sizes["packed"] and sizes["packed"] + 4032 <= sizes["aligned"], "layout sizes %s" % sizes)
    run(["compress", m, "-o", os.path.join(d, "x.bs"), "--layout", "sideways", "-q"], expect=2)


def run_on_pty(args):
    """Runs bigsmall with stderr on a pseudo-terminal; returns (exit code, stdout, terminal text)."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen([BIGSMALL] + args, stdout=subprocess.PIPE, stderr=slave,
                                env=dict(os.environ, TERM="xterm"))
        os.close(slave)
        slave = -1
        stdout, _ = proc.communicate(timeout=300)
        tty = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            tty += chunk
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    return proc.returncode, stdout, tty


def check_bar(label, code, stdout, tty, summary):
    check(code == 0, "%s: exit %d" % (label, code))
    text = tty.decode("utf-8", "replace")
    check(label in text and "%" in text and "\r" in text, "no %s progress bar on a terminal: %r" % (label, text))
    check(b"\r" not in stdout and b"\033" not in stdout, "progress leaked to stdout: %r" % stdout)
    check(stdout.decode().startswith(summary), "summary: %r" % stdout)
    # One bar over the whole job: the percentage never goes back and ends at 100.
    percents = [float(x) for x in re.findall(r"(\d+\.\d)% ", text)]
    check(percents and percents == sorted(percents) and percents[-1] == 100.0,
          "%s: bar percentages %r" % (label, percents))


def test_progress_on_terminal(env):
    d = env.scratch()
    m = env.copy_model(d)
    check_bar("compressing", *run_on_pty(["compress", m]), "compressed ")
    # A directory job: the bar covers every file of the directory.
    bs = os.path.join(d, "dir.bs")
    run(["compress", env.model_dir, "-o", bs, "-q"], expect=0)
    check_bar("decompressing", *run_on_pty(["decompress", bs, "-o", os.path.join(d, "dir")]), "decompressed ")
    check_bar("verifying", *run_on_pty(["verify", bs, "--against", env.model_dir]), "verified ")
    # --quiet: no bar even on a terminal.
    master, slave = os.openpty()
    proc = subprocess.Popen([BIGSMALL, "verify", m + ".bs", "--quiet"], stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    stdout, _ = proc.communicate(timeout=300)
    os.set_blocking(master, False)
    try:
        tty = os.read(master, 65536)
    except OSError:
        tty = b""
    os.close(master)
    check(proc.returncode == 0 and tty == b"" and stdout == b"", "--quiet output: %r %r" % (tty, stdout))


def test_output_inside_input_directory(env):
    d = env.scratch()
    src = os.path.join(d, "model")
    shutil.copytree(env.model_dir, src)
    want = tree_hashes(src)
    p = run(["compress", src, "-o", os.path.join(src, "inner.bs")], expect=EXIT_USAGE)
    check_error(p, "inside the input directory")
    check(tree_hashes(src) == want, "input directory changed")


def test_edge_files(env):
    """Every dtype, no tensors, metadata only, header keys out of data order, padding, tiny chunks."""
    d = env.scratch()
    rng = random.Random(7)
    files = {}
    files["empty"] = os.path.join(d, "empty.safetensors")
    write_safetensors(files["empty"], [])
    files["meta"] = os.path.join(d, "meta.safetensors")
    write_safetensors(files["meta"], [], metadata={"format": "pt", "note": "no tensors"})
    widths = [("BOOL", 1), ("I8", 1), ("U8", 1), ("I16", 2), ("U16", 2), ("F16", 2), ("BF16", 2), ("I32", 4),
              ("U32", 4), ("F32", 4), ("F64", 8), ("I64", 8), ("U64", 8), ("F8_E5M2", 1), ("F8_E4M3", 1)]
    files["dtypes"] = os.path.join(d, "dtypes.safetensors")
    write_safetensors(files["dtypes"], [("t." + dt, dt, [3, 70], bytes(rng.randrange(256) for _ in range(210 * w)))
                                        for dt, w in widths])
    files["order"] = os.path.join(d, "order.safetensors")
    header = (b'{"a":{"dtype":"BF16","shape":[50],"data_offsets":[200,300]},'
              b'"b":{"dtype":"BF16","shape":[100],"data_offsets":[0,200]}}') + b" " * 37
    with open(files["order"], "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + b"\x01\x02" * 100 + b"\x03\x04" * 50)
    for key, path in sorted(files.items()):
        for mode in MODES:
            bs = path + "." + mode + ".bs"
            run(["compress", path, "-o", bs, "-q"] + MODE_FLAGS[mode], expect=0)
            out = path + "." + mode + ".out"
            run(["decompress", bs, "-o", out, "-q"], expect=0)
            check(sha256(out) == sha256(path), "%s %s round trip" % (key, mode))
    j = info_json(files["dtypes"] + ".balanced.bs", "--tensors")
    check(len(j["dtypes"]) == len(widths), "dtypes listed: %s" % [x["dtype"] for x in j["dtypes"]])
    check(info_json(files["empty"] + ".storage.bs")["tensor_count"] == 0, "empty tensor_count")
    chunk = os.path.join(d, "chunk.safetensors")
    write_safetensors(chunk, [("w", "BF16", [60, 100], make_tensor(rng, "BF16", [60, 100]))])
    for ce in ("1", "7"):
        run(["compress", chunk, "-o", chunk + ".bs", "--chunk-elements", ce, "-f", "-q"], expect=0)
        run(["verify", chunk + ".bs", "--against", chunk, "-q"], expect=0)


def test_deterministic_output(env):
    d = env.scratch()
    m = env.copy_model(d)
    sums = set()
    for threads in ("1", "2", "5"):
        bs = os.path.join(d, "t%s.bs" % threads)
        run(["compress", m, "-o", bs, "--threads", threads, "-q"], expect=0)
        sums.add(sha256(bs))
    check(len(sums) == 1, "output depends on --threads")


def test_directory_with_symlinks(env):
    """Symlinked files and a Hugging Face cache-style snapshot (every file a symlink into blobs/)."""
    d = env.scratch()
    src = os.path.join(d, "linked")
    shutil.copytree(env.model_dir, src)
    os.symlink("config.json", os.path.join(src, "config_link.json"))
    hf = os.path.join(d, "hf")
    os.makedirs(os.path.join(hf, "blobs"))
    snap = os.path.join(hf, "snapshots", "0123abc")
    os.makedirs(snap)
    for name in sorted(os.listdir(env.model_dir)):
        p = os.path.join(env.model_dir, name)
        if os.path.isfile(p):
            blob = hashlib.sha256(name.encode()).hexdigest()
            shutil.copyfile(p, os.path.join(hf, "blobs", blob))
            os.symlink(os.path.join("..", "..", "blobs", blob), os.path.join(snap, name))
    for tree in (src, snap):
        bs = os.path.join(d, os.path.basename(tree) + ".bs")
        out = os.path.join(d, os.path.basename(tree) + ".out")
        run(["compress", tree, "-o", bs, "-q"], expect=0)
        j = info_json(bs)
        check(len(j["files"]) == 2, "%s: shards compressed: %s" % (tree, [f["original_name"] for f in j["files"]]))
        run(["decompress", bs, "-o", out, "-q"], expect=0)
        check(tree_hashes(out) == tree_hashes(tree), "%s: round trip differs" % tree)


def test_corpus(env):
    """Real weights (set by scripts/test.sh): the FP32 MiniLM file, its derived BF16 copy and its
    Hugging Face model directory, in every mode, byte for byte."""
    paths = [os.environ.get(k) for k in ("BIGSMALL_CORPUS", "BIGSMALL_CORPUS_BF16", "BIGSMALL_CORPUS_DIR")]
    paths = [p for p in paths if p]
    if not paths:
        raise Skipped("BIGSMALL_CORPUS not set (scripts/test.sh sets it to the real corpus)")
    d = env.scratch()
    for corpus in paths:
        is_dir = os.path.isdir(corpus)
        for mode in MODES:
            bs = os.path.join(d, "corpus.%s.bs" % mode)
            out = os.path.join(d, "corpus.%s.out" % mode)
            p = run(["compress", corpus, "-o", bs] + MODE_FLAGS[mode], expect=0)
            print("  " + p.stdout.strip())
            run(["verify", bs, "--against", corpus, "-q"], expect=0)
            if not is_dir and mode == MODES[0]:
                check_corpus_device_checksums(bs, corpus)
            run(["decompress", bs, "-o", out, "-q"], expect=0)
            if is_dir:
                check(tree_digest(out) == tree_digest(corpus), "corpus dir %s round trip differs" % mode)
                shutil.rmtree(out)
                shutil.rmtree(bs)
            else:
                check(sha256(out) == sha256(corpus), "corpus %s round trip differs" % mode)
                os.remove(out)
                os.remove(bs)


def check_corpus_device_checksums(bs, corpus):
    """Every device checksum the writer stored (docs/FORMAT.md 3.1) equals the independent Python
    reference over the corpus file's own tensor bytes."""
    data = open(corpus, "rb").read()
    n = struct.unpack_from("<Q", data, 0)[0]
    header = json.loads(data[8:8 + n])
    stored = {t["name"]: t.get("device_checksum") for t in info_json(bs, "--tensors")["tensors"]}
    check(len(stored) == len(header) - ("__metadata__" in header), "corpus tensor count")
    for name, t in header.items():
        if name == "__metadata__":
            continue
        begin, end = t["data_offsets"]
        want = "%016x" % device_checksum.device_checksum(data[8 + n + begin:8 + n + end])
        check(stored.get(name) == want, "corpus %s: tensor %s device checksum %s, spec says %s" %
              (corpus, name, stored.get(name), want))
    print("  device checksums of %d tensors match the Python reference" % len(stored))


def tree_digest(root):
    """sha256 of every file under root, keyed by relative path."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            full = os.path.join(dirpath, f)
            out[os.path.relpath(full, root)] = sha256(full)
    return out


def peak_rss_kib(args):
    """Runs bigsmall ARGS to completion; returns (exit code, the child's own peak RSS in KiB)."""
    env = dict(os.environ)
    # Under AddressSanitizer freed memory sits in a quarantine (256 MiB by
    # default) and would count as resident: keep it small for this measurement.
    env["ASAN_OPTIONS"] = ":".join(filter(None, [env.get("ASAN_OPTIONS"), "quarantine_size_mb=4",
                                                 "thread_local_quarantine_size_kb=64"]))
    proc = subprocess.Popen([BIGSMALL] + [str(a) for a in args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stderr.close()
    return proc.returncode, usage.ru_maxrss


def test_bounded_memory(env):
    """decompress and verify stream in bounded batches (64 MiB of tensors at a time): a 256 MiB
    file of 8 MiB tensors must need well under 256 MiB more memory than a tiny file does."""
    d = env.scratch()
    big = os.path.join(d, "big.safetensors")
    # Written by a child process, so this process stays small: ru_maxrss of a
    # forked child counts the parent pages it started with.
    subprocess.run([sys.executable, "-c", """if True:
        import json, random, struct, sys
        rng, n, size = random.Random(7), 32, 8 << 20  # 8 MiB each, incompressible
        header = {"model.layers.%d.w" % i: {"dtype": "U8", "shape": [size],
                  "data_offsets": [i * size, (i + 1) * size]} for i in range(n)}
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        with open(sys.argv[1], "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text)
            for _ in range(n):
                f.write(rng.randbytes(size))
        """, big], check=True)
    small = os.path.join(d, "small.safetensors")
    write_safetensors(small, [("model.layers.0.w", "U8", [16], bytes(16))])
    for f in (big, small):
        run(["compress", f, "-o", f + ".bs", "-q", "--threads", "2"], expect=0)
    rc, base = peak_rss_kib(["decompress", small + ".bs", "-o", os.path.join(d, "s.out"), "-q", "--threads", "2"])
    check(rc == 0, "small decompress failed")
    for cmd in (["decompress", big + ".bs", "-o", os.path.join(d, "b.out"), "-q", "--threads", "2"],
                ["verify", big + ".bs", "-q", "--threads", "2"]):
        rc, peak = peak_rss_kib(cmd)
        check(rc == 0, "%s failed" % cmd[0])
        grown_mib = (peak - base) / 1024.0
        print("  %s: peak RSS %.0f MiB (+%.0f MiB over a tiny file) for a 256 MiB file" % (cmd[0], peak / 1024.0, grown_mib))
        check(grown_mib < 160, "%s grew %.0f MiB for a 256 MiB file: not streaming" % (cmd[0], grown_mib))
    check(sha256(os.path.join(d, "b.out")) == sha256(big), "big round trip differs")


# ----------------------------------------------------------------------------
# Hardening (issue 6): error vocabulary, signals, outputs, symlinks, FIFOs.

GOLDEN_CORRUPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "golden", "corrupt")


def run_json_error(args, expect):
    """Runs a failing command with --json; returns (process, its JSON error object)."""
    p = run(list(args) + ["--json"], expect=expect)
    return p, json.loads(p.stdout)


def test_error_codes_follow_spec(env):
    """docs/FORMAT.md 10.1: bad magic and an unknown major version are DATA_LOSS; the CLI gives them
    the exit codes its help promises (1 'not a .bs file', 5 'unsupported format version')."""
    d = env.scratch()
    g = os.path.join(d, "garbage.bs")
    with open(g, "wb") as f:
        f.write(b"X" * 5000)
    for cmd in (["decompress", g, "-o", os.path.join(d, "o")], ["info", g], ["verify", g]):
        p, j = run_json_error(cmd, EXIT_FAILURE)
        check(j["code"] == "DATA_LOSS", "%s bad magic: code %s" % (cmd[0], j["code"]))
        check_error(p, "garbage.bs", "not a .bs file")
    future = os.path.join(GOLDEN_CORRUPT, "future_version.bs")
    for cmd in (["decompress", future, "-o", os.path.join(d, "o")], ["info", future], ["verify", future]):
        p, j = run_json_error(cmd, EXIT_PRECONDITION)
        check(j["code"] == "DATA_LOSS", "%s future version: code %s" % (cmd[0], j["code"]))
        check_error(p, "future_version.bs", "not supported")
    check(not os.path.exists(os.path.join(d, "o")), "output left")
    p = run(["help"], expect=0)
    check("5  wrong or missing --base, unsupported format version" in p.stdout, "help: %s" % p.stdout)


def test_small_file_declaring_huge_index(env):
    """A 37 KB .bs declaring a 1 GiB index (a real zstd frame that inflates to 1 GiB): info, verify and
    decompress reject it (DATA_LOSS, exit 3) before allocating it: peak RSS grows < 64 MiB over a tiny
    valid file (it used to allocate and inflate the whole 1 GiB)."""
    d = env.scratch()
    huge = os.path.join(GOLDEN_CORRUPT, "huge_index.bs")
    small = os.path.join(d, "small.bs")
    write_safetensors(os.path.join(d, "small.safetensors"), [("model.layers.0.w", "U8", [16], bytes(16))])
    run(["compress", os.path.join(d, "small.safetensors"), "-o", small, "-q"], expect=0)
    rc, base = peak_rss_kib(["info", small])
    check(rc == 0, "info on a small file failed")
    for cmd in (["info", huge], ["verify", huge], ["decompress", huge, "-o", os.path.join(d, "out")]):
        rc, peak = peak_rss_kib(cmd)
        check(rc == EXIT_DATA_LOSS, "%s: exit %d" % (cmd[0], rc))
        grown = (peak - base) / 1024.0
        check(grown < 64, "%s grew %.0f MiB on a 37 KB file declaring a 1 GiB index" % (cmd[0], grown))
    p, j = run_json_error(["info", huge], EXIT_DATA_LOSS)
    check(j["code"] == "DATA_LOSS", "code %s" % j["code"])
    check_error(p, "huge_index.bs", "claims 1073741824 bytes")


def test_missing_output_directory(env):
    """A missing output directory is an output failure (exit 1) saying so, never 'input not found' (4)."""
    d = env.scratch()
    m = env.copy_model(d)
    run(["compress", m, "-o", os.path.join(d, "m.bs"), "-q"], expect=0)
    cases = (["compress", m, "-o", os.path.join(d, "nope", "x.bs")],
             ["compress", env.model_dir, "-o", os.path.join(d, "nope", "x.bs")],
             ["decompress", os.path.join(d, "m.bs"), "-o", os.path.join(d, "nope", "x.safetensors")])
    for args in cases:
        p, j = run_json_error(args, EXIT_FAILURE)
        check(j["code"] == "NOT_FOUND", "%s: code %s" % (args, j["code"]))
        check_error(p, "output directory", os.path.join(d, "nope"), "does not exist")
    check(not os.path.exists(os.path.join(d, "nope")), "output directory created")
    no_temp_files(d)


def write_slow_input(path, n=96 << 20):
    """A U8 tensor whose skewed bytes take rANS encoding (compress: ~0.5 s here)."""
    import math
    table = bytes(min(255, int(-12 * math.log((i + 0.5) / 256))) for i in range(256))
    write_safetensors(path, [("w", "U8", [n], random.Random(5).randbytes(n).translate(table))])


def wait_for(predicate, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return predicate()


def test_signal_removes_temporary(env):
    """SIGINT/SIGTERM mid-compress: the temporary output is removed and the process dies of the signal."""
    import signal
    d = env.scratch()
    src_dir = os.path.join(d, "slow_dir")
    src = os.path.join(src_dir, "slow.safetensors")
    write_slow_input(src)
    with open(os.path.join(src_dir, "config.json"), "w") as f:
        f.write("{}")
    # A file output (SIGINT, SIGTERM), then a directory output (its temporary tree).
    for sig, src in ((signal.SIGINT, src), (signal.SIGTERM, src), (signal.SIGTERM, src_dir)):
        out = os.path.join(d, "slow.bs")
        proc = subprocess.Popen([BIGSMALL, "compress", src, "-o", out, "-q", "--threads", "1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            appeared = wait_for(lambda: any(".tmp." in n for n in os.listdir(d)), 30)
            check(appeared, "no temporary appeared")
            proc.send_signal(sig)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stderr.close()
        check(proc.returncode == -sig, "%s: exit %s (finished before the signal, or did not die of it)" %
              (sig.name, proc.returncode))
        no_temp_files(d)
        check(not os.path.exists(out), "%s: output exists" % sig.name)


def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporaries_reaped(env):
    """Leftovers of a killed run (a dead pid in the name) are removed by the next run writing that output;
    a live process's, other outputs', and symlinked ones are kept."""
    d = env.scratch()
    m = env.copy_model(d)
    out = os.path.join(d, "m.bs")
    dead = dead_pid()
    stale_file = "%s.tmp.%d.0" % (out, dead)
    stale_dir = "%s.tmp.%d.1" % (out, dead)
    stale_old = "%s.old.tmp.%d.2" % (out, dead)
    live = "%s.tmp.%d.0" % (out, os.getpid())
    other = os.path.join(d, "other.bs.tmp.%d.0" % dead)
    victim = os.path.join(d, "victim")
    for f in (stale_file, live, other, victim):
        with open(f, "wb") as fh:
            fh.write(b"x" * 100)
    os.makedirs(os.path.join(stale_dir, "sub"))
    with open(os.path.join(stale_dir, "sub", "f"), "w") as fh:
        fh.write("x")
    os.makedirs(stale_old)
    link = "%s.tmp.%d.3" % (out, dead)
    os.symlink(victim, link)
    run(["compress", m, "-o", out, "-q"], expect=0)
    for gone in (stale_file, stale_dir, stale_old):
        check(not os.path.lexists(gone), "stale %s kept" % gone)
    for kept in (live, other, link, victim):
        check(os.path.lexists(kept), "%s removed" % kept)
    check(open(victim, "rb").read() == b"x" * 100, "symlink target changed")


def test_force_over_other_kind_fails_first(env):
    """--force replaces a file with a file and a directory with a directory; anything else is a usage
    error before any work (it used to compress everything, then fail on rename)."""
    d = env.scratch()
    m = env.copy_model(d)
    existing_dir = os.path.join(d, "dir_out")
    os.makedirs(existing_dir)
    with open(os.path.join(existing_dir, "keep"), "w") as f:
        f.write("keep")
    existing_file = os.path.join(d, "file_out")
    with open(existing_file, "w") as f:
        f.write("keep")
    run(["compress", m, "-o", os.path.join(d, "m.bs"), "-q"], expect=0)
    bsd = os.path.join(d, "model_dir.bs")
    run(["compress", env.model_dir, "-o", bsd, "-q"], expect=0)
    for args, target in ((["compress", m, "-o", existing_dir, "--force"], existing_dir),
                         (["decompress", os.path.join(d, "m.bs"), "-o", existing_dir, "--force"], existing_dir),
                         (["compress", env.model_dir, "-o", existing_file, "--force"], existing_file),
                         (["decompress", bsd, "-o", existing_file, "--force"], existing_file)):
        p, j = run_json_error(args, EXIT_USAGE)
        check_error(p, target, "--force replaces")
        check(j["code"] == "INVALID_ARGUMENT", "%s: code %s" % (args, j["code"]))
    check(os.listdir(existing_dir) == ["keep"], "directory output modified")
    check(open(existing_file).read() == "keep", "file output modified")
    no_temp_files(d)
    # Same kind: replaced.
    with open(os.path.join(d, "m2.bs"), "w") as f:
        f.write("old")
    run(["compress", m, "-o", os.path.join(d, "m2.bs"), "--force", "-q"], expect=0)
    run(["verify", os.path.join(d, "m2.bs"), "-q"], expect=0)


def test_symlink_loop_refused(env):
    """A directory symlink loop (ln -s . loop) is refused (it used to write 42 copies)."""
    d = env.scratch()
    src = os.path.join(d, "looped")
    shutil.copytree(env.model_dir, src)
    os.symlink(".", os.path.join(src, "loop"))
    out = os.path.join(d, "looped.bs")
    p, j = run_json_error(["compress", src, "-o", out], EXIT_PRECONDITION)
    check(j["code"] == "FAILED_PRECONDITION", "code %s" % j["code"])
    check_error(p, "loop", "reached twice")
    check(not os.path.exists(out), "output written")
    no_temp_files(d)
    # Two names for one directory would store it twice: refused the same way.
    os.remove(os.path.join(src, "loop"))
    os.symlink("tokenizer", os.path.join(src, "tok2"))
    p = run(["compress", src, "-o", out], expect=EXIT_PRECONDITION)
    check_error(p, "reached twice")
    os.remove(os.path.join(src, "tok2"))
    run(["compress", src, "-o", out, "-q"], expect=0)


def test_symlink_outside_model_dir(env):
    """tokenizer.json -> /somewhere/secret is refused unless --follow-symlinks; links inside the dir and a
    Hugging Face snapshot's links into its repo's blobs/ are followed (test_directory_with_symlinks)."""
    d = env.scratch()
    secret = os.path.join(d, "secret.txt")
    with open(secret, "w") as f:
        f.write("top secret\n")
    outside_dir = os.path.join(d, "elsewhere")
    os.makedirs(outside_dir)
    with open(os.path.join(outside_dir, "x.json"), "w") as f:
        f.write("{}")
    for link_name, target in (("tokenizer/tokenizer.json", secret), ("extra", outside_dir),
                              ("up.json", os.path.join("..", "secret.txt"))):
        src = os.path.join(d, "model")
        shutil.rmtree(src, ignore_errors=True)
        shutil.copytree(env.model_dir, src)
        path = os.path.join(src, link_name)
        if os.path.exists(path):
            os.remove(path)
        os.symlink(target, path)
        out = os.path.join(d, "model.bs")
        p, j = run_json_error(["compress", src, "-o", out], EXIT_PRECONDITION)
        check(j["code"] == "FAILED_PRECONDITION", "%s: code %s" % (link_name, j["code"]))
        check_error(p, link_name, "outside the model directory", "--follow-symlinks")
        check(not os.path.exists(out), "%s: output written" % link_name)
        no_temp_files(d)
    # With the flag, links are followed (copied verbatim): a file and a directory.
    os.symlink(outside_dir, os.path.join(src, "extra"))
    run(["compress", src, "-o", out, "-q", "--follow-symlinks"], expect=0)
    check(open(os.path.join(out, "up.json")).read() == "top secret\n", "followed link not copied")
    check(open(os.path.join(out, "extra", "x.json")).read() == "{}", "followed directory not copied")
    # A snapshot linking to another repo's blobs is refused too.
    hf = os.path.join(d, "hf")
    snap = os.path.join(hf, "models--a--b", "snapshots", "rev1")
    other_blobs = os.path.join(hf, "models--c--d", "blobs")
    os.makedirs(snap)
    os.makedirs(other_blobs)
    shutil.copyfile(os.path.join(env.model_dir, "model-00001-of-00002.safetensors"),
                    os.path.join(other_blobs, "abc"))
    os.symlink(os.path.join("..", "..", "..", "models--c--d", "blobs", "abc"),
               os.path.join(snap, "model.safetensors"))
    p = run(["compress", snap, "-o", os.path.join(d, "snap.bs")], expect=EXIT_PRECONDITION)
    check_error(p, "model.safetensors", "outside the model directory")


def test_compressed_directory_symlink_escape(env):
    """A compressed directory (e.g. downloaded) whose stored file is a symlink out of it: decompress and
    verify refuse it (exit 5) instead of copying the target (our writer never stores symlinks)."""
    d = env.scratch()
    secret = os.path.join(d, "secret.txt")
    with open(secret, "w") as f:
        f.write("top secret\n")
    bsd = os.path.join(d, "model.bs")
    run(["compress", env.model_dir, "-o", bsd, "-q"], expect=0)
    os.remove(os.path.join(bsd, "config.json"))
    os.symlink(secret, os.path.join(bsd, "config.json"))
    out = os.path.join(d, "out")
    p = run(["decompress", bsd, "-o", out], expect=EXIT_PRECONDITION)
    check_error(p, "config.json", "outside the compressed directory")
    check(not os.path.exists(out), "output written")
    run(["verify", bsd], expect=EXIT_PRECONDITION)
    no_temp_files(d)
    # A link inside the compressed directory is fine.
    os.remove(os.path.join(bsd, "config.json"))
    shutil.copyfile(os.path.join(env.model_dir, "config.json"), os.path.join(bsd, "real_config"))
    os.symlink("real_config", os.path.join(bsd, "config.json"))
    run(["decompress", bsd, "-o", out, "-q"], expect=0)
    check(tree_hashes(out) == tree_hashes(env.model_dir), "round trip differs")


def test_fifo_input_does_not_hang(env):
    """A FIFO with no writer as an input is refused at once (it used to block in open() forever)."""
    d = env.scratch()
    fifo = os.path.join(d, "pipe.safetensors")
    os.mkfifo(fifo)
    fifo_bs = os.path.join(d, "pipe.bs")
    os.mkfifo(fifo_bs)
    for args in (["compress", fifo, "-o", os.path.join(d, "o.bs")], ["info", fifo_bs],
                 ["decompress", fifo_bs, "-o", os.path.join(d, "o")], ["verify", fifo_bs]):
        try:
            p = subprocess.run([BIGSMALL] + args + ["--json"], capture_output=True, text=True, timeout=20)
        except subprocess.TimeoutExpired:
            raise Failure("%s on a FIFO hung" % args[0])
        check(p.returncode == EXIT_FAILURE, "%s: exit %d: %s" % (args[0], p.returncode, p.stderr))
        check(json.loads(p.stdout)["code"] == "INVALID_ARGUMENT", "%s: %s" % (args[0], p.stdout))
        check("not a regular file" in p.stderr, "%s: %s" % (args[0], p.stderr))
    # A FIFO inside a model directory is not a file: skipped, never opened.
    src = os.path.join(d, "model")
    shutil.copytree(env.model_dir, src)
    os.mkfifo(os.path.join(src, "notes.txt"))
    try:
        subprocess.run([BIGSMALL, "compress", src, "-o", os.path.join(d, "model.bs"), "-q"], check=True,
                       timeout=60)
    except subprocess.TimeoutExpired:
        raise Failure("compress of a directory holding a FIFO hung")
    check(not os.path.exists(os.path.join(d, "model.bs", "notes.txt")), "FIFO copied")


class Skipped(Exception):
    """A case that cannot run here (it says why); counted apart, never as passed."""


CASES = [v for k, v in list(globals().items()) if k.startswith("test_") and callable(v)]

def main():
    global BIGSMALL
    args = sys.argv[1:]
    only = None
    if "-k" in args:
        i = args.index("-k")
        only = args[i + 1]
        del args[i:i + 2]
    if len(args) != 1:
        print(__doc__)
        return 2
    BIGSMALL = os.path.abspath(args[0])
    passed = failed = skipped = 0
    root = tempfile.mkdtemp(prefix="bigsmall_cli_test.")
    try:
        env = Env(root)
        for case in CASES:
            if only and only not in case.__name__:
                continue
            start = time.time()
            try:
                case(env)
                passed += 1
                print("PASS %s (%.1f s)" % (case.__name__, time.time() - start), flush=True)
            except Skipped as e:
                skipped += 1
                print("SKIP %s: %s" % (case.__name__, e), flush=True)
            except Exception as e:  # noqa: BLE001 - every failure is reported, then the next case runs
                failed += 1
                print("FAIL %s: %s" % (case.__name__, e), flush=True)
                if not isinstance(e, Failure):
                    traceback.print_exc()
    finally:
        if os.environ.get("BIGSMALL_KEEP_TEST_DIR"):
            print("test files kept in", root)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print("%d passed, %d failed" % (passed, failed) + (", %d skipped" % skipped if skipped else ""))
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
