#!/usr/bin/env python3
"""Load time and peak RSS of the Python package against safetensors, in one run.

    python3 bench/python_bench.py                     # MiniLM (real) + a 0.53 GB synthetic LLM
    python3 bench/python_bench.py --reps 5 --llm-layers 48 --out bench/results/python.md

Cases, each repetition of each in a FRESH process that has loaded nothing yet: a new interpreter
(python3 -c) that imports torch, safetensors and bigsmall, whose RSS after the imports is the
baseline (default); --isolation forkserver forks each run from a fork server that imported them
once (quicker; its children refault ~8 MB of the libraries' code pages, counted in their peaks):

  safetensors.load_file        the uncompressed .safetensors (safetensors.torch.load_file)
  from_pretrained              bigsmall.from_pretrained(.bs, daemon=False): decoded in process
  from_pretrained, daemon      the same through a private bigsmalld (zero-copy views of its shared
                               memory); "cold": the daemon's first client (it decodes), "warm": a
                               second client of the same daemon (its cache holds the layers)
  StreamingLoader              load_non_layer_tensors() then iter_layers(), nothing kept (each
                               layer dropped before the next): in process, and daemon cold / warm

Every case touches one byte of every 4 KiB page of every tensor it is given (mapped pages count
in RSS only once touched), then reports: load time (from the call to the last page touched) and
peak RSS = VmHWM at the end minus VmRSS at the start, the high-water mark having been reset to the
start's RSS (`echo 5 > /proc/self/clear_refs`; where that is refused, VmHWM minus the baseline's
VmHWM). RssAnon / RssFile / RssShmem at the end (the loaded dict still held) say where the pages
are: the daemon's pages are shared (RssShmem), counted once for every client mapping them.
Medians over --reps; the page cache is warm (every input is read once before the first run).

Models: MiniLM (sentence-transformers/all-MiniLM-L6-v2 FP32, the corpus: real weights), and a
Llama-shaped SYNTHETIC BF16 model from bench/gen_llm.py (i.i.d. Gaussian weights: a scale and
memory test only, its compression ratio says nothing about real models). Inputs are made once
and kept in --work (default ~/.cache/bigsmall/bench/python).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MIB = 1 << 20

# ------------------------------------------------------------------------------------ the child

PRELOAD = ["torch", "safetensors.torch", "bigsmall"]


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[k] = int(v.split()[0]) * 1024
    return out


def _touch(tensors: dict, acc: list) -> None:
    """One byte of every 4 KiB page of each tensor (as bytes, whatever the dtype)."""
    import torch  # noqa: PLC0415

    for t in tensors.values():
        b = t.reshape(-1).view(torch.uint8)
        acc[0] += int(b[::4096].sum())
        acc[1] += b.numel()


def measure(case: str, path: str, sock: str) -> dict:
    """One run of one case, in a process that has imported PRELOAD and loaded nothing yet."""
    import bigsmall  # noqa: PLC0415
    import safetensors.torch  # noqa: PLC0415
    import torch  # noqa: PLC0415

    torch.set_num_threads(1)
    base = _status()
    try:  # reset the high-water mark to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    start = _status()
    acc = [0, 0]
    daemon = sock or False
    t0 = time.perf_counter()
    if case == "safetensors":
        held = safetensors.torch.load_file(path)
        _touch(held, acc)
    elif case == "from_pretrained":
        held = bigsmall.from_pretrained(path, device="cpu", daemon=daemon)
        _touch(held, acc)
    elif case == "streaming":
        with bigsmall.StreamingLoader(path, device="cpu", daemon=daemon) as loader:
            held = loader.load_non_layer_tensors()
            _touch(held, acc)
            for _, tensors in loader.iter_layers():
                _touch(tensors, acc)
                del tensors
    else:
        raise ValueError(f"unknown case {case}")
    seconds = time.perf_counter() - t0
    end = _status()
    peak = end["VmHWM"] - (start["VmRSS"] if reset else base["VmHWM"])
    return {"seconds": seconds, "peak": peak, "bytes": acc[1], "reset": reset,
            "anon": end["RssAnon"] - start["RssAnon"], "file": end["RssFile"] - start["RssFile"],
            "shmem": end["RssShmem"] - start["RssShmem"], "baseline_rss": start["VmRSS"]}


def _forked_entry(conn, case: str, path: str, sock: str) -> None:
    try:
        conn.send(measure(case, path, sock))
    except BaseException as e:  # noqa: BLE001 -- reported to the parent as this case's failure
        conn.send({"error": f"{type(e).__name__}: {e}"})
    finally:
        conn.close()


class Runner:
    """Runs each measurement in a fresh process.

    "spawn" (default): a new interpreter per run (python3 -c), importing PRELOAD itself.
    "forkserver": multiprocessing's fork server, which imported PRELOAD once, forks a new child
    for every run (nothing loaded in it before the run; the imports are not paid per run, but
    the child refaults the libraries' code pages it uses: ~8 MB more in every peak).
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        if mode == "forkserver":
            import multiprocessing as mp  # noqa: PLC0415

            self.ctx = mp.get_context("forkserver")
            self.ctx.set_forkserver_preload(PRELOAD)

    def __call__(self, case: str, path: Path, sock: str) -> dict:
        if self.mode == "forkserver":
            result = self._forked(case, str(path), sock)
        else:
            result = self._spawned(case, str(path), sock)
        if "error" in result:
            print(f"[python_bench] {case} {path} ({sock or 'in process'}) FAILED: {result['error']}",
                  file=sys.stderr, flush=True)
        return result

    def _forked(self, case: str, path: str, sock: str) -> dict:
        recv, send = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_forked_entry, args=(send, case, path, sock))
        proc.start()
        send.close()
        try:
            if not recv.poll(600):
                proc.kill()
                return {"error": "timed out after 600 s"}
            result = recv.recv()
        except EOFError:
            result = None
        proc.join(60)
        if result is None:
            return {"error": f"the child died (exit status {proc.exitcode})"}
        return result

    def _spawned(self, case: str, path: str, sock: str) -> dict:
        code = (f"import sys, json; sys.path.insert(0, {str(HERE)!r}); "
                + "".join(f"import {m}; " for m in PRELOAD)
                + "import python_bench; "
                + f"print(json.dumps(python_bench.measure({case!r}, {path!r}, {sock!r})))")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=600)
        if proc.returncode != 0:
            return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
        return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ inputs

