#!/usr/bin/env python3
"""Checks tests/hub/fake_hub.py against huggingface_hub itself.

Starts the fake Hub on a temp data dir (a public, a private and a gated repo;
LFS and small files; a nested path) and drives it with huggingface_hub:
model_info, list_repo_tree, hf_hub_download, snapshot_download, the errors it
raises, scan_cache_dir, local_files_only, a resumed download, upload_folder
(basic and multipart LFS), create_pr, create_branch; plus the raw protocol (Range, CDN auth,
faults, throttle and its rate, stats as a client sees them). Exits non-zero on
any mismatch.
"""

import hashlib
import http.client
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from fake_hub_process import FakeHubProcess, FakeHubStartError  # noqa: E402
FAILURES = []
CHECKS = [0]


def check(cond, what):
    CHECKS[0] += 1
    if not cond:
        FAILURES.append(what)
        print("FAIL: " + what, flush=True)


def expect_raises(exc_type, fn, what):
    try:
        fn()
    except exc_type:
        CHECKS[0] += 1
        return
    except Exception as e:  # the wrong exception
        check(False, "%s: expected %s, got %s: %s" % (what, exc_type.__name__, type(e).__name__, e))
        return
    check(False, "%s: expected %s, nothing raised" % (what, exc_type.__name__))


def sha256(b):
    return hashlib.sha256(b).hexdigest()


