#!/usr/bin/env bash
# Offline validation of deploy/kubernetes/ (CI runs it from scripts/test.sh):
#   1. every manifest against the Kubernetes $K8S_VERSION API schemas, strict
#      (unknown fields are errors), with PyPI kubernetes-validate, pinned,
#      installed into its own venv (build/venv-k8s; reused when present);
#   2. check_manifests.py: volume mounts name defined volumes, probes and
#      BIGSMALL_SOCKET use the socket the ConfigMap configures, paths lie on
#      mounted volumes, metrics port and annotations agree, the termination
#      grace period outlasts preStop + drain;
#   3. each ConfigMap's bigsmalld.json through the real daemon's parser
#      (`bigsmalld --config FILE --print-config`: unknown keys and bad values
#      exit 2) when a built daemon is found ($BIGSMALLD, else build/ or
#      build-*/daemon/bigsmalld); it says SKIP (and why) when none is.
# The kustomizations hold plain resources only (no generators, patches or
# overlays), so validating each listed file is validating what
# `kubectl apply -k` applies; no kustomize binary is needed (none is on PyPI).
# Exit status: 0 all good, 1 any problem.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
K8S_VERSION=${K8S_VERSION:-1.30.0}
KV_VERSION=1.37.0
venv=${K8S_VENV:-$repo/build/venv-k8s}

if ! "$venv/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$KV_VERSION"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "kubernetes-validate==$KV_VERSION"
fi

mapfile -t manifests < <(find "$here" -name '*.yaml' ! -name kustomization.yaml | sort)
echo "check.sh: kubernetes-validate $KV_VERSION --strict -k $K8S_VERSION: ${#manifests[@]} files"
"$venv/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "${manifests[@]}"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$venv/bin/python" "$here/check_manifests.py" --print-configs "$tmp"

# Self-test: each of these breakages of a copy must be caught, so a checker
# that finds nothing is not taken for a clean tree.
selftest() {  # what, sed expression, file
  rm -rf "$tmp/copy" && cp -r "$here" "$tmp/copy"
  sed -i "$2" "$tmp/copy/$3"
  if cmp -s "$here/$3" "$tmp/copy/$3"; then
    echo "check.sh: self-test '$1': the edit changed nothing"; exit 1
  fi
  if BIGSMALL_K8S_DIR="$tmp/copy" "$venv/bin/python" "$here/check_manifests.py" >/dev/null; then
    echo "check.sh: self-test '$1': not detected"; exit 1
  fi
}
selftest "undefined volume" 's/{name: tmp, mountPath: \/tmp}/{name: tmpx, mountPath: \/tmp}/' daemonset.yaml
selftest "probe socket" '0,/"--socket", "\/run\/bigsmall\/bigsmall.sock"/s//"--socket", "\/run\/other.sock"/' daemonset.yaml
selftest "sidecar env socket" 's|value: /run/bigsmall/sock/bigsmall.sock|value: /run/bigsmall/bigsmall.sock|' sidecar/deployment.yaml
selftest "grace period" 's/terminationGracePeriodSeconds: 60/terminationGracePeriodSeconds: 30/' daemonset.yaml
selftest "metrics port" 's/"0.0.0.0:9464"/"0.0.0.0:9465"/' configmap.yaml
selftest "unlisted manifest" 's/  - priorityclass.yaml//' kustomization.yaml
echo "check.sh: check_manifests.py self-test: 6 breakages detected"

daemon=${BIGSMALLD:-}
if [[ -z $daemon ]]; then
  for d in "$repo"/build/daemon/bigsmalld "$repo"/build-*/daemon/bigsmalld; do
    if [[ -x $d ]]; then daemon=$d; break; fi
  done
fi
if [[ -n $daemon ]]; then
  for cfg in "$tmp"/*.json; do
    if ! out=$("$daemon" --config "$cfg" --print-config 2>&1 >/dev/null); then
      echo "check.sh: $(basename "$cfg" .json): bigsmalld refuses the config: $out"
      exit 1
    fi
    echo "check.sh: $(basename "$cfg" .json): bigsmalld --print-config accepts it"
  done
else
  echo "check.sh: SKIP the daemon's config parser: no built bigsmalld (set BIGSMALLD)"
fi
echo "check.sh: deploy/kubernetes OK"
