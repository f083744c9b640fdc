#!/usr/bin/env bash
# ctest install_layout_test: `cmake --install BUILD --prefix P` with DESTDIR
# lays out binaries, units (paths rewritten to P), sysusers.d, tmpfiles.d,
# the default config and the --help docs; a second install keeps an edited
# config and puts the new default next to it as .dist.
# Usage: install_test.sh BUILD_DIR
set -euo pipefail
build=${1:?usage: install_test.sh BUILD_DIR}
dest=$(mktemp -d /tmp/bigsmall-install-XXXXXX)
trap 'rm -rf "$dest"' EXIT
fail() { echo "install_test: $*" >&2; exit 1; }

check_prefix() {
  local prefix=$1 etc=$2 root="$dest/$3"
  DESTDIR="$root" cmake --install "$build" --prefix "$prefix" >/dev/null
  for f in bin/bigsmall bin/bigsmalld bin/bigsmall-client; do
    [ -x "$root$prefix/$f" ] || fail "missing executable $prefix/$f"
  done
  for f in lib/systemd/system/bigsmalld.service lib/systemd/system/bigsmalld.socket \
           lib/sysusers.d/bigsmall.conf lib/tmpfiles.d/bigsmall.conf \
           share/doc/bigsmall/bigsmall.txt share/doc/bigsmall/bigsmalld.txt \
           share/doc/bigsmall/bigsmall-client.txt; do
    [ -s "$root$prefix/$f" ] || fail "missing or empty $prefix/$f"
  done
  for f in bigsmall/bigsmalld.json default/bigsmalld; do
    [ -s "$root$etc/$f" ] || fail "missing or empty $etc/$f"
  done
  local unit="$root$prefix/lib/systemd/system/bigsmalld.service"
  grep -qx "ExecStart=$prefix/bin/bigsmalld --config $etc/bigsmall/bigsmalld.json \$BIGSMALLD_ARGS" \
    "$unit" || fail "ExecStart not rewritten to $prefix: $(grep ExecStart= "$unit")"
  grep -qx "EnvironmentFile=-$etc/default/bigsmalld" "$unit" \
    || fail "EnvironmentFile not rewritten: $(grep EnvironmentFile= "$unit")"
  grep -q -- "--socket-mode" "$root$prefix/share/doc/bigsmall/bigsmalld.txt" \
    || fail "bigsmalld.txt is not bigsmalld --help"
  cmp -s "$root$etc/bigsmall/bigsmalld.json" "$(dirname "$0")/../bigsmalld.example.json" \
    || fail "bigsmalld.json is not deploy/bigsmalld.example.json"
}

check_prefix /opt/bigsmall /opt/bigsmall/etc opt
check_prefix /usr /etc usr

# An upgrade keeps the operator's config.
echo '{"log_level": "debug"}' > "$dest/usr/etc/bigsmall/bigsmalld.json"
DESTDIR="$dest/usr" cmake --install "$build" --prefix /usr >/dev/null
grep -q debug "$dest/usr/etc/bigsmall/bigsmalld.json" || fail "an edited config was overwritten"
[ -s "$dest/usr/etc/bigsmall/bigsmalld.json.dist" ] || fail "no bigsmalld.json.dist next to it"
echo "install_test: OK"