class Fake(FakeHubProcess):
    def __init__(self, data, tmp, args):
        try:
            super().__init__(data, tmp, extra_args=args, quiet=False, start_timeout=10, stop_timeout=5)
        except FakeHubStartError as e:
            raise SystemExit("FAIL: " + str(e))
        self.url = self.endpoint

    def request(self, method, path, body=None, headers=None, host="127.0.0.1"):
        conn = http.client.HTTPConnection(host, self.port, timeout=30)
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        conn.request(method, path, body=data, headers=headers or {})
        r = conn.getresponse()
        try:
            payload = r.read()
        except http.client.IncompleteRead as e:
            payload = e
        conn.close()
        return r, payload

    def control(self, method, path, body=None):
        r, payload = self.request(method, path, body)
        if r.status != 200:
            raise SystemExit("FAIL: control %s %s: %d %s" % (method, path, r.status, payload))
        return json.loads(payload or b"{}")

    def stop(self):
        t0 = time.monotonic()
        super().stop()
        check(time.monotonic() - t0 < 2, "SIGTERM: the fake hub exits promptly")


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def main():
    import importlib.util
    if importlib.util.find_spec("huggingface_hub") is None:
        print("SKIPPED (counted as a FAILURE): huggingface_hub is not importable by %s. "
              "scripts/install_deps.sh installs it: python3 -m pip install 'huggingface_hub>=0.30,<3'"
              % sys.executable)
        return 1
    tmp = tempfile.mkdtemp(prefix="fake-hub-check-")
    try:
        return run(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(tmp):
    data = os.path.join(tmp, "data")
    rnd = lambda n, seed: hashlib.shake_256(seed.encode()).digest(n)
    public = {
        "config.json": b'{"hidden_size": 8}\n',
        "README.md": b"# a public model\n",
        "model.safetensors": rnd(2 * 1024 * 1024 + 17, "model"),
        "sub/dir/nested.bin": rnd(4096, "nested"),
        "shards/big.safetensors": rnd(11 * 1024 * 1024, "big"),
    }
    private = {"weights.safetensors": rnd(50000, "private"), "config.json": b"{}\n"}
    gated = {"weights.safetensors": rnd(30000, "gated"), "config.json": b'{"g": 1}\n'}
    for repo, files in (("org/public", public), ("org/private", private), ("org/gated", gated)):
        for p, b in files.items():
            write(os.path.join(data, repo, p), b)
    write(os.path.join(data, "org/public.json"), json.dumps(
        {"tags": {"v1": "main"}, "branches": {"refs/pr/1": "main", "dev": "v1"}}).encode())
    write(os.path.join(data, "org/xet/model.safetensors"), public["model.safetensors"])
    write(os.path.join(data, "org/xet.json"), b'{"xet": true}')
    write(os.path.join(data, "org/private.json"), b'{"private": true}')
    write(os.path.join(data, "org/gated.json"), json.dumps({"gated": True, "granted": ["granted-token"]}).encode())

    fake = Fake(data, tmp, ["--token", "write-token", "--token", "granted-token",
                            "--multipart-threshold", str(1024 * 1024),
                            "--multipart-chunk-size", str(512 * 1024), "--quiet"])
    try:
        check_protocol(fake, public)
        check_huggingface_hub(fake, tmp, public, private, gated)
    except SystemExit:
        raise
    except Exception:
        traceback.print_exc()
        check(False, "unexpected exception (above)")
    finally:
        fake.stop()
    if FAILURES:
        print("fake_hub_check: %d of %d checks FAILED; the fake hub's log:\n%s" %
              (len(FAILURES), CHECKS[0], open(fake.log_path).read()[-4000:]))
        return 1
    print("fake_hub_check: all %d checks passed" % CHECKS[0])
    return 0


def check_protocol(fake, public):
    big = public["model.safetensors"]
    oid = sha256(big)
    r, _ = fake.request("HEAD", "/org/public/resolve/main/model.safetensors")
    check(r.status == 302, "HEAD resolve of an LFS file: 302 (got %d)" % r.status)
    check(r.getheader("X-Linked-Size") == str(len(big)), "X-Linked-Size")
    check(r.getheader("X-Linked-Etag") == '"%s"' % oid, "X-Linked-Etag is the quoted sha256")
    check(len(r.getheader("X-Repo-Commit") or "") == 40, "X-Repo-Commit")
    loc = r.getheader("Location") or ""
    check(loc.startswith("http://localhost:%d/_cdn/%s" % (fake.port, oid)), "Location on the localhost CDN")
    cdn_path = loc[len("http://localhost:%d" % fake.port):]

    r, body = fake.request("GET", "/org/public/resolve/main/config.json")
    check(r.status == 200 and body == public["config.json"], "GET resolve of a small file: 200 + bytes")
    check(r.getheader("ETag") == '"%s"' % hashlib.sha1(
        b"blob %d\0" % len(public["config.json"]) + public["config.json"]).hexdigest(),
        "ETag of a small file: its git blob sha1")

    r, body = fake.request("GET", cdn_path, headers={"Range": "bytes=100-199"}, host="localhost")
    check(r.status == 206 and body == big[100:200], "Range a-b: 206 + the bytes")
    check(r.getheader("Content-Range") == "bytes 100-199/%d" % len(big), "Content-Range")
    r, body = fake.request("GET", cdn_path, headers={"Range": "bytes=%d-" % (len(big) - 10)}, host="localhost")
    check(r.status == 206 and body == big[-10:], "Range a-: 206 + the tail")
    r, body = fake.request("GET", cdn_path, headers={"Range": "bytes=%d-" % len(big)}, host="localhost")
    check(r.status == 416 and r.getheader("Content-Range") == "bytes */%d" % len(big), "Range past the end: 416")
    r, body = fake.request("GET", cdn_path, headers={"Range": "bytes=-7"}, host="localhost")
    check(r.status == 206 and body == big[-7:], "Range -n: 206 + the last n bytes")
    r, body = fake.request("GET", "/org/public/resolve/main/README.md", headers={"Range": "bytes=2-5"})
    check(r.status == 206 and body == public["README.md"][2:6], "Range on a small file")
    r, _ = fake.request("HEAD", "/org/public/resolve/main/README.md")
    check(r.status == 200 and r.getheader("Content-Length") == str(len(public["README.md"])),
          "HEAD of a small file: Content-Length is its size")
    r, _ = fake.request("HEAD", "/org/xet/resolve/main/model.safetensors")
    check(r.status == 302 and len(r.getheader("X-Xet-Hash") or "") == 64, "xet repo: X-Xet-Hash")
    r, body = fake.request("GET", cdn_path, headers={"Authorization": "Bearer write-token"}, host="localhost")
    check(r.status == 400, "the CDN refuses Authorization with 400 (got %d)" % r.status)

    r, _ = fake.request("GET", "/org/gated/resolve/main/config.json")
    check(r.status == 403 and r.getheader("X-Error-Code") == "GatedRepo", "gated without a token: 403 GatedRepo")
    r, _ = fake.request("GET", "/org/private/resolve/main/config.json")
    check(r.status == 401 and r.getheader("X-Error-Code") == "RepoNotFound", "private: 401 RepoNotFound")
    r, _ = fake.request("GET", "/org/private/resolve/main/config.json",
                        headers={"Authorization": "Bearer write-token"})
    check(r.status == 200, "private with a valid token: 200")
    r, _ = fake.request("GET", "/org/nope/resolve/main/config.json")
    check(r.status == 404 and r.getheader("X-Error-Code") == "RepoNotFound", "missing repo: 404 RepoNotFound")
    r, _ = fake.request("GET", "/org/public/resolve/nope/config.json")
    check(r.status == 404 and r.getheader("X-Error-Code") == "RevisionNotFound", "404 RevisionNotFound")
    r, _ = fake.request("GET", "/org/public/resolve/main/nope.json")
    check(r.status == 404 and r.getheader("X-Error-Code") == "EntryNotFound" and
          r.getheader("X-Error-Message"), "404 EntryNotFound with X-Error-Message")

    r, _ = fake.request("GET", "/org/public/resolve/a%0d%0aX-Evil:%201%E2%82%AC/config.json")
    check(r.status == 404 and r.getheader("X-Evil") is None and r.getheader("X-Error-Code") == "RevisionNotFound",
          "request text in X-Error-Message cannot add headers")

    # Faults.
    fake.control("DELETE", "/_fake/stats")
    fake.control("POST", "/_fake/faults", {"rules": [
        {"path": "/api/models/org/public$", "kind": "status", "status": 429, "retry_after": 3}]})
    r, _ = fake.request("GET", "/api/models/org/public")
    check(r.status == 429 and r.getheader("Retry-After") == "3", "status fault: 429 + Retry-After")
    r, _ = fake.request("GET", "/api/models/org/public")
    check(r.status == 200, "a fault with times 1 fires once")
    fake.control("POST", "/_fake/faults", {"rules": [{"path": "_cdn/", "kind": "wrong_length"}]})
    r, body = fake.request("GET", cdn_path, host="localhost")
    check(isinstance(body, http.client.IncompleteRead), "wrong_length: the client sees a short body")
    fake.control("POST", "/_fake/faults", {"rules": [{"path": "_cdn/", "kind": "corrupt", "offset": 5}]})
    r, body = fake.request("GET", cdn_path, host="localhost")
    check(len(body) == len(big) and body != big and body[5] != big[5] and body[6:] == big[6:],
          "corrupt: one byte flipped at the offset")
    fake.control("POST", "/_fake/faults", {"rules": [{"path": "_cdn/", "kind": "drop_after", "bytes": 1000}]})
    r, body = fake.request("GET", cdn_path, host="localhost")
    check(isinstance(body, http.client.IncompleteRead) and len(body.partial) == 1000,
          "drop_after: 1000 bytes then the connection closes")
    fake.control("POST", "/_fake/faults", {"rules": [{"path": "resolve/main/config.json", "kind": "bad_etag"}]})
    r, _ = fake.request("HEAD", "/org/public/resolve/main/config.json")
    check(r.getheader("ETag") != '"%s"' % hashlib.sha1(
        b"blob %d\0" % len(public["config.json"]) + public["config.json"]).hexdigest(), "bad_etag")
    fake.control("POST", "/_fake/faults", {"rules": [
        {"path": "_cdn/", "kind": "trickle", "bytes_per_second": 100000}]})
    t0 = time.monotonic()
    r, body = fake.request("GET", cdn_path, headers={"Range": "bytes=0-29999"}, host="localhost")
    dt = time.monotonic() - t0
    check(body == big[:30000] and dt >= 0.2, "trickle: 30 kB at 100 kB/s takes >= 0.2 s (%.2f)" % dt)
    fake.control("POST", "/_fake/faults", {"rules": [{"path": "config.json", "kind": "stall", "seconds": 0.3,
                                                      "method": "GET"}]})
    t0 = time.monotonic()
    r, _ = fake.request("HEAD", "/org/public/resolve/main/config.json")
    check(time.monotonic() - t0 < 0.25, "a rule's method is honoured (HEAD is not stalled)")
    t0 = time.monotonic()
    r, body = fake.request("GET", "/org/public/resolve/main/config.json")
    check(time.monotonic() - t0 >= 0.3 and body == public["config.json"], "stall: waits before answering")
    fake.control("POST", "/_fake/faults", {"rules": [
        {"path": "model\\.safetensors", "kind": "stall", "after_bytes": 1000, "seconds": 0.3, "times": 2}]})
    t0 = time.monotonic()
    r, body = fake.request("GET", cdn_path, headers={"Range": "bytes=0-4999"}, host="localhost")
    check(time.monotonic() - t0 >= 0.3 and body == big[:5000], "stall after_bytes, matched through the CDN query")
    rules = fake.control("GET", "/_fake/faults")["rules"]
    check(len(rules) >= 1 and rules[-1]["times"] == 1, "GET /_fake/faults: what is left (%s)" % rules[-1:])
    fake.control("DELETE", "/_fake/faults")
    check(fake.control("GET", "/_fake/faults")["rules"] == [], "DELETE /_fake/faults")
    fake.control("POST", "/_fake/throttle", {"bytes_per_second": 1000000})
    t0 = time.monotonic()
    r, body = fake.request("GET", cdn_path, headers={"Range": "bytes=0-299999"}, host="localhost")
    dt = time.monotonic() - t0
    check(body == big[:300000] and dt >= 0.25, "throttle: 300 kB at 1 MB/s takes >= 0.25 s (%.2f)" % dt)
    check_throttle_reaches_its_limit(fake, public)
    fake.control("POST", "/_fake/throttle", {"bytes_per_second": 0})
    stats = fake.control("GET", "/_fake/stats")
    check(stats["bytes_sent"].get(cdn_path.split("?")[0], 0) >= 300000 + 30000 + 1000, "stats: bytes per path")
    check(stats["total_bytes"] >= sum(stats["bytes_sent"].values()) and stats["requests"] == len(stats["log"]),
          "stats: totals")
    check(all(set(e) >= {"method", "path", "status", "range", "bytes", "authorized"} for e in stats["log"]),
          "stats: log entries")

    check_stats_as_the_client_sees_them(fake, cdn_path, big)

    # HTTP/1.0 (what hub/fake_hub_process.cc's Control speaks): the answer ends with the connection.
    import socket
    with socket.create_connection(("127.0.0.1", fake.port), timeout=10) as sock:
        sock.sendall(b"GET /_fake/stats HTTP/1.0\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        got = b""
        while True:
            b = sock.recv(65536)
            if not b:
                break
            got += b
    check(got.startswith(b"HTTP/1.1 200") and got.split(b"\r\n\r\n", 1)[1].startswith(b"{"),
          "HTTP/1.0 control request: answered, then closed")

    # Keep-alive: two requests on one connection.
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
    for _ in range(2):
        conn.request("GET", "/org/public/resolve/main/README.md")
        r = conn.getresponse()
        check(r.status == 200 and r.read() == public["README.md"], "HTTP/1.1 keep-alive")
    conn.close()


def check_throttle_reaches_its_limit(fake, public):
    """One client alone reaches the limit (the time its writes take is not
    charged on top of the bytes' own time) and never goes past it. The best of
    two tries counts for the floor: a loaded machine may pause the fake once."""
    big = public["shards/big.safetensors"]
    limit = 40 * 1000 * 1000
    fake.control("POST", "/_fake/throttle", {"bytes_per_second": limit})
    rates = []
    for _ in range(2):
        t0 = time.monotonic()
        r, body = fake.request("GET", "/org/public/resolve/main/shards/big.safetensors")
        if r.status == 302:
            loc = r.getheader("Location")
            r, body = fake.request("GET", loc[loc.index("/_cdn/"):], host="localhost")
        dt = time.monotonic() - t0
        check(body == big, "throttled download: the bytes")
        rates.append(len(big) / dt)
        # At most the limit, plus the one chunk that may go out at once.
        check(len(big) - 64 * 1024 <= limit * dt * 1.02,
              "throttle: never faster than the limit (%.1f MB/s of %.0f)" % (rates[-1] / 1e6, limit / 1e6))
        if max(rates) >= 0.9 * limit:
            break
    print("throttle at %.0f MB/s: one client got %s MB/s" % (limit / 1e6, ", ".join("%.1f" % (x / 1e6) for x in rates)),
          flush=True)
    check(max(rates) >= 0.9 * limit, "throttle: one client reaches 90%% of the limit (%s MB/s of %.0f)" %
          (", ".join("%.1f" % (x / 1e6) for x in rates), limit / 1e6))


def check_stats_as_the_client_sees_them(fake, cdn_path, big):
    """A client that holds (part of) an answer finds it in /_fake/stats: a
    request is counted when it starts and its bytes before they are sent (a
    client test once read the stats between its answer and the fake's count)."""
    fake.control("DELETE", "/_fake/stats")
    fake.control("POST", "/_fake/faults", {"rules": [
        {"path": "_cdn/", "kind": "stall", "after_bytes": 1000, "seconds": 1.0}]})
    conn = http.client.HTTPConnection("localhost", fake.port, timeout=10)
    conn.request("GET", cdn_path, headers={"Range": "bytes=0-4999"})
    r = conn.getresponse()
    head = r.read(1000)  # what the fake sent before it stalls
    stats = fake.control("GET", "/_fake/stats")
    mine = [e for e in stats["log"] if e["path"] == cdn_path.split("?")[0]]
    check(head == big[:1000] and r.status == 206, "stall after_bytes: the first 1000 bytes")
    check(stats["requests"] == 1 and len(mine) == 1 and mine[0]["status"] == 206 and mine[0]["bytes"] == 1000,
          "stats while an answer is under way: the request, its status and the 1000 bytes sent (%s)" %
          stats["log"])
    check(stats["total_bytes"] == 1000 and stats["bytes_sent"].get(cdn_path.split("?")[0]) == 1000 and
          stats["bytes_by_file"].get("org/public/model.safetensors") == 1000,
          "stats while an answer is under way: the byte counters (%s, %s)" %
          (stats["bytes_sent"], stats["bytes_by_file"]))
    rest = r.read()
    conn.close()
    check(head + rest == big[:5000], "stall after_bytes: then the rest")
    stats = fake.control("GET", "/_fake/stats")
    check(stats["total_bytes"] == 5000 and stats["log"][-1]["bytes"] == 5000, "stats after the answer: 5000 bytes")
    # A request that has no answer yet is counted too (status 0 until it has one).
    fake.control("DELETE", "/_fake/stats")
    fake.control("POST", "/_fake/faults", {"rules": [
        {"path": "/api/models/org/public$", "kind": "stall", "seconds": 1.0}]})
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
    conn.request("GET", "/api/models/org/public")
    stats = {}
    deadline = time.monotonic() + 0.8
    while time.monotonic() < deadline:  # the request reaches the fake (bounded)
        stats = fake.control("GET", "/_fake/stats")
        if stats["requests"]:
            break
        time.sleep(0.01)
    check(stats.get("requests") == 1 and [(e["path"], e["status"]) for e in stats["log"]] ==
          [("/api/models/org/public", 0)], "a stalled request is in the stats with status 0 (%s)" % stats)
    r = conn.getresponse()
    r.read()
    conn.close()
    stats = fake.control("GET", "/_fake/stats")
    check(r.status == 200 and stats["log"][-1]["status"] == 200 and stats["log"][-1]["bytes"] > 0,
          "the stalled request's answer: status and bytes")
    fake.control("DELETE", "/_fake/faults")


def check_huggingface_hub(fake, tmp, public, private, gated):
    cache = os.path.join(tmp, "hf-cache")
    os.environ.update({
        "HF_ENDPOINT": fake.url, "HF_HOME": os.path.join(tmp, "hf-home"), "HF_HUB_CACHE": cache,
        "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1"})
    os.environ.pop("HF_TOKEN", None)
    os.environ.pop("HF_HUB_OFFLINE", None)
    try:
        import huggingface_hub as hf
        from huggingface_hub import HfApi
        from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError,
                                            RepositoryNotFoundError, RevisionNotFoundError)
    except ImportError as e:
        print("SKIPPED (counted as a FAILURE): huggingface_hub is not importable (%s). "
              "scripts/install_deps.sh installs it: python3 -m pip install 'huggingface_hub>=0.30,<3'" % e)
        raise SystemExit(1)
    print("huggingface_hub %s against %s" % (hf.__version__, fake.url), flush=True)
    api = HfApi(endpoint=fake.url)

    # model_info, revision, tree.
    info = api.model_info("org/public", files_metadata=True)
    check(info.id == "org/public" and len(info.sha or "") == 40, "model_info: id and sha")
    sib = {s.rfilename: s for s in info.siblings}
    check(set(sib) == set(public), "model_info: siblings %s" % sorted(sib))
    for p, b in public.items():
        s = sib.get(p)
        if s is None:
            continue
        check(s.size == len(b), "model_info: size of %s" % p)
        if len(b) >= 1024:
            check(s.lfs is not None and s.lfs.sha256 == sha256(b) and s.lfs.size == len(b),
                  "model_info: lfs of %s" % p)
        else:
            check(s.lfs is None and s.blob_id == hashlib.sha1(b"blob %d\0" % len(b) + b).hexdigest(),
                  "model_info: blob id of %s" % p)
    check(api.model_info("org/public", revision="v1").sha == info.sha, "model_info at a tag")
    check(api.model_info("org/public", revision=info.sha).sha == info.sha, "model_info at a commit id")
    check(api.model_info("org/public", revision="refs/pr/1").sha == info.sha, "model_info at refs/pr/1")
    refs = api.list_repo_refs("org/public")
    check({b.name for b in refs.branches} == {"main", "dev"} and [t.name for t in refs.tags] == ["v1"],
          "list_repo_refs: %s" % refs)
    check(api.model_info("org/gated").gated not in (None, False), "model_info of a gated repo (public metadata)")
    tree = list(api.list_repo_tree("org/public", recursive=True))
    files = {t.path for t in tree if type(t).__name__ == "RepoFile"}
    dirs = {t.path for t in tree if type(t).__name__ == "RepoFolder"}
    check(files == set(public) and dirs == {"sub", "sub/dir", "shards"}, "list_repo_tree recursive: %s %s" % (files, dirs))
    top = {t.path for t in api.list_repo_tree("org/public")}
    check(top == {"config.json", "README.md", "model.safetensors", "sub", "shards"}, "list_repo_tree top level: %s" % top)
    nested = {t.path for t in api.list_repo_tree("org/public", path_in_repo="sub/dir")}
    check(nested == {"sub/dir/nested.bin"}, "list_repo_tree of a folder: %s" % nested)

    # Downloads.
    for p, b in public.items():
        path = hf.hf_hub_download("org/public", p)
        check(open(path, "rb").read() == b, "hf_hub_download %s: bytes" % p)
        blob = os.path.basename(os.path.realpath(path))
        want = sha256(b) if len(b) >= 1024 else hashlib.sha1(b"blob %d\0" % len(b) + b).hexdigest()
        check(blob == want, "hf_hub_download %s: the cache blob is named by the etag (%s)" % (p, blob))
    path = hf.hf_hub_download("org/private", "weights.safetensors", token="write-token")
    check(open(path, "rb").read() == private["weights.safetensors"], "hf_hub_download private with a token")
    path = hf.hf_hub_download("org/gated", "weights.safetensors", token="granted-token")
    check(open(path, "rb").read() == gated["weights.safetensors"], "hf_hub_download gated, granted token")
    snap = hf.snapshot_download("org/public")
    for p, b in public.items():
        check(open(os.path.join(snap, p), "rb").read() == b, "snapshot_download %s: bytes" % p)
    check(os.path.basename(snap) == info.sha, "snapshot_download: the snapshot is the commit")
    path = hf.hf_hub_download("org/public", "config.json", revision="refs/pr/1")
    check(open(path, "rb").read() == public["config.json"], "hf_hub_download at refs/pr/1")
    snap = hf.snapshot_download("org/xet")
    check(open(os.path.join(snap, "model.safetensors"), "rb").read() == public["model.safetensors"],
          "snapshot_download of an xet repo (HF_HUB_DISABLE_XET=1)")
    snap = hf.snapshot_download("org/private", token="write-token")
    check(open(os.path.join(snap, "config.json"), "rb").read() == private["config.json"],
          "snapshot_download private")
    stats = fake.control("GET", "/_fake/stats")
    cdn_auth = [e for e in stats["log"] if e["path"].startswith("/_cdn/") and e["authorized"]]
    check(not cdn_auth, "huggingface_hub sends no Authorization to the CDN")

    # Errors (a fresh cache each, so nothing falls back to cached files).
    def fresh():
        return tempfile.mkdtemp(dir=tmp)
    expect_raises(RepositoryNotFoundError, lambda: hf.hf_hub_download(
        "org/private", "config.json", cache_dir=fresh()), "private without a token")
    expect_raises(RepositoryNotFoundError, lambda: hf.hf_hub_download(
        "org/private", "config.json", cache_dir=fresh(), token="bad-token"), "private with a bad token")
    expect_raises(RepositoryNotFoundError, lambda: hf.hf_hub_download(
        "org/missing", "config.json", cache_dir=fresh()), "missing repo")
    expect_raises(RepositoryNotFoundError, lambda: api.model_info("org/private"), "model_info private")
    expect_raises(GatedRepoError, lambda: hf.hf_hub_download(
        "org/gated", "config.json", cache_dir=fresh()), "gated without a token")
    expect_raises(GatedRepoError, lambda: hf.hf_hub_download(
        "org/gated", "config.json", cache_dir=fresh(), token="write-token"), "gated, token not granted")
    expect_raises(RevisionNotFoundError, lambda: hf.hf_hub_download(
        "org/public", "config.json", revision="nope", cache_dir=fresh()), "missing revision")
    expect_raises(RevisionNotFoundError, lambda: api.model_info("org/public", revision="nope"),
                  "model_info missing revision")
    expect_raises(EntryNotFoundError, lambda: hf.hf_hub_download(
        "org/public", "nope.json", cache_dir=fresh()), "missing file")

    # The cache.
    scan = hf.scan_cache_dir(cache)
    repos = {r.repo_id: r for r in scan.repos}
    check(set(repos) >= {"org/public", "org/private", "org/gated", "org/xet"}, "scan_cache_dir repos: %s" % sorted(repos))
    if "org/public" in repos:
        r = repos["org/public"]
        check(r.nb_files == len(public) and r.size_on_disk >= sum(len(b) for b in public.values()),
              "scan_cache_dir: files and size of org/public")
        revs = {rev.commit_hash for rev in r.revisions}
        check(revs == {info.sha} and any("main" in rev.refs for rev in r.revisions), "scan_cache_dir: revision")
    fake.control("DELETE", "/_fake/stats")
    path = hf.hf_hub_download("org/public", "model.safetensors", local_files_only=True)
    check(open(path, "rb").read() == public["model.safetensors"], "local_files_only hf_hub_download")
    snap = hf.snapshot_download("org/public", local_files_only=True)
    check(os.path.isfile(os.path.join(snap, "sub/dir/nested.bin")), "local_files_only snapshot_download")
    check(fake.control("GET", "/_fake/stats")["requests"] == 0, "local_files_only: no request")

    # Resume: the connection drops after 10.5 MiB of an 11 MiB file. huggingface_hub writes what it
    # got in 10 MiB pieces (constants.DOWNLOAD_CHUNK_SIZE) and asks for the rest with a Range.
    fake.control("DELETE", "/_fake/stats")
    fake.control("POST", "/_fake/faults", {"rules": [
        {"path": r"big\.safetensors", "method": "GET", "kind": "drop_after",
         "bytes": 10 * 1024 * 1024 + 512 * 1024}]})
    big = public["shards/big.safetensors"]
    resume_cache = fresh()
    try:
        path = hf.hf_hub_download("org/public", "shards/big.safetensors", cache_dir=resume_cache)
    except Exception as e:
        # huggingface_hub < 1.0 (requests) does not retry a truncated body in the same call; it keeps
        # blobs/<etag>.incomplete and resumes from it in the next one.
        print("first download raised %s (huggingface_hub %s): downloading again" % (type(e).__name__,
                                                                                 hf.__version__))
        path = hf.hf_hub_download("org/public", "shards/big.safetensors", cache_dir=resume_cache)
    check(open(path, "rb").read() == big, "resumed download: bytes")
    stats = fake.control("GET", "/_fake/stats")
    log = stats["log"]
    ranges = [(e["range"], e["status"]) for e in log if e["path"].startswith("/_cdn/")]
    check(stats["bytes_by_file"].get("org/public/shards/big.safetensors") == 10 * 1024 * 1024 + 1536 * 1024,
          "stats: bytes_by_file counts both CDN GETs (%s)" % stats["bytes_by_file"])
    check(ranges == [(None, 200), ("bytes=%d-" % (10 * 1024 * 1024), 206)],
          "resumed download: a Range from 10 MiB answered 206 (%s)" % ranges)
    fake.control("DELETE", "/_fake/faults")

    # A revision that moves: /_fake/commit on main.
    import base64
    before = api.model_info("org/public").sha
    fake.control("POST", "/_fake/commit", {"repo": "org/public", "branch": "main",
                                            "files": {"added.txt": base64.b64encode(b"added\n").decode()},
                                            "delete": ["README.md"]})
    after = api.model_info("org/public", files_metadata=True)
    names = {s.rfilename for s in after.siblings}
    check(after.sha != before and "added.txt" in names and "README.md" not in names, "/_fake/commit moves main")
    check(open(hf.hf_hub_download("org/public", "added.txt"), "rb").read() == b"added\n",
          "download after /_fake/commit")
    check(api.model_info("org/public", revision=before).sha == before, "the old commit stays reachable")
    fake.control("POST", "/_fake/tag", {"repo": "org/public", "tag": "v2", "target": "main"})
    check(api.model_info("org/public", revision="v2").sha == after.sha, "/_fake/tag")

    # Uploads.
    up_dir = os.path.join(tmp, "upload")
    upload = {
        "big.safetensors": rnd_bytes(1536 * 1024 + 5, "big"),  # multipart (threshold 1 MiB, 512 KiB parts)
        "small.safetensors": rnd_bytes(20000, "small"),  # LFS, basic
        "config.json": b'{"up": true}\n',  # regular
        "nested/dir/tokenizer.json": b'{"t": 1}\n',
    }
    for p, b in upload.items():
        write(os.path.join(up_dir, p), b)
    url = api.create_repo("fake-user/uploaded", token="write-token")
    check(str(url).endswith("/fake-user/uploaded"), "create_repo: url %s" % url)
    expect_raises(HfHubHTTPError, lambda: api.create_repo("fake-user/uploaded", token="write-token"),
                  "create_repo of an existing repo: 409")
    api.create_repo("fake-user/uploaded", token="write-token", exist_ok=True)
    expect_raises(HfHubHTTPError, lambda: api.upload_folder(
        repo_id="fake-user/uploaded", folder_path=up_dir, token=None), "upload without a token")
    fake.control("DELETE", "/_fake/stats")
    ci = api.upload_folder(repo_id="fake-user/uploaded", folder_path=up_dir, token="write-token",
                           commit_message="upload")
    check(len(ci.oid) == 40, "upload_folder: a commit id")
    log = fake.control("GET", "/_fake/stats")["log"]
    parts = [e for e in log if "/part/" in e["path"] and e["method"] == "PUT"]
    completes = [e for e in log if e["path"].endswith("/complete") and e["status"] == 200]
    basics = [e for e in log if e["method"] == "PUT" and "/part/" not in e["path"]]
    check(len(parts) == 4 and len(completes) == 1, "multipart upload: 4 parts and a completion (%d, %d)"
          % (len(parts), len(completes)))
    check(len(basics) == 1, "basic upload: one PUT (%d)" % len(basics))
    check(not any(e["authorized"] for e in log if e["method"] == "PUT"), "PUTs carry no Authorization")
    check(any(e["path"].endswith("/commit/main") and e["status"] == 200 for e in log), "the commit call")
    snap = hf.snapshot_download("fake-user/uploaded", cache_dir=fresh())
    for p, b in upload.items():
        got = open(os.path.join(snap, p), "rb").read() if os.path.isfile(os.path.join(snap, p)) else None
        check(got == b, "upload then download: %s" % p)
    check(os.path.isfile(os.path.join(snap, ".gitattributes")), "a created repo has .gitattributes")
    check(os.path.basename(snap) == ci.oid, "the downloaded snapshot is the uploaded commit")
    # Uploading the same again sends no bytes: the LFS objects are there.
    write(os.path.join(up_dir, "config.json"), b'{"up": 2}\n')
    fake.control("DELETE", "/_fake/stats")
    ci2 = api.upload_folder(repo_id="fake-user/uploaded", folder_path=up_dir, token="write-token")
    log = fake.control("GET", "/_fake/stats")["log"]
    check(not any(e["method"] == "PUT" for e in log), "re-upload: no LFS PUT for stored objects")
    check(open(hf.hf_hub_download("fake-user/uploaded", "config.json", revision=ci2.oid,
                                  cache_dir=fresh()), "rb").read() == b'{"up": 2}\n', "second commit")
    # A pull request: refs/pr/1.
    pr = api.upload_file(path_or_fileobj=b"pr content\n", path_in_repo="pr.txt", repo_id="fake-user/uploaded",
                         token="write-token", create_pr=True)
    check(getattr(pr, "pr_num", None) == 1, "create_pr: pr 1 (%r)" % getattr(pr, "pr_url", None))
    check(open(hf.hf_hub_download("fake-user/uploaded", "pr.txt", revision="refs/pr/1", cache_dir=fresh()),
               "rb").read() == b"pr content\n", "download at refs/pr/1")
    expect_raises(EntryNotFoundError, lambda: hf.hf_hub_download(
        "fake-user/uploaded", "pr.txt", cache_dir=fresh()), "a pr does not move main")
    check_branches(fake, api, hf, fresh, ci2.oid)


def check_branches(fake, api, hf, fresh, head):
    """create_branch, and commits go to a branch that exists (preupload and commit agree)."""
    from huggingface_hub.errors import BadRequestError, HfHubHTTPError, RevisionNotFoundError
    repo = "fake-user/uploaded"
    main = api.model_info(repo).sha
    api.create_branch(repo, branch="feature", token="write-token")
    refs = {b.name: b.target_commit for b in api.list_repo_refs(repo).branches}
    check(refs.get("feature") == main, "create_branch: from main's head (%s)" % refs)
    expect_raises(HfHubHTTPError, lambda: api.create_branch(repo, branch="feature", token="write-token"),
                  "create_branch of an existing branch: 409")
    r, _ = fake.request("POST", "/api/models/%s/branch/feature" % repo, {},
                        {"Authorization": "Bearer write-token", "Content-Type": "application/json"})
    check(r.status == 409, "create_branch of an existing branch: 409 (got %d)" % r.status)
    api.create_branch(repo, branch="feature", token="write-token", exist_ok=True)
    api.create_branch(repo, branch="old/start", revision=head, token="write-token")
    refs = {b.name: b.target_commit for b in api.list_repo_refs(repo).branches}
    check(refs.get("old/start") == head, "create_branch from a commit id, a name with a slash (%s)" % refs)
    expect_raises(RevisionNotFoundError, lambda: api.create_branch(repo, branch="x", revision="nope",
                                                                   token="write-token"),
                  "create_branch from a missing revision")
    expect_raises(BadRequestError, lambda: api.create_branch(repo, branch="refs/pr/5", token="write-token"),
                  "create_branch refs/pr/5: 400")
    expect_raises(HfHubHTTPError, lambda: api.create_branch(repo, branch="y", token=False),
                  "create_branch without a token")
    check(not {"x", "y", "refs/pr/5"} & {b.name for b in api.list_repo_refs(repo).branches},
          "a refused create_branch makes no branch")
    # A commit to the branch: main stays.
    ci = api.upload_file(path_or_fileobj=b"on feature\n", path_in_repo="feature.txt", repo_id=repo,
                         revision="feature", token="write-token")
    check(api.model_info(repo).sha == main and api.model_info(repo, revision="feature").sha == ci.oid,
          "a commit to a created branch moves it, not main")
    check(open(hf.hf_hub_download(repo, "feature.txt", revision="feature", cache_dir=fresh()), "rb").read() ==
          b"on feature\n", "download from the created branch")
    # A branch that does not exist: the preupload says so, as the commit would (the Hub: 404).
    before = {b.name: b.target_commit for b in api.list_repo_refs(repo).branches}
    expect_raises(RevisionNotFoundError, lambda: api.upload_file(
        path_or_fileobj=b"x" * 5000, path_in_repo="lfs.bin", repo_id=repo, revision="missing",
        token="write-token"), "upload to a missing branch: RevisionNotFound")
    auth = {"Authorization": "Bearer write-token", "Content-Type": "application/json"}
    r, _ = fake.request("POST", "/api/models/%s/preupload/missing" % repo,
                        {"files": [{"path": "a.txt", "size": 3, "sample": ""}]}, auth)
    check(r.status == 404 and r.getheader("X-Error-Code") == "RevisionNotFound",
          "preupload on a missing branch: 404 RevisionNotFound (got %d)" % r.status)
    line = json.dumps({"key": "header", "value": {"summary": "s"}}).encode() + b"\n" + json.dumps(
        {"key": "file", "value": {"path": "a.txt", "content": "YWJj", "encoding": "base64"}}).encode()
    r, _ = fake.request("POST", "/api/models/%s/commit/missing" % repo, line,
                        {"Authorization": "Bearer write-token", "Content-Type": "application/x-ndjson"})
    check(r.status == 404 and r.getheader("X-Error-Code") == "RevisionNotFound",
          "commit on a missing branch: 404 RevisionNotFound (got %d)" % r.status)
    for rev in (head,):  # a commit id is no branch: both 400
        r, _ = fake.request("POST", "/api/models/%s/preupload/%s" % (repo, rev),
                            {"files": [{"path": "a.txt", "size": 3, "sample": ""}]}, auth)
        r2, _ = fake.request("POST", "/api/models/%s/commit/%s" % (repo, rev), line,
                             {"Authorization": "Bearer write-token", "Content-Type": "application/x-ndjson"})
        check(r.status == 400 and r2.status == 400, "preupload and commit on a commit id: 400 (%d, %d)" %
              (r.status, r2.status))
    after = {b.name: b.target_commit for b in api.list_repo_refs(repo).branches}
    check(after == before, "no branch was made or moved by the refused commits (%s)" % after)
    # The preupload's oids are those of the branch the commit starts from.
    r, body = fake.request("POST", "/api/models/%s/preupload/feature" % repo,
                           {"files": [{"path": "feature.txt", "size": 11, "sample": ""}]}, auth)
    got = json.loads(body)["files"][0]["oid"] if r.status == 200 else None
    check(got == hashlib.sha1(b"blob 11\0on feature\n").hexdigest(), "preupload oid on the branch (%s)" % got)


def rnd_bytes(n, seed):
    return hashlib.shake_256(seed.encode()).digest(n)


if __name__ == "__main__":
    sys.exit(main())
