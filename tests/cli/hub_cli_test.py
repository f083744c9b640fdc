#!/usr/bin/env python3
"""End-to-end tests of `bigsmall` against the fake Hugging Face Hub.

Usage: hub_cli_test.py PATH/TO/bigsmall [-k SUBSTRING]

Starts tests/hub/fake_hub.py (tests/hub/FAKE_HUB.md) on a free port over a
temporary data directory holding a small real-ish model repo (config.json,
tokenizer.json, README.md and two safetensors shards: real weights cut from
$BIGSMALL_CORPUS when it is set, else generated ones), points HF_ENDPOINT and
HF_HUB_CACHE at it and at temporary caches, and runs the binary: compress from
the Hub, decompress locally, upload, info and decompress from the Hub, the
Hub's refusals and their exit codes, faults mid-download, offline mode. Prints
"N passed, M failed" last and exits non-zero on any failure.
"""

import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import cli_test as ct  # noqa: E402  (write_safetensors, f32_bytes, gauss)

sys.path.insert(0, os.path.join(HERE, "..", "hub"))
from fake_hub_process import FakeHubProcess, FakeHubStartError  # noqa: E402

# Exit codes (cli/exit_codes.h, docs/FORMAT.md section 10.3).
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_DATA_LOSS, EXIT_NOT_FOUND = 0, 1, 2, 3, 4
EXIT_UNAUTHENTICATED = 7

GOOD_TOKEN = "hf_goodTokenForTests0123456789"
GRANTED_TOKEN = "hf_grantedGatedAccess987654321"
# Never valid: the fake refuses it; it must never be printed.
SECRET_TOKEN = "hf_DoNotPrintMe_5f3c9a1e7b2d4c6a8e0f"
MANIFEST = "bigsmall-manifest.json"

BIGSMALL = None


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


def tree(root, skip=()):
    """{relative path: sha256} of every file beneath root."""
    out = {}
    for d, _, files in os.walk(root):
        for name in files:
            p = os.path.join(d, name)
            rel = os.path.relpath(p, root)
            if rel not in skip:
                out[rel] = sha256(p)
    return out


# ----------------------------------------------------------------------------
# The model repo.

