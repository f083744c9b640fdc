#!/usr/bin/env python3
"""Golden files: every committed valid .bs (format 1.0 files frozen from the 1.0 writer, and 1.1
files frozen from the 1.1 writer, 1.2 files from the 1.2 writer, and 1.3 files) must still decode to its
original byte for byte and verify, and report its format version; forms.*.v1.2.bs must hold every 1.2
blob form (raw, zstd, fields: docs/FORMAT.md 5.3-5.5) and forms.*.v1.3.bs with small.*.v1.3.bs every
form the 1.3 writer makes, drift.*.v1.3.bs the rans_segmented coder (raw, fields, magicless zstd, small planes: 5.3-5.6); in the 1.1, 1.2 and 1.3 files every stored device checksum must equal the one computed from the original bytes by an
independent Python implementation of docs/FORMAT.md section 3.1 (device_checksum.py). Every committed
corrupt .bs must fail (under the command expected.json names: decompress, or verify) with the status
code and exit code that docs/FORMAT.md section 10.1 gives its failure class (expected.json must agree
with the spec's table) and a message naming the problem, leaving no output behind.

    python3 tests/golden/golden_test.py path/to/bigsmall
"""
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import device_checksum  # noqa: E402  (docs/FORMAT.md 3.1, written from the spec)
import make_golden  # noqa: E402  (the spec's error table)

HERE = os.path.dirname(os.path.abspath(__file__))
# docs/FORMAT.md 3.1 "Known answers".
SPEC_KNOWN_ANSWERS = {b"": 0x0F18961AD490029E, b"abc": 0xDF61FD41B6CA618D, bytes(range(17)): 0xE6F1BD0F5334DCFB}


def safetensors_tensors(path):
    """{name: bytes} of a safetensors file (header length, JSON header, data section)."""
    data = open(path, "rb").read()
    n = struct.unpack_from("<Q", data, 0)[0]
    header = json.loads(data[8:8 + n])
    return {name: data[8 + n + t["data_offsets"][0]:8 + n + t["data_offsets"][1]]
            for name, t in header.items() if name != "__metadata__"}


def check_device_checksums(bigsmall, bs, original):
    """Problems found comparing the device checksums bigsmall stored in `bs` (read back with `info`)
    with device_checksum.py over the tensors of `original`; returns (problems, tensors checked)."""
    p = subprocess.run([bigsmall, "info", bs, "--json", "--tensors"], capture_output=True, text=True)
    if p.returncode != 0:
        return ["info failed: " + p.stderr.strip()], 0
    info = json.loads(p.stdout)
    want = safetensors_tensors(original)
    problems = []
    if info.get("checksums") is not True:
        problems.append("info says the file has no 1.1 checksums")
    for t in info["tensors"]:
        expect = "%016x" % device_checksum.device_checksum(want[t["name"]])
        if t.get("device_checksum") != expect:
            problems.append("tensor %s: stored device checksum %s, spec says %s" %
                            (t["name"], t.get("device_checksum"), expect))
    if len(info["tensors"]) != len(want):
        problems.append("%d tensors listed, %d in the original" % (len(info["tensors"]), len(want)))
    return problems, len(info["tensors"])


