#!/usr/bin/env python3
"""A fake Hugging Face Hub for tests (protocol: tests/hub/FAKE_HUB.md).

Python 3 standard library only. It answers with the response shapes, headers,
redirects and error codes that huggingface_hub parses (file_download.py
get_hf_file_metadata/http_get, hf_api.py model_info/list_repo_tree,
utils/_http.py hf_raise_for_status, _commit_api.py and lfs.py for uploads),
plus control endpoints under /_fake/ that inject faults and report stats.
"""

import argparse
import base64
import hashlib
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

GITATTRIBUTES = b"""*.7z filter=lfs diff=lfs merge=lfs -text
*.bin filter=lfs diff=lfs merge=lfs -text
*.bs filter=lfs diff=lfs merge=lfs -text
*.h5 filter=lfs diff=lfs merge=lfs -text
*.msgpack filter=lfs diff=lfs merge=lfs -text
*.onnx filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.pth filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
*.tar.* filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
"""

DATE = "2024-01-01T00:00:00.000Z"
LOG_LIMIT = 1000
CHUNK = 64 * 1024
THROTTLE_CATCH_UP = 0.05  # seconds a throttled sender may be behind and catch up


def git_blob_sha1(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256, size):
    return ("version https://git-lfs.github.com/spec/v1\noid sha256:%s\nsize %d\n" %
            (sha256, size)).encode()


class Content:
    """Bytes in memory or a file on disk (read on demand)."""

    def __init__(self, data=None, path=None, size=None):
        self.data = data
        self.path = path
        self.size = len(data) if data is not None else size

    def read(self, offset, n):
        if self.data is not None:
            return self.data[offset:offset + n]
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read(n)

    def all(self):
        return self.read(0, self.size)


def hash_file(path):
    sha256 = hashlib.sha256()
    size = os.path.getsize(path)
    sha1 = hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            sha256.update(b)
            sha1.update(b)
    return size, sha256.hexdigest(), sha1.hexdigest()


class FileEntry:
    def __init__(self, size, sha256, git_sha1, lfs):
        self.size = size
        self.sha256 = sha256
        self.git_sha1 = git_sha1  # sha1 of the content as a git blob
        self.lfs = lfs
        if lfs:
            self.pointer = lfs_pointer(sha256, size)
            self.oid = git_blob_sha1(self.pointer)  # what git stores: the pointer
        else:
            self.pointer = None
            self.oid = git_sha1

    def etag(self):
        return self.sha256 if self.lfs else self.git_sha1

    def tree_json(self, path, xet):
        d = {"type": "file", "oid": self.oid, "size": self.size, "path": path}
        if self.lfs:
            d["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": len(self.pointer)}
            if xet:
                d["xetHash"] = xet_hash(self.sha256)
        return d


def xet_hash(sha256):
    return hashlib.sha256(b"xet:" + sha256.encode()).hexdigest()


class Commit:
    def __init__(self, parent, files, summary):
        self.parent = parent
        self.files = files  # path -> FileEntry
        self.summary = summary
        h = hashlib.sha1()
        h.update(json.dumps({"parent": parent, "summary": summary,
                             "files": sorted((p, e.oid) for p, e in files.items())}).encode())
        self.id = h.hexdigest()


class Repo:
    def __init__(self, repo_id, options):
        self.id = repo_id
        self.private = bool(options.get("private", False))
        gated = options.get("gated", False)
        self.gated = ("manual" if gated is True else gated) if gated else False
        self.granted = set(options.get("granted", []))
        self.lfs_threshold = int(options.get("lfs_threshold", 1024))
        self.xet = bool(options.get("xet", False))
        self.branches = {}
        self.tags = {}
        self.commits = {}
        self.pr_count = 0

    def add_commit(self, commit):
        self.commits[commit.id] = commit
        return commit

    def resolve(self, rev):
        if rev in self.branches:
            return self.commits[self.branches[rev]]
        if rev in self.tags:
            return self.commits[self.tags[rev]]
        if re.fullmatch(r"[0-9a-f]{40}", rev or "") and rev in self.commits:
            return self.commits[rev]
        return None


