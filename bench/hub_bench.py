#!/usr/bin/env python3
"""The Hugging Face Hub as a source, measured against the throttled fake Hub (issue 8).

    python3 bench/hub_bench.py --build build [--size-gb 0.3 | --input X.safetensors]
                               [--limits 50M,200M] [--out bench/results/hub.md]

A benchmark, not a test. A model (default: a synthetic Llama-shaped BF16 safetensors from
bench/gen_llm.py; --input takes any safetensors, e.g. $BIGSMALL_CORPUS) is compressed with
`bigsmall compress DIR` into a .bs repo that tests/hub/fake_hub.py serves as `bench/llm-bs`. The fake
throttles every body byte it sends to one limit (POST /_fake/throttle). For each limit, side by side
in one run:

  1. full download: `bigsmall decompress bench/llm-bs -o OUT` (HF_ENDPOINT at the fake, an empty
     HF_HUB_CACHE) against the throttle's ideal (bytes the fake sent / limit); the download part is
     the wall time less a local `bigsmall decompress` of the same repo, measured once. When
     huggingface_hub is importable, its snapshot_download is timed too (a reference client).
  2. streaming: bigsmalld (HF_ENDPOINT at the fake, an empty cache) and
     `bigsmall-client stream bench/llm-bs --json`: the first layer's arrival (stdout line time
     since the client was started) against the stream's last layer and against the moment the
     daemon's background fill has every .bs blob complete in the cache.

Nothing here is invented: a step that cannot run (a binary or the fake missing, a command failing)
is reported as such in the table and in the results file, with its error.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time

WORK = [None]  # the cwd of every command (set in main)
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "hub"))
from fake_hub_process import FAKE_HUB, FakeHubProcess, FakeHubStartError  # noqa: E402
ROOT = os.path.dirname(HERE)
REPO = "hubbench/llm-bs"  # no such local path in the cwd (work dir): a local path would win


def parse_size(text: str) -> int:
    text = text.strip().upper()
    mult = 1
    for suffix, m in (("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if text.endswith(suffix):
            text, mult = text[:-1], m
            break
    return int(float(text) * mult)


def human_rate(n: float) -> str:
    return f"{n / 1e6:.0f} MB/s" if n else "none"


class Failed(Exception):
    pass


def run(cmd, env=None, timeout=900, what=None) -> tuple[float, str]:
    t0 = time.monotonic()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=WORK[0])
    dt = time.monotonic() - t0
    if p.returncode != 0:
        raise Failed(f"{what or cmd[0]} exited {p.returncode}: {(p.stderr or p.stdout).strip()[-600:]}")
    return dt, p.stdout


class FakeHub(FakeHubProcess):
    """tests/hub/fake_hub_process.py's runner, with what the bench reads."""

    def __init__(self, data: str, work: str):
        if not os.path.exists(FAKE_HUB):
            raise Failed(f"{FAKE_HUB} does not exist (the fake Hub has not landed)")
        try:
            super().__init__(data, work, quiet=False)
        except FakeHubStartError as e:
            raise Failed(str(e)) from None

    def total_bytes(self) -> int:
        return int(self.stats()["total_bytes"])

    def repo_info(self) -> dict:
        return self.control("GET", f"/api/models/{REPO}/revision/main?blobs=true")


def hub_env(endpoint: str, cache: str) -> dict:
    env = dict(os.environ)
    for k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_HOME", "HF_TOKEN_PATH"):
        env.pop(k, None)
    env["HF_ENDPOINT"] = endpoint
    env["HF_HUB_CACHE"] = cache
    env["HF_HOME"] = os.path.join(os.path.dirname(cache), "hf-home")  # no token file from here
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    return env