def main():
    bigsmall = sys.argv[1]
    expected = json.load(open(os.path.join(HERE, "expected.json")))
    passed = failed = 0
    tmp = tempfile.mkdtemp(prefix="bigsmall_golden.")

    def check(ok, what):
        nonlocal passed, failed
        if ok:
            passed += 1
        else:
            failed += 1
            print("FAIL", what)

    for data, value in SPEC_KNOWN_ANSWERS.items():
        check(device_checksum.device_checksum(data) == value, "device_checksum.py known answer for %r" % data)
    versions = expected.get("versions", {})
    bases = expected.get("bases", {})
    check(len(bases) > 0, "a 1.1 delta golden file is listed")
    check(sorted(set(versions.values())) == ["1.0", "1.1", "1.2", "1.3"],
          "golden files of every version: %s" % versions)
    for mode in ("balanced", "storage", "inference"):
        for version, stems, want in (("1.2", ["forms"], {"fields", "raw", "zstd"}),
                                     ("1.3", ["forms", "small"], {"fields", "raw", "zstd-magicless", "small-planes"})):
            forms = set()
            for stem in stems:
                p = subprocess.run([bigsmall, "info", os.path.join(HERE, "valid", "%s.%s.v%s.bs" % (stem, mode, version)),
                                    "--json", "--tensors"], capture_output=True, text=True)
                forms |= {t["form"] for t in json.loads(p.stdout)["tensors"]} if p.returncode == 0 else set()
            check(want <= forms, "%s %s files hold blob forms %s" % (version, mode, sorted(forms)))
        p = subprocess.run([bigsmall, "info", os.path.join(HERE, "valid", "drift.%s.v1.3.bs" % mode), "--json",
                            "--tensors"], capture_output=True, text=True)
        coders = [t["coders"] for t in json.loads(p.stdout)["tensors"]] if p.returncode == 0 else []
        check(coders == ["rans-seg"], "drift.%s.v1.3.bs codes its tensor rans_segmented: %s" % (mode, coders))
    for name, original in sorted(expected["valid"].items()):
        if not name.endswith(".bs"):
            continue
        src = os.path.join(HERE, "valid", name)
        base = ["--base", os.path.join(HERE, "valid", bases[name])] if name in bases else []
        p = subprocess.run([bigsmall, "info", src, "--json"], capture_output=True, text=True)
        version = json.loads(p.stdout).get("format_version") if p.returncode == 0 else None
        check(version == versions.get(name), "%s: format version %s, expected %s" %
              (name, version, versions.get(name)))
        if version in ("1.1", "1.2", "1.3"):
            problems, n = check_device_checksums(bigsmall, src, os.path.join(HERE, "valid", original))
            check(not problems and n > 0, "%s device checksums: %s" % (name, problems))
            p = subprocess.run([bigsmall, "verify", src, "--json"] + base, capture_output=True, text=True)
            j = json.loads(p.stdout) if p.returncode == 0 else {}
            check(j.get("device_checksums") == n and j.get("group_checksums", 0) > 0,
                  "%s: verify checked %s device and %s group checksums" %
                  (name, j.get("device_checksums"), j.get("group_checksums")))
        src = os.path.join(HERE, "valid", name)
        out = os.path.join(tmp, name + ".out")
        p = subprocess.run([bigsmall, "decompress", src, "-o", out, "-q"] + base, capture_output=True, text=True)
        digest = hashlib.sha256(open(out, "rb").read()).hexdigest() if p.returncode == 0 else None
        check(p.returncode == 0 and digest == expected["valid"][original], "%s decodes to %s (%s)" %
              (name, original, p.stderr.strip()))
        p = subprocess.run([bigsmall, "verify", src, "--against", os.path.join(HERE, "valid", original), "-q"] + base,
                           capture_output=True, text=True)
        check(p.returncode == 0, "%s verifies against %s (%s)" % (name, original, p.stderr.strip()))
    table = make_golden.error_table()
    check(len(expected["corrupt"]) >= 8, "expected.json lists %d corrupt files" % len(expected["corrupt"]))
    for name, want in sorted(expected["corrupt"].items()):
        spec = table.get(want.get("class"))
        check(spec == (want.get("code"), want["exit"]),
              "%s: expected.json says %s/%s for class %r, docs/FORMAT.md 10.1 says %s (rerun make_golden.py "
              "--expectations-only)" % (name, want.get("code"), want["exit"], want.get("class"), spec))
        src = os.path.join(HERE, "corrupt", name)
        out = os.path.join(tmp, name + ".out")
        command = want.get("command", "decompress")
        check(command in ("decompress", "verify"), "%s: command %r" % (name, command))
        args = ["-o", out] if command == "decompress" else []
        p = subprocess.run([bigsmall, command, src, "--json"] + args, capture_output=True, text=True)
        check(p.returncode == want["exit"], "%s: %s exit %d, expected %d" % (name, command, p.returncode, want["exit"]))
        try:
            code = json.loads(p.stdout).get("code")
        except ValueError:
            code = None
        check(code == want["code"], "%s: status code %s, expected %s" % (name, code, want["code"]))
        check(want["message"] in p.stderr and name in p.stderr,
              "%s: stderr %r lacks %r and the file name" % (name, p.stderr, want["message"]))
        check(not os.path.exists(out), "%s: output left behind" % name)
    leftovers = [f for f in os.listdir(tmp) if ".tmp." in f]
    check(not leftovers, "temporary files left: %s" % leftovers)
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