class HubError(Exception):
    def __init__(self, status, code, message, headers=None, extra=None):
        super().__init__(message)
        self.extra = extra or {}
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class State:
    def __init__(self, args):
        self.lock = threading.Lock()
        self.tokens = set(args.token or [])
        self.repos = {}
        self.objects = {}  # sha256 -> Content
        self.uploads = {}  # upload id -> {"oid", "size", "parts": {n: bytes}}
        self.rules = []
        self.throttle_bps = 0
        self.throttle_next = 0.0
        self.multipart_threshold = args.multipart_threshold
        self.multipart_chunk = args.multipart_chunk_size
        self.reset_stats()
        self.load(args.data)

    def reset_stats(self):
        self.bytes_sent = {}
        self.bytes_by_file = {}  # "owner/name/path" -> body bytes (resolve and CDN)
        self.total_bytes = 0
        self.requests = 0
        self.log = []

    # Repos from the data dir.
    def load(self, data):
        if not data or not os.path.isdir(data):
            return
        for owner in sorted(os.listdir(data)):
            odir = os.path.join(data, owner)
            if owner.startswith(".") or not os.path.isdir(odir):
                continue
            for name in sorted(os.listdir(odir)):
                rdir = os.path.join(odir, name)
                if name.startswith(".") or not os.path.isdir(rdir):
                    continue
                opts = {}
                opt_path = rdir + ".json"
                if os.path.isfile(opt_path):
                    with open(opt_path) as f:
                        opts = json.load(f)
                repo = Repo(owner + "/" + name, opts)
                files = {}
                for root, dirs, fnames in os.walk(rdir):
                    dirs.sort()
                    for fn in sorted(fnames):
                        full = os.path.join(root, fn)
                        rel = os.path.relpath(full, rdir).replace(os.sep, "/")
                        size, sha256, sha1 = hash_file(full)
                        self.objects.setdefault(sha256, Content(path=full, size=size))
                        files[rel] = FileEntry(size, sha256, sha1, size >= repo.lfs_threshold)
                c = repo.add_commit(Commit(None, files, "initial commit"))
                repo.branches["main"] = c.id
                for tag, target in opts.get("tags", {}).items():
                    tc = repo.resolve(target)
                    if tc is None:
                        raise SystemExit("fake hub: tag %s of %s: unknown target %s" % (tag, repo.id, target))
                    repo.tags[tag] = tc.id
                for branch, target in opts.get("branches", {}).items():
                    bc = repo.resolve(target)
                    if bc is None:
                        raise SystemExit("fake hub: branch %s of %s: unknown target %s" %
                                         (branch, repo.id, target))
                    repo.branches[branch] = bc.id
                self.repos[repo.id] = repo

    def store(self, data):
        sha = hashlib.sha256(data).hexdigest()
        with self.lock:
            self.objects.setdefault(sha, Content(data=data))
        return sha

    def entry_for(self, repo, data, lfs=None):
        sha256 = self.store(data)
        if lfs is None:
            lfs = len(data) >= repo.lfs_threshold
        return FileEntry(len(data), sha256, git_blob_sha1(data), lfs)

    @staticmethod
    def branch_head(repo, rev):
        """The head of branch rev, which a preupload and a commit are about (under the lock).

        As on the Hub: a commit goes to a branch that exists (made first with
        POST /api/models/{repo}/branch/{branch}): a tag or a commit id is 400,
        any other missing name 404 RevisionNotFound."""
        if rev in repo.branches:
            return repo.commits[repo.branches[rev]]
        if rev in repo.tags or re.fullmatch(r"[0-9a-f]{40}", rev or ""):
            raise HubError(400, None, "Invalid rev id: %s is not a branch" % rev)
        raise HubError(404, "RevisionNotFound", "Invalid rev id: %s" % rev)

    def commit(self, repo, branch, adds, deletes, delete_folders=(), summary="commit",
               parent_commit=None, create_pr=False, create_branch=False):
        """adds: path -> FileEntry. Returns (commit, pr_number or None).
        create_branch (/_fake/commit only): a missing branch starts from main."""
        with self.lock:
            if create_branch and branch not in repo.branches and branch not in repo.tags and \
                    not re.fullmatch(r"[0-9a-f]{40}", branch):
                base = repo.resolve("main")
            else:
                base = self.branch_head(repo, branch)
            if parent_commit and base is not None and not base.id.startswith(parent_commit):
                raise HubError(412, None, "A commit has happened since. Please refresh and try again.")
            files = dict(base.files) if base else {}
            for p in deletes:
                files.pop(p, None)
            for d in delete_folders:
                prefix = d.rstrip("/") + "/"
                for p in [p for p in files if p.startswith(prefix)]:
                    del files[p]
            files.update(adds)
            c = repo.add_commit(Commit(base.id if base else None, files, summary))
            pr = None
            if create_pr:
                repo.pr_count += 1
                pr = repo.pr_count
                repo.branches["refs/pr/%d" % pr] = c.id
            else:
                repo.branches[branch] = c.id
            return c, pr

    # Faults.
    def take_fault(self, phase, method, path, target):
        kinds = {"start": ("status", "stall"), "headers": ("bad_etag",),
                 "body": ("drop_after", "wrong_length", "trickle", "corrupt", "stall_body")}[phase]
        with self.lock:
            for rule in self.rules:
                if rule.get("kind") not in kinds:
                    continue
                if rule.get("method") and rule["method"].upper() != method:
                    continue
                try:
                    rx = rule.get("path", "")
                    if not (re.search(rx, path) or re.search(rx, target)):
                        continue
                except re.error:
                    continue
                times = rule.get("times", 1)
                if times == 0:
                    continue
                if times > 0:
                    rule["times"] = times - 1
                return dict(rule)
        return None

    def throttle_wait(self, n):
        """Waits until n more body bytes may go out under the limit.

        The bytes sent are scheduled back to back at the limit: n bytes take
        the slot [start, start + n / limit] and may be written from its start
        on, so the time a write takes overlaps its own slot instead of adding
        to it, and a wake-up that comes late (a loaded machine) is made up by
        the next chunks (up to THROTTLE_CATCH_UP behind; a link idle longer
        than that starts afresh, with no burst). Bytes sent by time t stay
        within limit * t plus one chunk."""
        with self.lock:
            bps = self.throttle_bps
            if bps <= 0:
                return
            now = time.monotonic()
            start = self.throttle_next
            if start < now - THROTTLE_CATCH_UP:
                start = now
            self.throttle_next = start + n / bps
        delay = start - time.monotonic()
        if delay > 0:
            time.sleep(delay)


STATE = None
ARGS = None