def warm(path: Path) -> None:
    """Reads every file under `path` once (the page cache is warm for every case)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(16 * MIB):
                pass


def prepare(work: Path, args) -> list[dict]:
    import bigsmall  # noqa: PLC0415 (the parent needs it only to compress and serve)

    work.mkdir(parents=True, exist_ok=True)
    cache = Path(os.environ.get("BIGSMALL_CACHE", Path.home() / ".cache/bigsmall/corpus"))
    minilm = Path(os.environ.get("BIGSMALL_CORPUS_DIR", cache / "minilm-dir")) / "model.safetensors"
    models = []
    if minilm.exists():
        models.append({"name": "MiniLM-L6 FP32 (real: all-MiniLM-L6-v2)", "short": "minilm",
                       "st": minilm})
    else:
        print(f"[python_bench] MiniLM not found at {minilm} (bench/corpus.py makes it): skipped",
              file=sys.stderr)
    if args.llm_layers > 0:
        shape = ["--layers", str(args.llm_layers), "--hidden", str(args.llm_hidden),
                 "--intermediate", str(args.llm_intermediate), "--dtype", "bf16"]
        tag = f"llm-l{args.llm_layers}-h{args.llm_hidden}-i{args.llm_intermediate}-bf16"
        st = work / f"{tag}.safetensors"
        if not st.exists():
            subprocess.run([sys.executable, str(HERE / "gen_llm.py"), "--out", str(st), "--jobs",
                            str(os.cpu_count() or 1), *shape], check=True)
        models.append({"name": f"Llama-shaped BF16, SYNTHETIC (gen_llm.py {' '.join(shape)})",
                       "short": "synthetic-llm", "st": st, "synthetic": True})
    for m in models:
        bs = work / (m["short"] + ".bs")
        stamp = work / (m["short"] + ".bs.source")
        st = m["st"].stat()
        source = f"{m['st']} {st.st_size} {st.st_mtime_ns} {bigsmall.__version__}"
        if not bs.exists() or not stamp.exists() or stamp.read_text() != source:
            if bs.is_dir():
                shutil.rmtree(bs)
            elif bs.exists():
                bs.unlink()
            info = bigsmall.compress(str(m["st"]), str(bs), mode="balanced")
            stamp.write_text(source)
            print(f"[python_bench] compressed {m['st']} -> {bs}: ratio {info.get('ratio')}", flush=True)
        m["bs"] = bs
        desc = bigsmall._core.LocalModel.open(str(bs)).describe()
        m["layers"] = len(desc["layers"])
        m["largest_layer"] = max((int(g["size"]) for g in desc["layers"]), default=0)
        m["non_layer"] = int(desc["non_layer"]["size"]) if desc.get("non_layer") else 0
        m["st_bytes"] = m["st"].stat().st_size
        m["bs_bytes"] = (sum(f.stat().st_size for f in bs.rglob("*.bs")) if bs.is_dir()
                         else bs.stat().st_size)
        warm(m["st"])
        warm(bs)
    return models


# ------------------------------------------------------------------------------------ running

CASES = [
    ("safetensors.load_file", "safetensors", None),
    ("from_pretrained, in process", "from_pretrained", None),
    ("from_pretrained, daemon cold", "from_pretrained", "cold"),
    ("from_pretrained, daemon warm", "from_pretrained", "warm"),
    ("StreamingLoader, in process", "streaming", None),
    ("StreamingLoader, daemon cold", "streaming", "cold"),
    ("StreamingLoader, daemon warm", "streaming", "warm"),
]


def shm_workdir() -> Path:
    """The daemon's socket and shm directory on /dev/shm (as the daemon's default shm dir is)."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="bigsmall-pybench-", dir=base))


