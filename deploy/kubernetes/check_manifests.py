#!/usr/bin/env python3
"""Consistency checks of deploy/kubernetes/ that a schema cannot make.

For every kustomization (the base and sidecar/) and examples/*.yaml:
  - every resource a kustomization lists exists, and every manifest file is
    listed by a kustomization or lies in examples/;
  - every volumeMount names a volume of its pod, mountPaths are unique;
  - a container that runs bigsmalld reads a config file from a mounted
    ConfigMap of the same kustomization; that bigsmalld.json parses; its
    socket, shm_dir, model_dirs and hub_cache lie on mounted volumes;
  - every probe or command that runs bigsmall-client, and every
    BIGSMALL_SOCKET, uses the socket path that config configures (in
    examples/: the base DaemonSet's), and those containers mount the
    socket's directory (the daemon's own volume, in a pod with a daemon);
  - the metrics port of the config is the container's "metrics" port and the
    prometheus.io/port annotation;
  - terminationGracePeriodSeconds > preStop sleep + drain_seconds.
With --print-configs DIR, writes each config it found to DIR/<name>.json
(check.sh feeds them to `bigsmalld --print-config`).
Exit status 1 on any problem, each one printed.
"""
import json
import os
import posixpath
import sys

import yaml

# BIGSMALL_K8S_DIR: check another copy of the tree (check.sh's self-test).
HERE = os.environ.get("BIGSMALL_K8S_DIR") or os.path.dirname(os.path.abspath(__file__))
problems = []


def problem(where, text):
    problems.append(f"{where}: {text}")


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def under(path, mounts):
    """The mountPath `path` lies on (longest), or None."""
    best = None
    for m in mounts:
        mp = m.rstrip("/") or "/"
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best):
                best = mp
    return best


def pod_spec(doc):
    kind = doc.get("kind")
    if kind == "Pod":
        return doc.get("spec", {})
    if kind in ("DaemonSet", "Deployment", "StatefulSet", "Job"):
        return doc.get("spec", {}).get("template", {}).get("spec", {})
    return None


def pod_annotations(doc):
    if doc.get("kind") == "Pod":
        return doc.get("metadata", {}).get("annotations", {}) or {}
    return doc.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations", {}) or {}


def command_of(c):
    return list(c.get("command", []) or []) + list(c.get("args", []) or [])


def client_sockets(argv):
    """Socket paths a bigsmall-client invocation in argv (or a sh -c line) uses."""
    words = []
    for a in argv:
        words.extend(str(a).split())
    found = []
    for i, w in enumerate(words):
        if w.endswith("bigsmall-client"):
            sock = None
            for j in range(i + 1, len(words) - 1):
                if words[j] == "--socket":
                    sock = words[j + 1]
                    break
            found.append(sock)
    return found