def header_value(v):
    """A header value that cannot break the response (names from requests end up in messages)."""
    v = re.sub(r"[\r\n\x00]+", " ", str(v))
    return v.encode("latin-1", "backslashreplace").decode("latin-1")


def parse_range(header, size):
    """Returns None (no/ignored Range), (start, end) inclusive, or 'bad' (416)."""
    if not header:
        return None
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not m or (m.group(1) == "" and m.group(2) == ""):
        return None
    a, b = m.group(1), m.group(2)
    if a == "":
        n = int(b)
        if n == 0:
            return "bad"
        return (max(0, size - n), size - 1) if size > 0 else "bad"
    start = int(a)
    end = int(b) if b != "" else size - 1
    if start >= size or end < start:
        return "bad"
    return (start, min(end, size - 1))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1.0"

    def version_string(self):
        return self.server_version

    def log_message(self, fmt, *args):
        if not ARGS.quiet:
            sys.stderr.write("fake hub: %s\n" % (fmt % args))
            sys.stderr.flush()

    # ---- plumbing -------------------------------------------------------
    def read_body(self):
        if getattr(self, "_body", None) is not None:
            return self._body
        te = self.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    break
                n = int(line.split(b";")[0].strip() or b"0", 16)
                if n == 0:
                    while True:  # trailers
                        t = self.rfile.readline(65537)
                        if not t or t in (b"\r\n", b"\n"):
                            break
                    break
                chunks.append(self.rfile.read(n))
                self.rfile.readline(3)
            self._body = b"".join(chunks)
        else:
            n = int(self.headers.get("Content-Length") or 0)
            self._body = self.rfile.read(n) if n > 0 else b""
        return self._body

    def json_body(self):
        try:
            return json.loads(self.read_body() or b"{}")
        except ValueError:
            raise HubError(400, None, "Invalid JSON body")

    def token(self):
        auth = self.headers.get("Authorization")
        if not auth:
            return None
        parts = auth.split(None, 1)
        return parts[1].strip() if len(parts) == 2 and parts[0].lower() == "bearer" else auth

    def base_url(self, host=None):
        port = self.server.server_address[1]
        return "http://%s:%d" % (host or "127.0.0.1", port)

    def fault(self, phase):
        return STATE.take_fault(phase, self.command, self.split.path, self.path)

    # Stats are kept as the client sees the answer: a request is in the log
    # (status 0) once its headers are read, its status is set before its headers
    # go out and its body bytes are counted before they are written, so a
    # client holding any part of an answer finds it counted in /_fake/stats.
    def record_start(self):
        self.entry = None
        path = self.split.path
        if path.startswith("/_fake/"):
            return  # control traffic is not Hub traffic
        entry = {"method": self.command, "path": path, "query": self.split.query,
                 "host": self.headers.get("Host", ""), "status": 0,
                 "range": self.headers.get("Range"), "bytes": 0, "file": None,
                 "authorized": self.headers.get("Authorization") is not None}
        with STATE.lock:
            STATE.requests += 1
            STATE.log.append(entry)
            if len(STATE.log) > LOG_LIMIT:
                del STATE.log[:len(STATE.log) - LOG_LIMIT]
        self.entry = entry

    def record_status(self, status):
        """Before the status line is sent."""
        if self.entry is None:
            return
        with STATE.lock:
            self.entry["status"] = status
            self.entry["file"] = self.file_key

    def record_bytes(self, n):
        """Before n body bytes are written (negative: they could not be)."""
        if self.entry is None or n == 0:
            return
        path = self.split.path
        with STATE.lock:
            self.entry["bytes"] += n
            STATE.bytes_sent[path] = STATE.bytes_sent.get(path, 0) + n
            STATE.total_bytes += n
            if self.file_key:
                STATE.bytes_by_file[self.file_key] = STATE.bytes_by_file.get(self.file_key, 0) + n

    def send_body(self, data):
        """Writes body bytes, counted first (uncounted if the write fails)."""
        self.record_bytes(len(data))
        try:
            self.wfile.write(data)
        except OSError:
            self.record_bytes(-len(data))
            raise

    def send_simple(self, status, body=b"", headers=None, content_type="application/json"):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        self.record_status(status)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for k, v in (headers or {}).items():
            if v is not None:
                self.send_header(k, header_value(v))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            if not self.split.path.startswith("/_fake/"):
                STATE.throttle_wait(len(body))
            self.send_body(body)

    def send_error_json(self, e):
        headers = dict(e.headers)
        if e.code:
            headers["X-Error-Code"] = e.code
        headers["X-Error-Message"] = e.message
        self.send_simple(e.status, dict({"error": e.message}, **e.extra), headers)

    def send_content(self, content, headers, status=200):
        """A file body (resolve, CDN): Range, faults, throttle."""
        size = content.size
        rng = parse_range(self.headers.get("Range"), size)
        headers = dict(headers)
        headers["Accept-Ranges"] = "bytes"
        if rng == "bad":
            headers["Content-Range"] = "bytes */%d" % size
            self.send_simple(416, {"error": "Requested Range Not Satisfiable"}, headers)
            return
        if rng is None:
            start, length = 0, size
        else:
            start, length = rng[0], rng[1] - rng[0] + 1
            status = 206
            headers["Content-Range"] = "bytes %d-%d/%d" % (rng[0], rng[1], size)
        fault = None
        if self.command == "GET" and length > 0:
            fault = self.fault("body")
        declared = length
        if fault and fault["kind"] == "wrong_length":
            declared = length + 100
        self.record_status(status)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        for k, v in headers.items():
            if v is not None:
                self.send_header(k, header_value(v))
        self.send_header("Content-Length", str(declared))
        self.end_headers()
        if self.command == "HEAD":
            return
        limit = length
        if fault and fault["kind"] == "drop_after":
            limit = min(length, int(fault.get("bytes", 0)))
        corrupt_at = None
        if fault and fault["kind"] == "corrupt":
            corrupt_at = int(fault.get("offset", length // 2))
        bps = int(fault.get("bytes_per_second", 0)) if fault and fault["kind"] == "trickle" else 0
        stall_at = int(fault.get("after_bytes", 0)) if fault and fault["kind"] == "stall_body" else None
        sent = 0
        try:
            while sent < limit:
                n = min(CHUNK, limit - sent)
                if bps:
                    n = min(n, max(1, bps // 10))
                if stall_at is not None and sent < stall_at:
                    n = min(n, stall_at - sent)
                data = content.read(start + sent, n)
                if not data:
                    break
                if corrupt_at is not None and sent <= corrupt_at < sent + len(data):
                    b = bytearray(data)
                    b[corrupt_at - sent] ^= 0xFF
                    data = bytes(b)
                STATE.throttle_wait(len(data))
                t0 = time.monotonic()
                self.send_body(data)
                sent += len(data)
                if bps:
                    delay = len(data) / bps - (time.monotonic() - t0)
                    if delay > 0:
                        time.sleep(delay)
                if stall_at is not None and sent == stall_at:
                    self.wfile.flush()
                    time.sleep(float(fault.get("seconds", 10)))
                    stall_at = None
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        if fault and fault["kind"] in ("drop_after", "wrong_length"):
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # ---- dispatch -------------------------------------------------------
    def do_GET(self):
        self.handle_any()

    def do_HEAD(self):
        self.handle_any()

    def do_POST(self):
        self.handle_any()

    def do_PUT(self):
        self.handle_any()

    def do_DELETE(self):
        self.handle_any()

    def handle_any(self):
        self._body = None
        self.file_key = None
        self.split = urlsplit(self.path)
        self.query = parse_qs(self.split.query)
        self.segs = [unquote(s) for s in self.split.path.split("/")[1:]]
        self.record_start()
        try:
            if not self.split.path.startswith("/_fake/"):
                fault = self.fault("start")
                if fault and fault["kind"] == "stall":
                    time.sleep(float(fault.get("seconds", 10)))
                elif fault and fault["kind"] == "status":
                    self.read_body()
                    st = int(fault.get("status", 500))
                    headers = {}
                    if fault.get("retry_after") is not None:
                        headers["Retry-After"] = fault["retry_after"]
                    if fault.get("error_code"):
                        headers["X-Error-Code"] = fault["error_code"]
                    msg = fault.get("message", "fake hub: injected %d" % st)
                    headers["X-Error-Message"] = msg
                    self.send_simple(st, {"error": msg}, headers)
                    return
            self.route()
        except HubError as e:
            self.read_body()
            self.send_error_json(e)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # a bug in the fake: say so
            import traceback
            traceback.print_exc()
            try:
                self.send_simple(500, {"error": "fake hub internal error: %r" % e})
            except OSError:
                self.close_connection = True

    def route(self):
        s = self.segs
        m = self.command
        if s[0] == "_fake":
            return self.control()
        if s[0] == "_cdn" and len(s) == 2 and m in ("GET", "HEAD"):
            return self.cdn(s[1])
        if s[0] == "_lfs":
            return self.lfs_target()
        if s[:3] == ["api", "repos", "create"] and m == "POST":
            return self.create_repo()
        if s[:2] == ["api", "whoami-v2"]:
            return self.whoami()
        if len(s) >= 4 and s[0] == "api" and s[1] == "models":
            repo_id = s[2] + "/" + s[3]
            rest = s[4:]
            if not rest and m == "GET":
                return self.model_info(repo_id, "main")
            if rest and rest[0] == "revision" and len(rest) >= 2 and m == "GET":
                return self.model_info(repo_id, "/".join(rest[1:]))
            if rest and rest[0] == "tree" and len(rest) >= 2 and m == "GET":
                rev, path = self.split_rev(rest[1:])
                return self.tree(repo_id, rev, path)
            if rest and rest[0] == "refs" and m == "GET":
                return self.refs(repo_id)
            if rest and rest[0] == "preupload" and len(rest) >= 2 and m == "POST":
                return self.preupload(repo_id, "/".join(rest[1:]))
            if rest and rest[0] == "commit" and len(rest) >= 2 and m == "POST":
                return self.commit(repo_id, "/".join(rest[1:]))
            if rest and rest[0] == "branch" and len(rest) >= 2 and m == "POST":
                return self.create_branch(repo_id, "/".join(rest[1:]))
        if len(s) >= 6 and s[1].endswith(".git") and s[2:5] == ["info", "lfs", "objects"]:
            repo_id = s[0] + "/" + s[1][:-4]
            if s[5] == "batch" and m == "POST":
                return self.lfs_batch(repo_id)
            if s[5] == "verify" and m == "POST":
                return self.lfs_verify(repo_id)
        if len(s) >= 5 and s[2] == "resolve" and m in ("GET", "HEAD"):
            rev, path = self.split_rev(s[3:])
            return self.resolve(s[0] + "/" + s[1], rev, path)
        raise HubError(404, None, "Sorry, we can't find the page you are looking for.")

    @staticmethod
    def split_rev(segs):
        """['refs','pr','1','a','b'] -> ('refs/pr/1', 'a/b'); ['main','a'] -> ('main','a')."""
        if len(segs) >= 3 and segs[0] == "refs" and segs[1] in ("pr", "convert", "heads"):
            return "/".join(segs[:3]), "/".join(segs[3:])
        return segs[0], "/".join(segs[1:])

    # ---- access ---------------------------------------------------------
    def check_token(self):
        """The token if valid, None if absent; 401 if one is sent but unknown."""
        tok = self.token()
        if tok is None:
            return None
        if tok not in STATE.tokens:
            return False
        return tok

    def get_repo(self, repo_id, write=False, files=False):
        tok = self.check_token()
        repo = STATE.repos.get(repo_id)
        if tok is False:
            if repo is None or repo.private or write:
                raise HubError(401, "RepoNotFound", "Invalid credentials in Authorization header")
            raise HubError(401, None, "Invalid credentials in Authorization header")
        if repo is None:
            raise HubError(404 if tok or not write else 401, "RepoNotFound", "Repository not found")
        if repo.private and not tok:
            raise HubError(401, "RepoNotFound", "Repository not found")
        if write and not tok:
            raise HubError(401, None, "You must be authenticated to write to a repo")
        if files and repo.gated and not write and tok not in repo.granted:
            raise HubError(403, "GatedRepo",
                           "Access to model %s is restricted and you are not in the authorized list. "
                           "Visit https://huggingface.co/%s to ask for access." % (repo_id, repo_id))
        return repo

    def get_commit(self, repo, rev):
        c = repo.resolve(rev)
        if c is None:
            raise HubError(404, "RevisionNotFound", "Invalid rev id: %s" % rev)
        return c

    # ---- read side ------------------------------------------------------
    def model_info(self, repo_id, rev):
        repo = self.get_repo(repo_id)
        with STATE.lock:
            c = self.get_commit(repo, rev)
        blobs = self.query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = []
        for p in sorted(c.files):
            e = c.files[p]
            sib = {"rfilename": p}
            if blobs:
                sib["size"] = e.size
                sib["blobId"] = e.oid
                if e.lfs:
                    sib["lfs"] = {"sha256": e.sha256, "size": e.size, "pointerSize": len(e.pointer)}
            siblings.append(sib)
        owner = repo_id.split("/")[0]
        self.send_simple(200, {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id, "modelId": repo_id,
            "author": owner, "sha": c.id, "lastModified": DATE, "createdAt": DATE,
            "private": repo.private, "gated": repo.gated, "disabled": False, "downloads": 0,
            "likes": 0, "tags": [], "library_name": None, "siblings": siblings, "spaces": [],
            "usedStorage": sum(e.size for e in c.files.values())})

    def tree(self, repo_id, rev, path):
        repo = self.get_repo(repo_id)
        with STATE.lock:
            c = self.get_commit(repo, rev)
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        path = path.strip("/")
        prefix = path + "/" if path else ""
        if path and path in c.files:
            raise HubError(404, "EntryNotFound", "%s is a file, not a directory" % path)
        entries = {}
        for p, e in c.files.items():
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix):].split("/")
            for i in range(1, len(rest)):
                d = prefix + "/".join(rest[:i])
                if recursive or i == 1:
                    entries.setdefault(d, {"type": "directory", "oid": hashlib.sha1(
                        (c.id + d).encode()).hexdigest(), "size": 0, "path": d})
            if recursive or len(rest) == 1:
                entries[p] = e.tree_json(p, repo.xet)
        if path and not entries:
            raise HubError(404, "EntryNotFound", "%s does not exist on %s" % (path, rev))
        items = [entries[k] for k in sorted(entries)]
        # Cursor pagination like the Hub (Link: <...>; rel="next"), 1000 a page.
        start = int(self.query.get("cursor", ["0"])[0] or 0)
        page = items[start:start + ARGS.page_size]
        headers = {}
        if start + ARGS.page_size < len(items):
            q = "recursive=%s&cursor=%d" % ("true" if recursive else "false", start + ARGS.page_size)
            headers["Link"] = '<%s%s?%s>; rel="next"' % (self.base_url(), self.split.path, q)
        self.send_simple(200, page, headers)

    def refs(self, repo_id):
        repo = self.get_repo(repo_id)
        with STATE.lock:
            branches = [{"name": b, "ref": "refs/heads/" + b, "targetCommit": c}
                        for b, c in sorted(repo.branches.items()) if not b.startswith("refs/")]
            tags = [{"name": t, "ref": "refs/tags/" + t, "targetCommit": c}
                    for t, c in sorted(repo.tags.items()) if not t.startswith("refs/")]
            prs = [{"name": b, "ref": b, "targetCommit": c}
                   for b, c in sorted(repo.branches.items()) if b.startswith("refs/pr/")]
        body = {"branches": branches, "tags": tags, "converts": []}
        if self.query.get("include_prs", ["0"])[0] in ("1", "true"):
            body["pullRequests"] = prs
        self.send_simple(200, body)

    def resolve(self, repo_id, rev, path):
        self.file_key = repo_id + "/" + path
        repo = self.get_repo(repo_id, files=True)
        with STATE.lock:
            c = self.get_commit(repo, rev)
        e = c.files.get(path)
        if e is None:
            raise HubError(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": c.id})
        etag = e.etag()
        if self.fault("headers"):
            etag = hashlib.sha256(b"bad" + etag.encode()).hexdigest()
        headers = {"X-Repo-Commit": c.id, "ETag": '"%s"' % etag}
        if e.lfs:
            expires = int(time.time()) + 3600
            loc = "%s/_cdn/%s?expires=%d&repo=%s&path=%s" % (
                self.base_url("localhost"), e.sha256, expires, quote(repo_id, safe=""),
                quote(path, safe=""))
            headers.update({"X-Linked-Etag": '"%s"' % etag, "X-Linked-Size": e.size,
                            "Location": loc, "Accept-Ranges": "bytes"})
            if repo.xet:
                headers["X-Xet-Hash"] = xet_hash(e.sha256)
            self.send_simple(302, "Found. Redirecting to %s" % loc, headers, "text/plain; charset=utf-8")
            return
        content = STATE.objects[e.sha256]
        self.send_content(content, headers)

    def cdn(self, sha256):
        if self.query.get("repo") and self.query.get("path"):
            self.file_key = self.query["repo"][0] + "/" + self.query["path"][0]
        if self.headers.get("Authorization") is not None:
            self.send_simple(400, "<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism "
                             "allowed; only the X-Amz-Algorithm query parameter, Signature query "
                             "string parameter or the Authorization header should be specified"
                             "</Message></Error>", content_type="application/xml")
            return
        content = STATE.objects.get(sha256)
        if content is None:
            self.send_simple(404, "<Error><Code>NoSuchKey</Code></Error>", content_type="application/xml")
            return
        etag = sha256
        if self.fault("headers"):
            etag = hashlib.sha256(b"bad" + etag.encode()).hexdigest()
        self.send_content(content, {"ETag": '"%s"' % etag})

    # ---- upload side ----------------------------------------------------
    def whoami(self):
        tok = self.check_token()
        if not tok:
            raise HubError(401, None, "Invalid credentials in Authorization header")
        self.send_simple(200, {"type": "user", "name": "fake-user", "fullname": "Fake User",
                               "orgs": [], "auth": {"type": "access_token",
                                                    "accessToken": {"displayName": "fake",
                                                                    "role": "write"}}})

    def create_repo(self):
        body = self.json_body()
        tok = self.check_token()
        if not tok:
            raise HubError(401, None, "Invalid credentials in Authorization header")
        if body.get("type", "model") != "model":
            raise HubError(400, None, "fake hub: only model repos")
        name = body.get("name") or ""
        org = body.get("organization") or "fake-user"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or not re.fullmatch(
                r"[A-Za-z0-9][A-Za-z0-9._-]*", org):
            raise HubError(400, None, "Invalid repo name")
        repo_id = org + "/" + name
        url = "%s/%s" % (self.base_url(), repo_id)
        private = body.get("private")
        if private is None:
            private = body.get("visibility") == "private"
        with STATE.lock:
            if repo_id in STATE.repos:
                raise HubError(409, None, "You already created this model repo", extra={"url": url})
            repo = Repo(repo_id, {"private": bool(private), "lfs_threshold": ARGS.lfs_threshold})
            ga = hashlib.sha256(GITATTRIBUTES).hexdigest()
            STATE.objects.setdefault(ga, Content(data=GITATTRIBUTES))
            c = repo.add_commit(Commit(None, {".gitattributes": FileEntry(
                len(GITATTRIBUTES), ga, git_blob_sha1(GITATTRIBUTES), False)}, "initial commit"))
            repo.branches["main"] = c.id
            STATE.repos[repo_id] = repo
        self.send_simple(200, {"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})

    def preupload(self, repo_id, rev):
        body = self.json_body()
        repo = self.get_repo(repo_id, write=True)
        with STATE.lock:
            c = STATE.branch_head(repo, rev)  # what the commit will start from
        out = []
        for f in body.get("files", []):
            path = f.get("path", "")
            size = int(f.get("size", 0))
            mode = "lfs" if size >= repo.lfs_threshold else "regular"
            existing = c.files.get(path) if c else None
            oid = None
            if existing is not None:
                oid = existing.sha256 if existing.lfs else existing.git_sha1
            out.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        self.send_simple(200, {"files": out, "commitOid": c.id if c else None})

    def create_branch(self, repo_id, branch):
        """huggingface_hub's create_branch: {"startingPoint": rev} (default main); 409 if it exists."""
        body = self.json_body()
        repo = self.get_repo(repo_id, write=True)
        start = body.get("startingPoint") or "main"
        if (not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]*", branch) or branch.startswith("refs/") or
                ".." in branch or branch.endswith((".", "/", ".lock")) or "//" in branch or
                re.fullmatch(r"[0-9a-f]{40}", branch)):
            raise HubError(400, None, "Invalid reference for a branch: %s" % branch)
        with STATE.lock:
            if branch in repo.branches:
                raise HubError(409, None, "Reference already exists: refs/heads/%s" % branch)
            c = repo.resolve(start)
            if c is None:
                raise HubError(404, "RevisionNotFound", "Invalid rev id: %s" % start)
            repo.branches[branch] = c.id
        self.send_simple(200, {})

    def lfs_batch(self, repo_id):
        body = self.json_body()
        repo = self.get_repo(repo_id, write=body.get("operation") == "upload")
        transfers = body.get("transfers") or ["basic"]
        objects = []
        any_multipart = False
        for o in body.get("objects", []):
            oid = str(o.get("oid", ""))
            size = int(o.get("size", 0))
            entry = {"oid": oid, "size": size}
            if not re.fullmatch(r"[0-9a-f]{64}", oid):
                entry["error"] = {"code": 422, "message": "Invalid oid"}
                objects.append(entry)
                continue
            with STATE.lock:
                have = STATE.objects.get(oid)
            if body.get("operation") == "download":
                if have is None:
                    entry["error"] = {"code": 404, "message": "Object does not exist"}
                else:
                    entry["actions"] = {"download": {"href": "%s/_cdn/%s" % (
                        self.base_url("localhost"), oid), "expires_in": 3600}}
                objects.append(entry)
                continue
            if have is not None and have.size == size:
                objects.append(entry)  # already there: no actions
                continue
            upload_id = uuid.uuid4().hex
            with STATE.lock:
                STATE.uploads[upload_id] = {"oid": oid, "size": size, "parts": {}}
            cdn = self.base_url("localhost")
            verify = {"href": "%s/%s.git/info/lfs/objects/verify" % (self.base_url(), repo_id)}
            entry["authenticated"] = True
            if size >= STATE.multipart_threshold and "multipart" in transfers:
                any_multipart = True
                chunk = STATE.multipart_chunk
                nparts = max(1, -(-size // chunk))
                header = {"chunk_size": str(chunk)}
                for i in range(1, nparts + 1):
                    header[str(i)] = "%s/_lfs/%s/part/%d?upload_id=%s" % (cdn, oid, i, upload_id)
                entry["actions"] = {
                    "upload": {"href": "%s/_lfs/%s/complete?upload_id=%s" % (self.base_url(), oid, upload_id),
                               "header": header},
                    "verify": verify}
            else:
                entry["actions"] = {
                    "upload": {"href": "%s/_lfs/%s?upload_id=%s" % (cdn, oid, upload_id)},
                    "verify": verify}
            objects.append(entry)
        self.send_simple(200, {"transfer": "multipart" if any_multipart else "basic",
                               "objects": objects, "hash_algo": "sha256"},
                         content_type="application/vnd.git-lfs+json")

    def lfs_target(self):
        # /_lfs/{oid}?upload_id  (PUT, basic), /_lfs/{oid}/part/{n} (PUT), /_lfs/{oid}/complete (POST)
        s = self.segs
        oid = s[1] if len(s) > 1 else ""
        upload_id = self.query.get("upload_id", [""])[0]
        data = self.read_body()
        with STATE.lock:
            up = STATE.uploads.get(upload_id)
        if up is None or up["oid"] != oid:
            self.send_simple(403, "<Error><Code>AccessDenied</Code><Message>unknown upload</Message></Error>",
                             content_type="application/xml")
            return
        is_put = self.command == "PUT"
        if is_put and self.headers.get("Authorization") is not None:
            self.send_simple(400, "<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism "
                             "allowed</Message></Error>", content_type="application/xml")
            return
        if is_put and len(s) == 2:
            if len(data) != up["size"] or hashlib.sha256(data).hexdigest() != oid:
                raise HubError(400, None, "sha256 or size of the uploaded object does not match its oid")
            STATE.store(data)
            self.send_simple(200, b"", {"ETag": '"%s"' % hashlib.md5(data).hexdigest()})
            return
        if is_put and len(s) == 4 and s[2] == "part":
            n = int(s[3])
            with STATE.lock:
                up["parts"][n] = data
            self.send_simple(200, b"", {"ETag": '"%s"' % hashlib.md5(data).hexdigest()})
            return
        if self.command == "POST" and len(s) == 3 and s[2] == "complete":
            body = json.loads(data or b"{}")
            parts = body.get("parts", [])
            with STATE.lock:
                stored = dict(up["parts"])
            try:
                ordered = [stored[int(p["partNumber"])] for p in sorted(parts, key=lambda p: int(p["partNumber"]))]
                for p in parts:
                    want = '"%s"' % hashlib.md5(stored[int(p["partNumber"])]).hexdigest()
                    if p.get("etag", "").strip() not in (want, want.strip('"')):
                        raise KeyError("etag")
            except (KeyError, ValueError, TypeError):
                raise HubError(400, None, "Invalid multipart completion: unknown part or etag")
            whole = b"".join(ordered)
            if body.get("oid") != oid or len(whole) != up["size"] or hashlib.sha256(whole).hexdigest() != oid:
                raise HubError(400, None, "sha256 or size of the uploaded object does not match its oid")
            STATE.store(whole)
            with STATE.lock:
                STATE.uploads.pop(upload_id, None)
            self.send_simple(200, {"success": True})
            return
        raise HubError(404, None, "unknown LFS target")

    def lfs_verify(self, repo_id):
        body = self.json_body()
        self.get_repo(repo_id)
        with STATE.lock:
            have = STATE.objects.get(str(body.get("oid", "")))
        if have is None or have.size != int(body.get("size", -1)):
            raise HubError(404, None, "Object not found or wrong size")
        self.send_simple(200, {"success": True})

    def commit(self, repo_id, rev):
        data = self.read_body()
        repo = self.get_repo(repo_id, write=True)
        summary, parent = "commit", None
        adds, deletes, del_folders = {}, [], []
        for line in data.splitlines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key, value = item["key"], item["value"]
            except (ValueError, KeyError, TypeError):
                raise HubError(400, None, "Invalid NDJSON line")
            if key == "header":
                summary = value.get("summary", summary)
                parent = value.get("parentCommit")
            elif key == "file":
                content = value.get("content", "")
                raw = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                adds[value["path"]] = STATE.entry_for(repo, raw, lfs=False)
            elif key == "lfsFile":
                oid = value.get("oid", "")
                with STATE.lock:
                    have = STATE.objects.get(oid)
                if have is None:
                    raise HubError(422, None, "Your push was rejected because an LFS pointer pointed to a "
                                   "file that does not exist: %s" % value.get("path"))
                if value.get("size") is not None and int(value["size"]) != have.size:
                    raise HubError(422, None, "LFS file %s: size does not match" % value.get("path"))
                sha1 = git_blob_sha1(have.all())
                adds[value["path"]] = FileEntry(have.size, oid, sha1, True)
            elif key == "deletedFile":
                deletes.append(value["path"])
            elif key == "deletedFolder":
                del_folders.append(value["path"])
            else:
                raise HubError(400, None, "Unknown commit operation %s" % key)
        create_pr = self.query.get("create_pr", ["0"])[0] in ("1", "true")
        c, pr = STATE.commit(repo, rev, adds, deletes, del_folders, summary, parent, create_pr)
        body = {"success": True, "commitOid": c.id,
                "commitUrl": "%s/%s/commit/%s" % (self.base_url(), repo_id, c.id),
                "commitMessage": summary, "hookOutput": "", "pullRequestUrl": None}
        if pr is not None:
            body["pullRequestUrl"] = "%s/%s/discussions/%d" % (self.base_url(), repo_id, pr)
        self.send_simple(200, body)

    # ---- control --------------------------------------------------------
    def control(self):
        what = self.segs[1] if len(self.segs) > 1 else ""
        m = self.command
        if what == "faults" and m == "POST":
            rules = self.json_body().get("rules", [])
            with STATE.lock:
                for r in rules:
                    if r.get("kind") == "stall" and "after_bytes" in r:
                        r["kind"] = "stall_body"
                    STATE.rules.append(dict(r))
            return self.send_simple(200, {"rules": len(STATE.rules)})
        if what == "faults" and m == "DELETE":
            with STATE.lock:
                STATE.rules = []
            return self.send_simple(200, {"rules": 0})
        if what == "faults" and m == "GET":
            with STATE.lock:
                return self.send_simple(200, {"rules": STATE.rules})
        if what == "throttle" and m == "POST":
            bps = int(self.json_body().get("bytes_per_second", 0))
            with STATE.lock:
                STATE.throttle_bps = bps
                STATE.throttle_next = 0.0
            return self.send_simple(200, {"bytes_per_second": bps})
        if what == "stats" and m == "GET":
            with STATE.lock:
                body = {"bytes_sent": dict(STATE.bytes_sent), "bytes_by_file": dict(STATE.bytes_by_file),
                        "total_bytes": STATE.total_bytes,
                        "requests": STATE.requests, "log": [dict(e) for e in STATE.log]}
            return self.send_simple(200, body)
        if what == "stats" and m == "DELETE":
            with STATE.lock:
                STATE.reset_stats()
            return self.send_simple(200, {})
        if what == "commit" and m == "POST":
            body = self.json_body()
            repo = STATE.repos.get(body.get("repo", ""))
            if repo is None:
                raise HubError(404, "RepoNotFound", "Repository not found")
            adds = {p: STATE.entry_for(repo, base64.b64decode(b64))
                    for p, b64 in body.get("files", {}).items()}
            c, _ = STATE.commit(repo, body.get("branch", "main"), adds, body.get("delete", []),
                                summary=body.get("summary", "fake commit"), create_branch=True)
            return self.send_simple(200, {"commit": c.id})
        if what == "tag" and m == "POST":
            body = self.json_body()
            repo = STATE.repos.get(body.get("repo", ""))
            if repo is None:
                raise HubError(404, "RepoNotFound", "Repository not found")
            with STATE.lock:
                c = repo.resolve(body.get("target", "main"))
                if c is None:
                    raise HubError(404, "RevisionNotFound", "Invalid rev id")
                repo.tags[body["tag"]] = c.id
            return self.send_simple(200, {"commit": c.id})
        raise HubError(404, None, "unknown control endpoint")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main():
    global STATE, ARGS
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", required=True, help="DIR/<owner>/<name>/ are repos")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file")
    p.add_argument("--token", action="append", help="a valid token (repeatable)")
    p.add_argument("--lfs-threshold", type=int, default=1024, help="for repos created by uploads")
    p.add_argument("--multipart-threshold", type=int, default=5 * 1024 * 1024)
    p.add_argument("--multipart-chunk-size", type=int, default=5 * 1024 * 1024)
    p.add_argument("--page-size", type=int, default=1000, help="tree listing page size")
    p.add_argument("--quiet", action="store_true", help="no request log on stderr")
    ARGS = p.parse_args()
    STATE = State(ARGS)

    def on_term(signum, frame):
        sys.stderr.flush()
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    server = Server(("127.0.0.1", ARGS.port), Handler)
    port = server.server_address[1]
    if ARGS.port_file:
        tmp = ARGS.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % port)
        os.rename(tmp, ARGS.port_file)
    print("fake hub listening on http://127.0.0.1:%d" % port, flush=True)
    sys.stderr.write("fake hub listening on http://127.0.0.1:%d (%d repos)\n" % (port, len(STATE.repos)))
    sys.stderr.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