def bench_model(m: dict, reps: int, run_child: Runner) -> dict:
    from bigsmall._daemon_proc import DaemonProcess  # noqa: PLC0415

    runs: dict[str, list[dict]] = {label: [] for label, _, _ in CASES}
    for rep in range(reps):
        for label, case, daemon in CASES:
            if daemon == "warm":
                continue  # run right after its cold case, on the same daemon
            path = m["st"] if case == "safetensors" else m["bs"]
            if daemon is None:
                runs[label].append(run_child(case, path, ""))
                continue
            workdir = shm_workdir()
            try:
                with DaemonProcess(model_dirs=[m["bs"].parent], workdir=workdir,
                                   log_level="warn") as proc:
                    runs[label].append(run_child(case, path, proc.socket))
                    warm_label = label.replace("cold", "warm")
                    runs[warm_label].append(run_child(case, path, proc.socket))
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
        print(f"[python_bench] {m['short']}: repetition {rep + 1}/{reps} done", flush=True)
    out = {}
    for label, rs in runs.items():
        errors = [r["error"] for r in rs if "error" in r]
        if errors:
            out[label] = {"error": f"{len(errors)} of {len(rs)} runs failed: {errors[0]}"}
            continue
        byte_counts = {r["bytes"] for r in rs}
        assert len(byte_counts) == 1, f"{label}: tensors of different sizes across runs {byte_counts}"
        out[label] = {
            "seconds": statistics.median(r["seconds"] for r in rs),
            "seconds_min": min(r["seconds"] for r in rs),
            "seconds_max": max(r["seconds"] for r in rs),
            "peak": statistics.median(r["peak"] for r in rs),
            "anon": statistics.median(r["anon"] for r in rs),
            "shmem": statistics.median(r["shmem"] for r in rs),
            "file": statistics.median(r["file"] for r in rs),
            "bytes": rs[0]["bytes"],
            "reset": all(r["reset"] for r in rs),
            "baseline_rss": statistics.median(r["baseline_rss"] for r in rs),
        }
    return out


# ------------------------------------------------------------------------------------ report

def mb(n: float) -> str:
    return f"{n / 1e6:,.1f}"


def table(m: dict, res: dict) -> list[str]:
    ref = res["safetensors.load_file"]
    rows = [f"### {m['name']}",
            "",
            f"safetensors {mb(m['st_bytes'])} MB, .bs {mb(m['bs_bytes'])} MB "
            f"({m['bs_bytes'] / m['st_bytes']:.3f} of it); tensor bytes loaded {mb(ref['bytes'])} MB; "
            f"import baseline RSS {mb(ref['baseline_rss'])} MB (torch, safetensors, bigsmall). "
            f"{m['layers']} layers, the largest {mb(m['largest_layer'])} MB decoded; the non-layer "
            f"group (embeddings, head, final norm) {mb(m['non_layer'])} MB.",
            "",
            "| case | load s (median) | min-max s | vs load_file | peak RSS MB "
            "| at end: anon / shmem / file MB |",
            "|---|---:|---:|---:|---:|---:|"]
    for label, r in res.items():
        if "error" in r:
            rows.append(f"| {label} | FAILED: {r['error'][:200]} | | | | |")
            continue
        streamed = label.startswith("StreamingLoader")
        end = ("(nothing held)" if streamed else
               f"{mb(r['anon'])} / {mb(r['shmem'])} / {mb(r['file'])}")
        rows.append(f"| {label} | {r['seconds']:.3f} | {r['seconds_min']:.3f}-{r['seconds_max']:.3f} | "
                    f"{r['seconds'] / ref['seconds']:.2f}x | {mb(r['peak'])} | {end} |")
    return rows + [""]