def fresh(path: str) -> str:
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def make_repo(args, bins, work: str, data: str) -> dict:
    src = fresh(os.path.join(work, "src"))
    st = os.path.join(src, "model.safetensors")
    if args.input:
        shutil.copyfile(os.path.abspath(args.input), st)
        origin = f"`{args.input}`"
    else:
        gen = os.path.join(work, f"llm-{args.size_gb}g.safetensors")
        if not os.path.exists(gen):
            run([sys.executable, os.path.join(HERE, "gen_llm.py"), "--out", gen, "--size-gb",
                 str(args.size_gb)], what="gen_llm.py")
        shutil.copyfile(gen, st)
        origin = (f"synthetic Llama-shaped BF16 from `bench/gen_llm.py --size-gb {args.size_gb}` "
                  "(i.i.d. Gaussian weights: the ratio means nothing for real models)")
    with open(os.path.join(src, "config.json"), "w") as f:
        json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, f)
    owner_dir = os.path.join(data, REPO.split("/")[0])
    os.makedirs(owner_dir, exist_ok=True)
    repo_dir = os.path.join(owner_dir, REPO.split("/")[1])
    shutil.rmtree(repo_dir, ignore_errors=True)
    t, _ = run([bins["bigsmall"], "compress", src, "-o", repo_dir], what="bigsmall compress")
    files = []
    for base, _, names in os.walk(repo_dir):
        for n in names:
            p = os.path.join(base, n)
            files.append((os.path.relpath(p, repo_dir), os.path.getsize(p)))
    return {"origin": origin, "input_bytes": os.path.getsize(st), "repo_dir": repo_dir,
            "files": sorted(files), "repo_bytes": sum(s for _, s in files), "compress_s": t}