def check_group(name, files, default_sockets=()):
    """One kustomization (or one example file): its documents together.

    default_sockets: the sockets clients must use where the group runs no
    daemon of its own (examples/ use the base DaemonSet's).
    """
    docs = []
    for f in files:
        for d in load_docs(f):
            docs.append((os.path.relpath(f, HERE), d))
    configmaps = {d["metadata"]["name"]: d for _, d in docs if d.get("kind") == "ConfigMap"}
    configs = {}
    for where, doc in docs:
        spec = pod_spec(doc)
        if spec is None:
            continue
        where = f"{where} {doc['kind']}/{doc['metadata']['name']}"
        volumes = {}
        for v in spec.get("volumes", []) or []:
            if v["name"] in volumes:
                problem(where, f"volume {v['name']} defined twice")
            volumes[v["name"]] = v
        containers = (spec.get("initContainers", []) or []) + (spec.get("containers", []) or [])
        used = set()
        for c in containers:
            cw = f"{where} container {c['name']}"
            mounts = {}
            for m in c.get("volumeMounts", []) or []:
                used.add(m["name"])
                if m["name"] not in volumes:
                    problem(cw, f"volumeMount {m['mountPath']} names undefined volume {m['name']}")
                if m["mountPath"] in mounts:
                    problem(cw, f"mountPath {m['mountPath']} mounted twice")
                mounts[m["mountPath"]] = m
            c["_mounts"] = mounts
        for v in volumes:
            if v not in used:
                problem(where, f"volume {v} is mounted by no container")

        # The daemon container(s) and their config.
        config = None
        daemon = None
        for c in containers:
            argv = command_of(c)
            if not any(str(a).endswith("bigsmalld") for a in argv):
                continue
            cw = f"{where} container {c['name']}"
            daemon = c
            if "--config" not in argv:
                problem(cw, "bigsmalld runs without --config")
                continue
            cfg_path = argv[argv.index("--config") + 1]
            mp = under(cfg_path, c["_mounts"])
            vol = volumes.get(c["_mounts"][mp]["name"]) if mp else None
            if vol is None or "configMap" not in vol:
                problem(cw, f"--config {cfg_path} is not on a mounted ConfigMap")
                continue
            cm_name = vol["configMap"]["name"]
            key = posixpath.relpath(cfg_path, mp)
            cm = configmaps.get(cm_name)
            if cm is None or key not in cm.get("data", {}):
                problem(cw, f"ConfigMap {cm_name} (key {key}) is not in {name}")
                continue
            try:
                config = json.loads(cm["data"][key])
            except json.JSONDecodeError as e:
                problem(f"ConfigMap {cm_name}", f"{key} does not parse: {e}")
                continue
            configs[cm_name] = config
            for k in ("socket", "shm_dir", "hub_cache"):
                if config.get(k) and under(config[k], c["_mounts"]) is None:
                    problem(cw, f"{k} {config[k]} is on no mounted volume")
            for d in config.get("model_dirs", []) + config.get("allowed_roots", []):
                if under(d, c["_mounts"]) is None:
                    problem(cw, f"model dir {d} is on no mounted volume")
            if not config.get("socket"):
                problem(cw, "the config sets no socket (the probes cannot know it)")
            # Metrics port and annotations.
            metrics = config.get("metrics", "")
            ann = pod_annotations(doc)
            if metrics:
                port = int(metrics.rsplit(":", 1)[1])
                ports = {p.get("name"): p["containerPort"] for p in c.get("ports", []) or []}
                if ports.get("metrics") != port:
                    problem(cw, f"metrics listens on {port}, the container port 'metrics' is "
                                f"{ports.get('metrics')}")
                if ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") != str(port):
                    problem(where, f"prometheus.io/port {ann.get('prometheus.io/port')} != {port}")
                if metrics.startswith("127.") or metrics.startswith("localhost"):
                    problem(cw, f"metrics on {metrics} cannot be scraped from outside the pod")
            elif ann.get("prometheus.io/scrape") == "true":
                problem(where, "scrape annotations but the daemon serves no metrics")
            # Termination grace > preStop + drain.
            pre = (c.get("lifecycle", {}) or {}).get("preStop", {}) or {}
            pre_s = 0.0
            pre_cmd = (pre.get("exec", {}) or {}).get("command", [])
            if pre_cmd and pre_cmd[0].endswith("sleep"):
                pre_s = float(pre_cmd[1])
            grace = spec.get("terminationGracePeriodSeconds", 30)
            drain = float(config.get("drain_seconds", 10))
            if grace <= pre_s + drain:
                problem(where, f"terminationGracePeriodSeconds {grace} <= preStop {pre_s} + "
                               f"drain_seconds {drain}")
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                if probe not in c:
                    problem(cw, f"no {probe}")
        # Socket consistency for every container of the pod.
        sockets = [config["socket"]] if config and config.get("socket") else list(default_sockets)
        for c in containers:
            cw = f"{where} container {c['name']}"
            uses = []
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                cmd = ((c.get(probe, {}) or {}).get("exec", {}) or {}).get("command", [])
                for s in client_sockets(cmd):
                    uses.append((f"{probe}", s))
            for s in client_sockets(command_of(c)):
                uses.append(("command", s))
            for e in c.get("env", []) or []:
                if e.get("name") == "BIGSMALL_SOCKET":
                    uses.append(("env BIGSMALL_SOCKET", e.get("value")))
            for what, s in uses:
                if s is None:
                    problem(cw, f"{what}: bigsmall-client without --socket")
                    continue
                if sockets and s not in sockets:
                    problem(cw, f"{what} uses socket {s}, the config says {sockets[0]}")
                if under(posixpath.dirname(s), c["_mounts"]) is None:
                    problem(cw, f"{what}: the socket directory of {s} is not mounted")
                if daemon is not None and c is not daemon:
                    # The client must see the daemon's directory: same volume.
                    mine = c["_mounts"].get(under(s, c["_mounts"]) or "", {}).get("name")
                    theirs = daemon["_mounts"].get(under(s, daemon["_mounts"]) or "", {}).get("name")
                    if mine != theirs:
                        problem(cw, f"{what}: socket volume {mine} is not the daemon's {theirs}")
    return configs


def main():
    out_dir = None
    if len(sys.argv) == 3 and sys.argv[1] == "--print-configs":
        out_dir = sys.argv[2]
    listed = set()
    groups = []
    for kdir in (HERE, os.path.join(HERE, "sidecar")):
        kfile = os.path.join(kdir, "kustomization.yaml")
        k = load_docs(kfile)[0]
        if k.get("kind") != "Kustomization":
            problem(kfile, "not a Kustomization")
        for key in k:
            if key not in ("apiVersion", "kind", "resources"):
                problem(kfile, f"{key}: check.sh validates plain resources only")
        files = []
        for r in k.get("resources", []):
            p = os.path.normpath(os.path.join(kdir, r))
            if not os.path.isfile(p):
                problem(kfile, f"resource {r} does not exist")
                continue
            files.append(p)
            listed.add(p)
        groups.append((os.path.relpath(kfile, HERE), files))
    for root, _, names in os.walk(HERE):
        for n in sorted(names):
            p = os.path.join(root, n)
            if not n.endswith((".yaml", ".yml")) or n == "kustomization.yaml":
                continue
            if os.path.relpath(root, HERE).split(os.sep)[0] == "examples":
                groups.append((os.path.relpath(p, HERE), [p]))
            elif p not in listed:
                problem(os.path.relpath(p, HERE), "listed by no kustomization")
    all_configs = {}
    base_sockets = ()
    for name, files in groups:
        configs = check_group(name, files, base_sockets)
        if name == "kustomization.yaml":  # the base: examples/ connect to its daemon
            base_sockets = tuple(c["socket"] for c in configs.values() if c.get("socket"))
        all_configs.update(configs)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        for cm, cfg in all_configs.items():
            with open(os.path.join(out_dir, cm + ".json"), "w") as f:
                json.dump(cfg, f)
    for p in problems:
        print(f"check_manifests: {p}")
    print(f"check_manifests: {len(groups)} groups, {len(all_configs)} daemon configs, "
          f"{len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