def machine() -> list[str]:
    import safetensors  # noqa: PLC0415
    import torch  # noqa: PLC0415

    import bigsmall  # noqa: PLC0415
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 1e6:.1f} GB RAM"
    except OSError:
        pass
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "python", "codec",
                            "daemon", "client"], capture_output=True, text=True).stdout.strip()
    if dirty:
        commit += " with uncommitted changes to the sources"
    load = os.getloadavg()
    return [f"- machine: {cpu}, {os.cpu_count()} cores, {mem}, Linux {platform.release()}; "
            f"load average at start {load[0]:.2f} (a shared machine: others' builds may run)",
            f"- Python {platform.python_version()}, torch {torch.__version__}, safetensors "
            f"{safetensors.__version__}, bigsmall {bigsmall.__version__} (commit {commit}); "
            f"decoders on all cores (threads=0), torch on one thread",
            f"- {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"]


ISOLATION = {
    "forkserver": "forked from a fork server that had imported torch, safetensors and bigsmall, "
                  "nothing loaded",
    "spawn": "a new interpreter, python3 -c, importing torch, safetensors and bigsmall",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each case (median)")
    ap.add_argument("--llm-layers", type=int, default=18,
                    help="synthetic model layers (0: none); 18: 0.53 GB BF16")
    ap.add_argument("--llm-hidden", type=int, default=1024)
    ap.add_argument("--llm-intermediate", type=int, default=2816)
    ap.add_argument("--work", default=str(Path.home() / ".cache/bigsmall/bench/python"),
                    help="where the inputs are made and kept")
    ap.add_argument("--out", default="",
                    help="write the report (markdown) here, e.g. bench/results/python.md")
    ap.add_argument("--isolation", choices=["spawn", "forkserver"], default="spawn",
                    help="a new interpreter per run (default), or a child forked per run from a fork "
                         "server that imported torch, safetensors and bigsmall (quicker, ~8 MB more "
                         "peak RSS in every case: the libraries' code pages refaulted)")
    ap.add_argument("--json", default="", help="also write the raw medians here")
    args = ap.parse_args()

    t0 = time.time()
    # Children inherit this: in process means in process, and no network.
    os.environ.pop("BIGSMALL_SOCKET", None)
    os.environ["HF_HUB_OFFLINE"] = "1"
    header = machine()
    runner = Runner(args.isolation)
    models = prepare(Path(args.work), args)
    results = {}
    for m in models:
        results[m["short"]] = bench_model(m, args.reps, runner)
    reset_everywhere = all(r.get("reset", True) for res in results.values() for r in res.values())
    lines = ["# Python loading: bigsmall vs safetensors.torch.load_file", "",
             "Measured by `bench/python_bench.py` "
             f"(`--reps {args.reps} --llm-layers {args.llm_layers} --llm-hidden {args.llm_hidden} "
             f"--llm-intermediate {args.llm_intermediate}`), all cases in the same run.", ""]
    lines += header + [
        f"- each repetition of each case in a fresh process ({ISOLATION[args.isolation]}); "
        f"medians of {args.reps}; page cache warm "
        "(inputs read once before); every case touches one byte per 4 KiB page of every tensor",
        "- peak RSS: VmHWM at the end minus VmRSS after the imports (the high-water mark reset there "
        "through /proc/self/clear_refs"
        + ("" if reset_everywhere else "; NOT available here: VmHWM minus the baseline's VmHWM") + ")",
        "- daemon: a private bigsmalld (socket and shm on /dev/shm), started per repetition; cold = "
        "its first client (it decodes), warm = a second client (layers in its cache); its own RSS is "
        "not counted (the shared pages a client maps show in the client's RssShmem)", "",
        "Reading the figures:",
        "",
        "- `safetensors.load_file` (safetensors 0.8) MAPS the file: its tensors are the page cache's "
        "pages (RssFile), nothing is decoded or copied, so with a warm cache it costs the page faults "
        "only. bigsmall decodes every byte (XXH3-checked): in process into anonymous memory (RssAnon) "
        "on all cores; through the daemon, the client maps the daemon's decoded shared copy "
        "(RssShmem: shared by every client, not a copy per process).",
        "- daemon warm: the layers are in the daemon's cache, the client only maps them: that is the "
        "cost of a second process loading the same model. Cold includes the daemon's decode.",
        "- StreamingLoader keeps nothing but the non-layer group (requested first and held by the "
        "loop here): in process its peak is that group plus the layers in flight (read-ahead 1), "
        "whatever the number of layers; from_pretrained's peak is the whole model.",
        "- Through the daemon, a client's RSS counts the daemon's shared pages it has mapped and "
        "touched (RssShmem; no copy of them exists). The client maps each arena file (256 MiB) once; "
        "releasing a layer drops its pages from the client's page tables (madvise MADV_DONTNEED, "
        "client 278b970), so released layers leave its RSS while their arena stays mapped.",
        ""]
    for m in models:
        lines += table(m, results[m["short"]])
    lines.append(f"Run time {time.time() - t0:.0f} s.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