def local_decompress(bins, repo_dir: str, work: str, repeat: int) -> float:
    out = os.path.join(work, "out-local")
    times = []
    for _ in range(repeat):
        shutil.rmtree(out, ignore_errors=True)
        t, _ = run([bins["bigsmall"], "decompress", repo_dir, "-o", out],
                   what="bigsmall decompress (local)")
        times.append(t)
    shutil.rmtree(out, ignore_errors=True)
    return sorted(times)[len(times) // 2]


def cli_download(bins, hub: FakeHub, work: str, tag: str) -> dict:
    cache = fresh(os.path.join(work, f"cache-cli-{tag}"))
    out = os.path.join(work, f"out-cli-{tag}")
    shutil.rmtree(out, ignore_errors=True)
    hub.reset_stats()
    t, _ = run([bins["bigsmall"], "decompress", REPO, "-o", out], env=hub_env(hub.endpoint, cache),
               what="bigsmall decompress owner/repo")
    sent = hub.total_bytes()
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    return {"wall_s": t, "sent": sent}


def hf_download(hub: FakeHub, work: str, tag: str) -> dict:
    cache = fresh(os.path.join(work, f"cache-hf-{tag}"))
    hub.reset_stats()
    code = ("import sys; from huggingface_hub import snapshot_download; "
            f"snapshot_download({REPO!r}, cache_dir={cache!r})")
    t, _ = run([sys.executable, "-c", code], env=hub_env(hub.endpoint, cache),
               what="huggingface_hub snapshot_download")
    sent = hub.total_bytes()
    shutil.rmtree(cache, ignore_errors=True)
    return {"wall_s": t, "sent": sent}


def wait_socket(path: str, proc, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Failed(f"bigsmalld exited {proc.returncode} before listening")
        if os.path.exists(path):
            return
        time.sleep(0.02)
    raise Failed("bigsmalld did not create its socket in 30 s")


def daemon_stream(bins, hub: FakeHub, work: str, tag: str, lfs_blobs: list[str]) -> dict:
    cache = fresh(os.path.join(work, f"cache-d-{tag}"))
    sock = os.path.join(work, f"d-{tag}.sock")
    shm = fresh(os.path.join("/dev/shm", f"bigsmall-hubbench-{os.getpid()}-{tag}"))
    if os.path.exists(sock):
        os.unlink(sock)
    env = hub_env(hub.endpoint, cache)
    log_path = os.path.join(work, f"bigsmalld-{tag}.log")
    log = open(log_path, "w")
    daemon = subprocess.Popen([bins["bigsmalld"], "--socket", sock, "--shm-dir", shm,
                               "--cache-budget", "4G", "--log-level", "warn", "--model-dir", work],
                              env=env, stdout=log, stderr=log, cwd=work)
    blob_dir = os.path.join(cache, "models--" + REPO.replace("/", "--"), "blobs")
    result: dict = {}
    try:
        wait_socket(sock, daemon)
        hub.reset_stats()
        fill_done: dict = {}
        stop = threading.Event()
        t0 = time.monotonic()

        def poll_fill():
            while not stop.is_set():
                if lfs_blobs and all(os.path.exists(os.path.join(blob_dir, b)) for b in lfs_blobs):
                    fill_done["t"] = time.monotonic() - t0
                    return
                time.sleep(0.01)

        poller = threading.Thread(target=poll_fill, daemon=True)
        poller.start()
        client = subprocess.Popen([bins["bigsmall-client"], "--socket", sock, "--timeout", "120",
                                   "--idle-timeout", "300", "stream", REPO, "--json"],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  cwd=work)
        first = None
        last = None
        layers = 0
        summary = None
        for line in client.stdout:
            now = time.monotonic() - t0
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "layer" in obj:
                layers += 1
                if first is None:
                    first = now
                last = now
            elif "summary" in obj:
                summary = obj["summary"]
            elif "error" in obj:
                raise Failed(f"bigsmall-client stream: {obj['error']}")
        rc = client.wait()
        err = client.stderr.read()
        if rc != 0 or first is None:
            raise Failed(f"bigsmall-client stream exited {rc}: {err.strip()[-600:]}")
        poller.join(timeout=600)
        stop.set()
        stats = hub.control("GET", "/_fake/stats")
        with open(os.path.join(work, f"daemon-fake-stats-{tag}.json"), "w") as f:
            json.dump(stats, f, indent=1)  # the requests the daemon made, for a closer look
        ranged = sorted(e.get("bytes", 0) for e in stats.get("log", []) if e.get("range"))
        result = {"first_s": first, "last_s": last, "layers": layers,
                  "fill_s": fill_done.get("t"), "sent": int(stats["total_bytes"]),
                  "requests": int(stats.get("requests", 0)),
                  "range_median": ranged[len(ranged) // 2] if ranged else None,
                  "client_first_layer_ms": (summary or {}).get("first_layer_ms")}
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log.close()
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    return result


def machine() -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} vCPUs ({cpu}), {mem}, {platform.system()} {platform.release()}"


def median_of(runs: list[dict]) -> dict:
    """Each numeric field's median over the runs (None where a run lacks it)."""
    out = {"runs": len(runs)}
    for k in runs[0]:
        values = [r.get(k) for r in runs]
        nums = sorted(v for v in values if isinstance(v, (int, float)))
        out[k] = nums[len(nums) // 2] if len(nums) == len(values) and nums else None
    return out


def fmt(x, spec="{:.2f}"):
    return "n/a" if x is None else spec.format(x)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"), help="build dir with cli/, daemon/, client/")
    ap.add_argument("--input", help="a safetensors file (e.g. $BIGSMALL_CORPUS) instead of a synthetic one")
    ap.add_argument("--size-gb", type=float, default=0.3, help="synthetic model size (default 0.3 GB)")
    ap.add_argument("--limits", default="50M,200M,0",
                    help="fake Hub throttles, bytes/s; 0: none, the fake's and this machine's ceiling "
                         "(default 50M,200M,0)")
    ap.add_argument("--work", default="/tmp/bigsmall-hub-bench")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "hub.md"))
    ap.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the table has "
                    "each figure's median (default 3)")
    ap.add_argument("--append", action="store_true",
                    help="add this run's section to --out instead of replacing the file")
    ap.add_argument("--no-hf-reference", action="store_true", help="skip huggingface_hub's snapshot_download")
    args = ap.parse_args()

    args.build = os.path.abspath(args.build)
    bins = {"bigsmall": os.path.join(args.build, "cli", "bigsmall"),
            "bigsmalld": os.path.join(args.build, "daemon", "bigsmalld"),
            "bigsmall-client": os.path.join(args.build, "client", "bigsmall-client")}
    for name, path in bins.items():
        if not os.access(path, os.X_OK):
            print(f"hub_bench: {path} missing (build {name})", file=sys.stderr)
            return 1
    limits = [parse_size(x) for x in args.limits.split(",") if x.strip()]
    args.work = os.path.abspath(args.work)
    os.makedirs(args.work, exist_ok=True)
    WORK[0] = args.work
    data = fresh(os.path.join(args.work, "hub-data"))
    notes: list[str] = []
    load_before = os.getloadavg()[0]
    model = make_repo(args, bins, args.work, data)
    t_local = local_decompress(bins, model["repo_dir"], args.work, args.repeat)
    hub = FakeHub(data, args.work)
    rows = []
    try:
        info = hub.repo_info()
        lfs_blobs = [s["lfs"]["sha256"] for s in info.get("siblings", [])
                     if s.get("rfilename", "").endswith(".bs") and s.get("lfs")]
        have_hf = False
        if not args.no_hf_reference:
            try:
                import huggingface_hub  # noqa: F401
                have_hf = True
            except ImportError:
                notes.append("huggingface_hub is not importable: no reference row.")
        for limit in limits:
            tag = str(limit)
            hub.throttle(limit)
            row = {"limit": limit}
            for key, fn in (("cli", lambda: cli_download(bins, hub, args.work, tag)),
                            ("hf", (lambda: hf_download(hub, args.work, tag)) if have_hf else None),
                            ("daemon", lambda: daemon_stream(bins, hub, args.work, tag, lfs_blobs))):
                if fn is None:
                    continue
                runs = []
                try:
                    for _ in range(args.repeat):
                        runs.append(fn())
                    row[key] = median_of(runs)
                except (Failed, subprocess.TimeoutExpired, OSError, KeyError, ValueError) as e:
                    row[key] = {"error": str(e)}
                    notes.append(f"{human_rate(limit)} {key}: {e}")
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        hub.stop()
    load_after = os.getloadavg()[0]

    repo_bytes = model["repo_bytes"]

    def pct(rate, limit):
        return f", {100 * rate / limit:.0f} % of limit" if limit else ""

    lines = []
    lines.append("| limit | ideal s | `bigsmall decompress owner/repo` s | its download part s (MB/s) "
                 "| huggingface_hub snapshot_download s (MB/s) | bigsmalld first layer s (of which "
                 "OpenModel s) | last layer s | cache fill complete s | first layer / CLI download "
                 "part | first layer / fill | bytes the daemon fetched |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        limit = row["limit"]
        cli = row.get("cli", {})
        hf = row.get("hf")
        d = row.get("daemon", {})
        dl = None
        if "error" in cli or not cli:
            cli_cells, ideal = ["failed (see notes)", ""], None
        else:
            ideal = cli["sent"] / limit if limit else None
            dl = max(cli["wall_s"] - t_local, 1e-9)
            rate = repo_bytes / dl
            cli_cells = [f"{cli['wall_s']:.2f}", f"{dl:.2f} ({rate / 1e6:.1f} MB/s{pct(rate, limit)})"]
        if hf is None:
            hf_cell = "not run"
        elif "error" in hf:
            hf_cell = "failed (see notes)"
        else:
            rate = repo_bytes / hf["wall_s"]
            hf_cell = f"{hf['wall_s']:.2f} ({rate / 1e6:.1f} MB/s{pct(rate, limit)})"
        if "error" in d or not d:
            d_cells = ["failed (see notes)", "", "", "", "", ""]
        else:
            stream_ms = d.get("client_first_layer_ms")
            open_s = d["first_s"] - stream_ms / 1000 if isinstance(stream_ms, (int, float)) else None
            full = d.get("fill_s")
            ratio = f"{100 * d['first_s'] / full:.1f} %" if full else "n/a (fill not seen)"
            vs_cli = f"{100 * d['first_s'] / dl:.1f} %" if dl else "n/a"
            d_cells = [f"{d['first_s']:.2f} ({fmt(open_s)})", f"{d['last_s']:.2f} ({d['layers']} layers)",
                       fmt(full), vs_cli, ratio,
                       f"{d['sent'] / 1e6:.1f} MB = {d['sent'] / repo_bytes:.3f}x the repo, in "
                       f"{d['requests']} requests (ranges of "
                       f"{fmt(d.get('range_median') and d['range_median'] / 2**20, '{:.2f}')} MiB)"]
        lines.append(f"| {human_rate(limit)} | {fmt(ideal)} | " + " | ".join(cli_cells) + f" | {hf_cell} | "
                     + " | ".join(d_cells) + " |")
    table = "\n".join(lines)
    print(table)

    files = ", ".join(f"`{p}` {s / 1e6:.1f} MB" for p, s in model["files"])
    cmd = " ".join(["python3", "bench/hub_bench.py"] + sys.argv[1:])
    text = f"""# The Hub as a source: fetch throughput and time to first layer (fake Hub, throttled)

Written by `{cmd}` (bench/hub_bench.py) on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.

**Model:** {model['origin']}, {model['input_bytes'] / 1e6:.1f} MB, compressed with
`bigsmall compress DIR -o REPO` in {model['compress_s']:.1f} s into the repo `{REPO}`:
{files} ({repo_bytes / 1e6:.1f} MB in all). Served by tests/hub/fake_hub.py on 127.0.0.1 with a
throttle over all body bytes it sends (`POST /_fake/throttle`); every client starts with an empty cache.

**Machine:** {machine()}; 1-minute load average {load_before:.2f} before, {load_after:.2f} after
(other jobs share this box: treat the figures as rough). Every figure is the median of
{args.repeat} runs (each run with a fresh cache and a freshly started daemon).

- *ideal*: the bytes the fake sent during the CLI run (API answers, redirects and bodies) / limit
  ("none": no throttle, the ceiling of the fake Hub, a Python server, on this machine).
- *download part*: the CLI's wall time less a local `bigsmall decompress` of the same repo
  ({t_local:.2f} s, median of {args.repeat}); MB/s is the repo's bytes over it. huggingface_hub's snapshot_download (a
  reference client, its own process start included) only downloads.
- *first layer*: the time from starting `bigsmall-client stream {REPO} --json` (the daemon already
  listening, its cache empty) to the first layer line on its stdout; *OpenModel*: that time less the
  client's own first_layer_ms (counted from its Stream call): resolve, .bs headers and indexes by
  range requests. *last layer*: the stream's end. *cache fill complete*: every .bs blob in the
  daemon's huggingface_hub cache (its background fill, default `--hub-concurrency 2`, no
  bandwidth cap of its own), polled every 10 ms. *first layer / CLI download part* and *first
  layer / fill*: the share of a full download (the CLI's, the daemon's own fill) that the first
  layer waited for. *bytes the daemon fetched*: all the fake sent during the
  daemon's run (the stream's ranged GETs and the background fill both count), the requests it
  made, and the median size of its ranged GETs (of the fake's log: its last 1000 requests).
- The fake's throttle writes each 64 KiB chunk at the start of its time slot (since 8e5ddfd): one
  curl stream reaches 97-99 % of the limit against it, so the rest of a client's gap to the limit
  is its own (resolve, manifest, process start, request overheads).

{table}
"""
    if notes:
        text += "\n## What did not run\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    if args.append and os.path.exists(args.out):
        text = "\n" + text.replace("# The Hub as a source:", "## Another run:", 1)
    with open(args.out, "a" if args.append else "w") as f:
        f.write(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
