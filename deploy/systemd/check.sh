#!/usr/bin/env bash
# Validates the systemd artefacts offline (no running systemd needed):
#  1. `cmake --install BUILD --prefix TMP` (the units' ExecStart then names a
#     binary that exists), then `systemd-analyze verify` on the installed
#     bigsmalld.service and bigsmalld.socket: any message about them (an
#     unknown key, a bad value, a missing binary) fails;
#  2. sysusers.d and tmpfiles.d applied to a scratch root (--root): the user
#     and groups are created and every tmpfiles line resolves and creates;
#  3. `systemd-analyze security --offline=true` on the service: prints the
#     exposure score and fails above THRESHOLD (default 2.5 of 10).
# Usage: deploy/systemd/check.sh [BUILD_DIR]   (default: build; it must hold
# a build of bigsmall, bigsmalld and bigsmall-client)
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$src/build}
threshold=${THRESHOLD:-2.5}
fail() { echo "check.sh: $*" >&2; exit 1; }
for tool in systemd-analyze systemd-sysusers systemd-tmpfiles cmake; do
  command -v "$tool" >/dev/null || fail "$tool not found (Debian: apt-get install systemd cmake)"
done
[ -x "$build/daemon/bigsmalld" ] || fail "$build/daemon/bigsmalld not built"

tmp=$(mktemp -d /tmp/bigsmall-systemd-check-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
units="$tmp/prefix/lib/systemd/system"

echo "== systemd-analyze verify bigsmalld.service bigsmalld.socket ($(systemd-analyze --version | head -1))"
set +e
out=$(cd "$units" && systemd-analyze verify ./bigsmalld.service ./bigsmalld.socket 2>&1)
rc=$?
set -e
[ -n "$out" ] && echo "$out"
# verify exits 0 on unknown keys and bad values ("..., ignoring"): any line
# about our units is an error here.
if [ $rc -ne 0 ] || grep -q "bigsmalld\.\(service\|socket\)" <<<"$out"; then
  fail "systemd-analyze verify found problems in the units"
fi
grep -q "^ExecStart=$tmp/prefix/bin/bigsmalld " "$units/bigsmalld.service" \
  || fail "the installed unit's ExecStart does not name the installed binary"
echo "verify: OK"

echo "== sysusers.d and tmpfiles.d on a scratch root"
root="$tmp/root"
mkdir -p "$root/etc" "$root/run" "$root/dev/shm" "$root/var/cache" "$root/var/lib"
systemd-sysusers --root="$root" "$tmp/prefix/lib/sysusers.d/bigsmall.conf" 2>&1 | sed 's/^/  /'
for name in bigsmall; do
  grep -q "^$name:" "$root/etc/passwd" || fail "sysusers did not create the user $name"
done
for name in bigsmall bigsmall-admin; do
  grep -q "^$name:" "$root/etc/group" || fail "sysusers did not create the group $name"
done
set +e
out=$(systemd-tmpfiles --root="$root" --create "$tmp/prefix/lib/tmpfiles.d/bigsmall.conf" 2>&1)
rc=$?
set -e
[ -n "$out" ] && echo "$out"
[ $rc -eq 0 ] && [ -z "$out" ] || fail "systemd-tmpfiles reported problems"
for d in run/bigsmall dev/shm/bigsmall var/cache/bigsmall/hub var/lib/bigsmall/models; do
  [ -d "$root/$d" ] || fail "tmpfiles did not create /$d"
done
echo "sysusers/tmpfiles: OK"

echo "== systemd-analyze security --offline=true bigsmalld.service"
# --threshold takes the score times 10.
t10=$(awk -v t="$threshold" 'BEGIN { printf "%d", t * 10 }')
set +e
out=$(cd "$units" && systemd-analyze security --offline=true --no-pager --threshold="$t10" \
        ./bigsmalld.service 2>&1)
rc=$?
set -e
grep "✗" <<<"$out" | sed 's/  */ /g' || true
score=$(grep -o "Overall exposure level for bigsmalld.service: [0-9.]* [A-Z]*" <<<"$out" || true)
[ -n "$score" ] || { echo "$out"; fail "no exposure score in systemd-analyze security's output"; }
echo "$score (threshold $threshold)"
[ $rc -eq 0 ] || fail "exposure above the threshold $threshold"
echo "check.sh: OK"