def corpus_tensors(path, limit_bytes):
    """Real tensors from a safetensors file: every tensor of its first layers, up to limit_bytes."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        items = sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                       key=lambda kv: kv[1]["data_offsets"][0])
        out, total = [], 0
        for name, v in items:
            a, b = v["data_offsets"]
            if b - a > 4 << 20 or total + (b - a) > limit_bytes:
                continue  # the word embeddings: too large for a quick test
            f.seek(base + a)
            out.append((name, v["dtype"], v["shape"], f.read(b - a)))
            total += b - a
        return out


def generated_tensors(seed):
    rng = random.Random(seed)
    out = []
    for i in range(2):
        p = "encoder.layer.%d." % i
        for name, shape in (("attention.self.query.weight", [256, 256]), ("attention.self.query.bias", [256]),
                            ("intermediate.dense.weight", [512, 256]), ("output.LayerNorm.weight", [256])):
            n = 1
            for d in shape:
                n *= d
            out.append((p + name, "F32", shape, ct.f32_bytes(ct.gauss(rng, n))))
    return out


def write_model_repo(path):
    corpus = os.environ.get("BIGSMALL_CORPUS")
    tensors = corpus_tensors(corpus, 6 << 20) if corpus and os.path.exists(corpus) else generated_tensors(7)
    total, half = sum(len(t[3]) for t in tensors), 0
    while half < len(tensors) - 1 and sum(len(t[3]) for t in tensors[:half + 1]) <= total // 2:
        half += 1
    half = max(half, 1)
    shards = {"model-00001-of-00002.safetensors": tensors[:half],
              "model-00002-of-00002.safetensors": tensors[half:]}
    weight_map = {}
    for name, ts in shards.items():
        ct.write_safetensors(os.path.join(path, name), ts, metadata={"format": "pt"})
        for t in ts:
            weight_map[t[0]] = name
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": sum(len(t[3]) for t in tensors)}, "weight_map": weight_map}, f)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"model_type": "bert", "hidden_size": 384, "num_hidden_layers": 2}, f)
    corpus_dir = os.environ.get("BIGSMALL_CORPUS_DIR")
    tok = os.path.join(corpus_dir, "tokenizer.json") if corpus_dir else ""
    if tok and os.path.exists(tok):
        shutil.copyfile(tok, os.path.join(path, "tokenizer.json"))
    else:
        with open(os.path.join(path, "tokenizer.json"), "w") as f:
            json.dump({"version": "1.0", "model": {"vocab": {"[PAD]": 0, "hello": 1, "world": 2}}}, f)
    os.makedirs(os.path.join(path, "1_Pooling"))
    with open(os.path.join(path, "1_Pooling", "config.json"), "w") as f:
        json.dump({"word_embedding_dimension": 384, "pooling_mode_mean_tokens": True}, f)
    with open(os.path.join(path, "README.md"), "w") as f:
        f.write("---\nlicense: apache-2.0\n---\n# tiny\nThe source repo's own model card.\n")
    return sum(len(t[3]) for t in tensors)


# ----------------------------------------------------------------------------
# The fake Hub.

class Env:
    def __init__(self, root):
        self.root = root
        self.data = os.path.join(root, "hub-data")
        self.repo_src = os.path.join(self.data, "alice", "tiny")
        os.makedirs(self.repo_src)
        self.weight_bytes = write_model_repo(self.repo_src)
        # A private repo, a gated one (GRANTED_TOKEN may read it), a plain copy.
        for name, options in (("secret", {"private": True}), ("gated", {"gated": True, "granted": [GRANTED_TOKEN]})):
            shutil.copytree(self.repo_src, os.path.join(self.data, "alice", name))
            with open(os.path.join(self.data, "alice", name + ".json"), "w") as f:
                json.dump(options, f)
        shutil.copytree(self.repo_src, os.path.join(self.data, "alice", "resume"))
        try:
            self.hub = FakeHubProcess(self.data, root, tokens=[GOOD_TOKEN, GRANTED_TOKEN], quiet=False)
        except FakeHubStartError as e:
            raise Failure(str(e))
        self.counter = 0

    def scratch(self):
        self.counter += 1
        d = os.path.join(self.root, "case%03d" % self.counter)
        os.makedirs(d)
        return d

    def environ(self, cache, token=None, offline=False):
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env["HF_ENDPOINT"] = self.hub.endpoint
        env["HF_HUB_CACHE"] = cache
        env["HF_HOME"] = os.path.join(self.root, "hf-home")  # no token file: none is loaded from ~
        if token:
            env["HF_TOKEN"] = token
        if offline:
            env["HF_HUB_OFFLINE"] = "1"
        return env


def run(args, env, expect=None, timeout=120):
    proc = subprocess.run([BIGSMALL] + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, env=env, timeout=timeout)
    proc.stdout = proc.stdout.decode("utf-8", "replace")
    proc.stderr = proc.stderr.decode("utf-8", "replace")
    if expect is not None and proc.returncode != expect:
        raise Failure("bigsmall %s: exit %d, expected %d\nstdout: %s\nstderr: %s" %
                      (" ".join(map(str, args)), proc.returncode, expect, proc.stdout[-3000:], proc.stderr[-3000:]))
    return proc


def no_token(proc, token):
    check(token not in proc.stdout and token not in proc.stderr,
          "the token was printed: stdout %r stderr %r" % (proc.stdout, proc.stderr))


def error_json(proc):
    return json.loads(proc.stdout)


def scan_cache(cache, repos):
    """huggingface_hub reads the cache we wrote, without a warning."""
    try:
        from huggingface_hub import scan_cache_dir
    except ImportError:
        print("  note: huggingface_hub is not installed: its scan_cache_dir check did not run", flush=True)
        return
    info = scan_cache_dir(cache)
    check(not info.warnings, "scan_cache_dir warnings: %s" % info.warnings)
    check({r.repo_id for r in info.repos} == repos, "scan_cache_dir repos: %s" % [r.repo_id for r in info.repos])


# ----------------------------------------------------------------------------
# Cases.

def compress_from_hub(env, d, repo="alice/tiny", extra=()):
    out = os.path.join(d, "tiny.bs")
    cache = os.path.join(d, "cache")
    p = run(["compress", repo, "-o", out, "--json"] + list(extra), env.environ(cache), expect=EXIT_OK)
    return out, cache, json.loads(p.stdout)


def test_compress_from_hub_then_decompress_locally(env):
    d = env.scratch()
    out, cache, j = compress_from_hub(env, d)
    commit = j["hub"]["commit"]
    check(len(commit) == 40 and j["hub"]["repo"] == "alice/tiny" and j["files"] == 2, "json %s" % j)
    # huggingface_hub's cache layout: refs/main, a snapshot of links into blobs/.
    repo_cache = os.path.join(cache, "models--alice--tiny")
    check(open(os.path.join(repo_cache, "refs", "main")).read().strip() == commit, "refs/main")
    snap = os.path.join(repo_cache, "snapshots", commit)
    check(os.path.islink(os.path.join(snap, "model-00001-of-00002.safetensors")), "snapshot link")
    check(tree(snap) == tree(env.repo_src), "the cache's snapshot differs from the repo")
    scan_cache(cache, {"alice/tiny"})
    # The output: a .bs directory, the other files copied, a model card.
    names = set(os.listdir(out))
    for n in ("model-00001-of-00002.safetensors.bs", "model-00002-of-00002.safetensors.bs", "config.json",
              "tokenizer.json", "model.safetensors.index.json", MANIFEST, "README.md", "README.original.md"):
        check(n in names, "%s missing from %s" % (n, sorted(names)))
    check(not any(n.endswith(".safetensors") for n in names), "uncompressed shard in %s" % sorted(names))
    card = open(os.path.join(out, "README.md")).read()
    for needle in ("alice/tiny", commit, "bigsmall decompress", "OpenModel", "from_pretrained", "planned"):
        check(needle in card, "model card lacks %r:\n%s" % (needle, card))
    check(open(os.path.join(out, "README.original.md")).read() ==
          open(os.path.join(env.repo_src, "README.md")).read(), "the source README was not kept")
    check(not [n for n in os.listdir(d) if ".tmp" in n], "temporaries left: %s" % os.listdir(d))
    # Decompressing locally gives back the repo byte for byte (README.md the source's own).
    back = os.path.join(d, "back")
    run(["decompress", out, "-o", back], env.environ(cache), expect=EXIT_OK)
    check(tree(back) == tree(env.repo_src), "decompressed files differ from the repo's")
    # A second compress is served by the cache: no file is downloaded again.
    env.hub.reset_stats()
    run(["compress", "alice/tiny", "-o", os.path.join(d, "again.bs"), "-q"], env.environ(cache), expect=EXIT_OK)
    st = env.hub.stats()
    check(not [e for e in st["log"] if "/resolve/" in e["path"] or "/_cdn/" in e["path"]],
          "files fetched again: %s" % st["log"])
    # A fine-tune delta against a local base: the card says decompress needs it.
    delta = os.path.join(d, "delta.bs")
    run(["compress", "alice/tiny", "-o", delta, "--base", env.repo_src, "-q"], env.environ(cache), expect=EXIT_OK)
    check("--base" in open(os.path.join(delta, "README.md")).read(), "the card of a delta does not say --base")
    back2 = os.path.join(d, "back2")
    run(["decompress", delta, "-o", back2, "--base", env.repo_src, "-q"], env.environ(cache), expect=EXIT_OK)
    check(tree(back2) == tree(env.repo_src), "delta round trip differs")
    # An existing output needs --force (checked before any download).
    p = run(["compress", "alice/tiny", "-o", out], env.environ(cache), expect=6)
    check("--force" in p.stderr, p.stderr)


def test_upload_info_and_decompress_from_hub(env):
    d = env.scratch()
    out, _, _ = compress_from_hub(env, d)
    # Upload the compressed directory to a new repo.
    up_env = env.environ(os.path.join(d, "cache-up"), token=GOOD_TOKEN)
    p = run(["upload", out, "alice/tiny-bs", "--create", "-m", "BigSmall of alice/tiny"], up_env, expect=EXIT_OK)
    check("alice/tiny-bs" in p.stdout and "commit" in p.stdout and "http" in p.stdout, "upload: %s" % p.stdout)
    no_token(p, GOOD_TOKEN)
    p = run(["upload", out, "alice/tiny-bs", "--json"], up_env, expect=EXIT_OK)
    j = json.loads(p.stdout)
    check(j["commit_url"] and len(j["commit"]) == 40 and j["files"] >= 6, "upload json %s" % j)
    check(j["lfs_files_sent"] == 0, "a second upload of the same files sent LFS objects again: %s" % j)

    # info straight from the Hub: headers and indexes only, by range requests.
    bs_sizes = {n: os.path.getsize(os.path.join(out, n)) for n in os.listdir(out) if n.endswith(".bs")}
    env.hub.reset_stats()
    cache = os.path.join(d, "cache-info")
    p = run(["info", "alice/tiny-bs", "--json"], env.environ(cache), expect=EXIT_OK)
    remote = json.loads(p.stdout)
    local = json.loads(run(["info", out, "--json"], env.environ(cache), expect=EXIT_OK).stdout)
    check(remote["hub"]["repo"] == "alice/tiny-bs" and len(remote["hub"]["commit"]) == 40, "hub %s" % remote)
    for key in ("kind", "format_version", "mode", "original_bytes", "stored_bytes", "tensor_count", "dtypes"):
        check(remote[key] == local[key], "%s: %r from the Hub, %r locally" % (key, remote[key], local[key]))
    check([f["groups"] for f in remote["files"]] == [f["groups"] for f in local["files"]], "groups differ")
    st = env.hub.stats()
    fetched = sum(e["bytes"] for e in st["log"] if e["method"] == "GET")
    check(fetched * 50 < sum(bs_sizes.values()),
          "info fetched %d bytes of %d stored" % (fetched, sum(bs_sizes.values())))
    check(any(e.get("range") for e in st["log"]), "no range request: %s" % st["log"])
    check(remote["hub"]["bytes_fetched"] <= fetched + 4096, "bytes_fetched %s" % remote["hub"])
    text = run(["info", "hf://alice/tiny-bs"], env.environ(cache), expect=EXIT_OK).stdout
    check(remote["hub"]["commit"] in text and "model-00001-of-00002.safetensors" in text, text)
    check(not os.path.exists(os.path.join(cache, "models--alice--tiny-bs", "blobs")) or
          not [n for n in os.listdir(os.path.join(cache, "models--alice--tiny-bs", "blobs"))
               if os.path.getsize(os.path.join(cache, "models--alice--tiny-bs", "blobs", n)) in bs_sizes.values()],
          "info downloaded whole shards into the cache")

    # decompress straight from the Hub, into a fresh cache: the original files back.
    back = os.path.join(d, "back")
    cache2 = os.path.join(d, "cache-dec")
    p = run(["decompress", "alice/tiny-bs@main", "-o", back, "--json"], env.environ(cache2), expect=EXIT_OK)
    check(json.loads(p.stdout)["hub"]["repo"] == "alice/tiny-bs", p.stdout)
    check(tree(back) == tree(env.repo_src), "files decompressed from the Hub differ from the original repo")
    check(not os.path.exists(os.path.join(cache2, ".bigsmall-staging")), "staging left in the cache")
    scan_cache(cache2, {"alice/tiny-bs"})
    # Another branch (--revision), read back by name@branch.
    p = run(["upload", out, "alice/tiny-bs", "--revision", "dev", "--json"], up_env, expect=EXIT_OK)
    dev_commit = json.loads(p.stdout)["commit"]
    j = json.loads(run(["info", "alice/tiny-bs@dev", "--json"], env.environ(cache2), expect=EXIT_OK).stdout)
    check(j["hub"]["commit"] == dev_commit and j["hub"]["revision"] == "dev", "info @dev: %s" % j["hub"])
    # A repo holding one .bs file (no manifest): info and decompress give that file.
    single = os.path.join(d, "single")
    os.makedirs(single)
    shutil.copyfile(os.path.join(out, "model-00002-of-00002.safetensors.bs"),
                    os.path.join(single, "model.safetensors.bs"))
    run(["upload", single, "alice/single-bs", "--create", "-q"], up_env, expect=EXIT_OK)
    j = json.loads(run(["info", "alice/single-bs", "--json"], env.environ(cache2), expect=EXIT_OK).stdout)
    check(j["kind"] == "file" and j["path"].endswith("/model.safetensors.bs"), "single info %s" % j)
    one = os.path.join(d, "one.safetensors")
    run(["decompress", "alice/single-bs", "-o", one, "-q"], env.environ(cache2), expect=EXIT_OK)
    check(sha256(one) == sha256(os.path.join(env.repo_src, "model-00002-of-00002.safetensors")), "single file")
    # A repo that is not compressed is refused clearly.
    p = run(["decompress", "alice/tiny", "-o", os.path.join(d, "x")], env.environ(cache2), expect=EXIT_FAILURE)
    check("not a BigSmall repo" in p.stderr, p.stderr)


def test_hub_refusals_have_distinct_exit_codes(env):
    d = env.scratch()
    cache = os.path.join(d, "cache")
    # 401: a private repo without a token.
    p = run(["compress", "alice/secret", "-o", os.path.join(d, "a.bs"), "--json"], env.environ(cache),
            expect=EXIT_UNAUTHENTICATED)
    check(error_json(p)["code"] == "UNAUTHENTICATED" and "HF_TOKEN" in p.stderr, p.stdout + p.stderr)
    # A valid token reads it.
    run(["compress", "alice/secret", "-o", os.path.join(d, "s.bs"), "-q"], env.environ(cache, token=GOOD_TOKEN),
        expect=EXIT_OK)
    # 403: gated, with a token that was not granted access (the repo's metadata is public, as on the
    # Hub: the refusal comes with the first file); granted: fine.
    p = run(["compress", "alice/gated", "-o", os.path.join(d, "x.bs"), "--json"],
            env.environ(cache, token=GOOD_TOKEN), expect=EXIT_FAILURE)
    check(error_json(p)["code"] == "PERMISSION_DENIED", p.stdout + p.stderr)
    check("gated" in p.stderr.lower() or "access" in p.stderr.lower(), p.stderr)
    run(["compress", "alice/gated", "-o", os.path.join(d, "g.bs"), "-q"], env.environ(cache, token=GRANTED_TOKEN),
        expect=EXIT_OK)
    # 404: no such repo, no such revision.
    for name in ("alice/nope", "alice/tiny@no-such-branch"):
        p = run(["compress", name, "-o", os.path.join(d, "n.bs"), "--json"], env.environ(cache),
                expect=EXIT_NOT_FOUND)
        check(error_json(p)["code"] == "NOT_FOUND", p.stdout + p.stderr)
    p = run(["decompress", "alice/nope", "-o", os.path.join(d, "n")], env.environ(cache), expect=EXIT_NOT_FOUND)
    check("alice/nope" in p.stderr, p.stderr)
    # A malformed name that is no local path either: a usage error.
    run(["info", "hf://a--b/c"], env.environ(cache), expect=EXIT_USAGE)
    # A malformed HF_ENDPOINT is no usage error: the environment is wrong (exit 1, saying so).
    p = run(["info", "alice/tiny"], dict(env.environ(cache), HF_ENDPOINT="ftp://example"), expect=EXIT_FAILURE)
    check("HF_ENDPOINT" in p.stderr, p.stderr)
    check(not [n for n in os.listdir(d) if n.endswith(".bs") and n not in ("s.bs", "g.bs")],
          "outputs left by refused runs: %s" % os.listdir(d))


def test_unavailable_rate_limited_and_corrupt(env):
    """5xx and 429 after the retries, and a corrupt download: their codes (docs/FORMAT.md 10.1)."""
    d = env.scratch()
    cache = os.path.join(d, "cache")
    for status, code in ((503, "UNAVAILABLE"), (429, "RESOURCE_EXHAUSTED")):
        # Retry-After: 0 keeps the retries quick; every one fails.
        env.hub.faults([{"path": "^/api/models/alice/tiny", "kind": "status", "status": status, "retry_after": 0,
                         "times": -1}])
        try:
            p = run(["info", "alice/tiny", "--json"], env.environ(cache), expect=EXIT_FAILURE)
        finally:
            env.hub.clear_faults()
        check(error_json(p)["code"] == code and str(status) in p.stderr, p.stdout + p.stderr)
    shard = os.path.join(env.repo_src, "model-00002-of-00002.safetensors")
    oid = sha256(shard)
    env.hub.faults([{"path": oid, "method": "GET", "kind": "corrupt", "times": -1}])
    try:
        p = run(["compress", "alice/tiny", "-o", os.path.join(d, "c.bs"), "--json"], env.environ(cache),
                expect=EXIT_DATA_LOSS)
    finally:
        env.hub.clear_faults()
    check(error_json(p)["code"] == "DATA_LOSS" and "model-00002-of-00002.safetensors" in p.stderr, p.stderr)
    blobs = os.path.join(cache, "models--alice--tiny", "blobs")
    check(oid not in os.listdir(blobs), "a corrupt blob was cached")
    check(not os.path.exists(os.path.join(d, "c.bs")), "an output was left")
    run(["compress", "alice/tiny", "-o", os.path.join(d, "c.bs"), "-q"], env.environ(cache), expect=EXIT_OK)


def test_token_is_never_printed(env):
    d = env.scratch()
    e = env.environ(os.path.join(d, "cache"), token=SECRET_TOKEN)
    for args, code in ((["compress", "alice/secret", "-o", os.path.join(d, "a.bs")], EXIT_UNAUTHENTICATED),
                       (["info", "alice/secret", "--json"], EXIT_UNAUTHENTICATED),
                       (["decompress", "alice/secret", "-o", os.path.join(d, "b")], EXIT_UNAUTHENTICATED),
                       (["info", "alice/gated"], None),
                       (["upload", env.repo_src, "alice/tiny", "--json"], EXIT_UNAUTHENTICATED),
                       (["upload", env.repo_src, "mallory/new", "--create"], EXIT_UNAUTHENTICATED)):
        p = run(args, e, expect=code)
        check(p.returncode != 0, "%s succeeded with a refused token" % args)
        no_token(p, SECRET_TOKEN)


def test_dropped_connection_mid_download_completes(env):
    d = env.scratch()
    cache = os.path.join(d, "cache")
    shard = os.path.join(env.repo_src, "model-00001-of-00002.safetensors")
    oid = sha256(shard)
    env.hub.reset_stats()
    env.hub.faults([{"path": oid, "method": "GET", "kind": "drop_after", "bytes": 50000, "times": 2}])
    try:
        out = os.path.join(d, "tiny.bs")
        run(["compress", "alice/tiny", "-o", out, "-q"], env.environ(cache), expect=EXIT_OK)
    finally:
        env.hub.clear_faults()
    blob = os.path.join(cache, "models--alice--tiny", "blobs", oid)
    check(os.path.exists(blob) and sha256(blob) == oid, "blob missing or wrong after the drops")
    gets = [e for e in env.hub.stats()["log"] if oid in e["path"] and e["method"] == "GET"]
    dropped = [e for e in gets if e["bytes"] == 50000]
    check(len(dropped) == 2 and len(gets) >= 3, "expected two dropped GETs, then the rest: %s" % gets)
    back = os.path.join(d, "back")
    run(["decompress", out, "-o", back, "-q"], env.environ(cache), expect=EXIT_OK)
    check(tree(back) == tree(env.repo_src), "files differ after a dropped download")


def test_interrupted_download_resumes(env):
    """An interrupted download (ours, or huggingface_hub's: the same cache) leaves blobs/<etag>.incomplete,
    a prefix of the file; the next compress continues it instead of starting over."""
    d = env.scratch()
    cache = os.path.join(d, "cache")
    shard = os.path.join(env.data, "alice", "resume", "model-00001-of-00002.safetensors")
    size, oid = os.path.getsize(shard), sha256(shard)
    blobs = os.path.join(cache, "models--alice--resume", "blobs")
    os.makedirs(blobs)
    kept = size * 3 // 5
    with open(shard, "rb") as src, open(os.path.join(blobs, oid + ".incomplete"), "wb") as dst:
        dst.write(src.read(kept))
    env.hub.reset_stats()
    out = os.path.join(d, "r.bs")
    run(["compress", "alice/resume", "-o", out, "-q"], env.environ(cache), expect=EXIT_OK)
    gets = [e for e in env.hub.stats()["log"] if oid in e["path"] and e["method"] == "GET"]
    sent = sum(e["bytes"] for e in gets)
    check(sent == size - kept, "resumed run fetched %d bytes; %d of %d were kept: %s" % (sent, kept, size, gets))
    check(all(e["range"] and not e["range"].startswith("bytes=0-") for e in gets), "fetched from 0: %s" % gets)
    check(sha256(os.path.join(blobs, oid)) == oid and not os.path.exists(os.path.join(blobs, oid + ".incomplete")),
          "resumed blob differs, or its .incomplete stayed")
    back = os.path.join(d, "back")
    run(["decompress", out, "-o", back, "-q"], env.environ(cache), expect=EXIT_OK)
    check(tree(back) == tree(os.path.join(env.data, "alice", "resume")), "resumed output differs")


def run_tty(args, env):
    """Runs with stderr on a pseudo-terminal (progress bars draw only there); returns (rc, stdout, tty)."""
    master, slave = os.openpty()
    chunks = []

    def drain():
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        proc = subprocess.Popen([BIGSMALL] + args, stdout=subprocess.PIPE, stderr=slave,
                                stdin=subprocess.DEVNULL, env=dict(env, TERM="xterm"))
        os.close(slave)
        slave = -1
        stdout, _ = proc.communicate(timeout=120)
    finally:
        if slave >= 0:
            os.close(slave)
        reader.join(timeout=10)
        os.close(master)
    return proc.returncode, stdout.decode("utf-8", "replace"), b"".join(chunks).decode("utf-8", "replace")


def test_progress_on_a_terminal(env):
    d = env.scratch()
    e = env.environ(os.path.join(d, "cache"), token=GOOD_TOKEN)
    out = os.path.join(d, "tiny.bs")
    rc, stdout, tty = run_tty(["compress", "alice/tiny", "-o", out], e)
    check(rc == 0 and "compressed hf://alice/tiny@" in stdout, "compress: %d %r %r" % (rc, stdout, tty))
    check("downloading" in tty and "compressing" in tty and "100.0%" in tty, "progress: %r" % tty)
    rc, stdout, tty = run_tty(["upload", out, "alice/progress-bs", "--create", "--private"], e)
    check(rc == 0 and "uploading" in tty and "/commit/" in stdout, "upload: %d %r %r" % (rc, stdout, tty))
    # --private made it private: anonymous readers get the 401.
    run(["info", "alice/progress-bs"], env.environ(os.path.join(d, "cache2")), expect=EXIT_UNAUTHENTICATED)
    rc, stdout, tty = run_tty(["decompress", "alice/progress-bs", "-o", os.path.join(d, "back")], e)
    check(rc == 0 and "downloading" in tty and "decompressing" in tty, "decompress: %d %r %r" % (rc, stdout, tty))


def test_offline_uses_the_cache_and_fails_clearly_without(env):
    d = env.scratch()
    _, cache, j = compress_from_hub(env, d)
    env.hub.reset_stats()
    out = os.path.join(d, "offline.bs")
    p = run(["compress", "alice/tiny", "-o", out, "--json"], env.environ(cache, offline=True), expect=EXIT_OK)
    check(json.loads(p.stdout)["hub"]["commit"] == j["hub"]["commit"], p.stdout)
    # A commit hash names the same snapshot.
    run(["compress", "hf://alice/tiny@" + j["hub"]["commit"], "-o", os.path.join(d, "bycommit.bs"), "-q"],
        env.environ(cache, offline=True), expect=EXIT_OK)
    check(env.hub.stats()["requests"] == 0, "offline run reached the Hub: %s" % env.hub.stats()["log"])
    back = os.path.join(d, "back")
    run(["decompress", out, "-o", back, "-q"], env.environ(cache, offline=True), expect=EXIT_OK)
    check(tree(back) == tree(env.repo_src), "offline output differs")
    # A cache holding part of a sharded checkpoint: refused offline, not compressed in part.
    partial = os.path.join(d, "partial-cache")
    shutil.copytree(cache, partial, symlinks=True)
    os.unlink(os.path.join(partial, "models--alice--tiny", "snapshots", j["hub"]["commit"],
                           "model-00002-of-00002.safetensors"))
    p = run(["compress", "alice/tiny", "-o", os.path.join(d, "part.bs")], env.environ(partial, offline=True),
            expect=EXIT_NOT_FOUND)
    check("model-00002-of-00002.safetensors" in p.stderr and "offline" in p.stderr, p.stderr)
    check(not os.path.exists(os.path.join(d, "part.bs")), "a partial output was written")
    empty = os.path.join(d, "empty-cache")
    p = run(["compress", "alice/tiny", "-o", os.path.join(d, "none.bs"), "--json"],
            env.environ(empty, offline=True), expect=EXIT_NOT_FOUND)
    check("offline" in p.stderr.lower() or "HF_HUB_OFFLINE" in p.stderr, p.stderr)
    p = run(["upload", out, "alice/x"], env.environ(cache, token=GOOD_TOKEN, offline=True), expect=5)
    check("HF_HUB_OFFLINE" in p.stderr, p.stderr)


def test_help_lists_the_hub(env):
    p = run(["help"], os.environ, expect=EXIT_OK)
    for needle in ("upload", "owner/repo", "HF_TOKEN", "7  authentication needed or refused"):
        check(needle in p.stdout, "help lacks %r" % needle)
    p = run(["help", "upload"], os.environ, expect=EXIT_OK)
    for needle in ("--private", "--revision", "--create", "--message"):
        check(needle in p.stdout, "help upload lacks %r" % needle)
    # An existing local path of that shape is a local path, not a Hub name.
    d = env.scratch()
    os.makedirs(os.path.join(d, "alice"))
    shutil.copytree(env.repo_src, os.path.join(d, "alice", "tiny"))
    p = subprocess.run([BIGSMALL, "compress", "alice/tiny", "-q"], cwd=d, env=env.environ(os.path.join(d, "c")),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    check(p.returncode == 0 and os.path.isdir(os.path.join(d, "alice", "tiny.bs")), p.stderr.decode())
    check(not os.path.exists(os.path.join(d, "c")), "a local path went to the Hub")
    # A missing file in an existing local directory is a local path too (no trip to the Hub); hf:// is not.
    env.hub.reset_stats()
    p = subprocess.run([BIGSMALL, "info", "alice/typo.bs"], cwd=d, env=env.environ(os.path.join(d, "c")),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    check(p.returncode == EXIT_NOT_FOUND and b"no such file" in p.stderr, p.stderr.decode())
    check(env.hub.stats()["requests"] == 0, "a local path went to the Hub: %s" % env.hub.stats()["log"])
    p = subprocess.run([BIGSMALL, "info", "hf://alice/typo.bs"], cwd=d, env=env.environ(os.path.join(d, "c")),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    check(p.returncode == EXIT_NOT_FOUND and b"404" in p.stderr, p.stderr.decode())


CASES = [test_help_lists_the_hub,
         test_compress_from_hub_then_decompress_locally,
         test_upload_info_and_decompress_from_hub,
         test_hub_refusals_have_distinct_exit_codes,
         test_unavailable_rate_limited_and_corrupt,
         test_token_is_never_printed,
         test_dropped_connection_mid_download_completes,
         test_interrupted_download_resumes,
         test_progress_on_a_terminal,
         test_offline_uses_the_cache_and_fails_clearly_without]


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
    passed = failed = 0
    root = tempfile.mkdtemp(prefix="bigsmall_hub_cli_test.")
    env = None
    start_all = time.time()
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
            except Exception as e:  # noqa: BLE001 - every failure is reported, then the next case runs
                failed += 1
                print("FAIL %s: %s" % (case.__name__, e), flush=True)
                if not isinstance(e, Failure):
                    traceback.print_exc()
    except Exception as e:  # noqa: BLE001
        failed += 1
        print("FAIL setup: %s" % e, flush=True)
        traceback.print_exc()
    finally:
        if env is not None:
            env.hub.stop()
            if failed:
                print("fake Hub log (tail):\n" + open(os.path.join(root, "fake_hub.log")).read()[-3000:])
        if os.environ.get("BIGSMALL_KEEP_TEST_DIR"):
            print("test files kept in", root)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print("%d passed, %d failed (%.1f s)" % (passed, failed, time.time() - start_all))
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
