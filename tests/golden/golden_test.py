#!/usr/bin/env python3
"""Golden files: every committed valid .bs (written by format 1.0) must still decode to its original
byte for byte and verify; every committed corrupt .bs must fail with its expected exit code and a
message naming the problem, leaving no output behind.

    python3 tests/golden/golden_test.py path/to/bigsmall
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


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

    for name, original in sorted(expected["valid"].items()):
        if not name.endswith(".bs"):
            continue
        src = os.path.join(HERE, "valid", name)
        out = os.path.join(tmp, name + ".out")
        p = subprocess.run([bigsmall, "decompress", src, "-o", out, "-q"], capture_output=True, text=True)
        digest = hashlib.sha256(open(out, "rb").read()).hexdigest() if p.returncode == 0 else None
        check(p.returncode == 0 and digest == expected["valid"][original], "%s decodes to %s (%s)" %
              (name, original, p.stderr.strip()))
        p = subprocess.run([bigsmall, "verify", src, "--against", os.path.join(HERE, "valid", original), "-q"],
                           capture_output=True, text=True)
        check(p.returncode == 0, "%s verifies against %s (%s)" % (name, original, p.stderr.strip()))
    for name, want in sorted(expected["corrupt"].items()):
        src = os.path.join(HERE, "corrupt", name)
        out = os.path.join(tmp, name + ".out")
        p = subprocess.run([bigsmall, "decompress", src, "-o", out], capture_output=True, text=True)
        check(p.returncode == want["exit"], "%s: exit %d, expected %d" % (name, p.returncode, want["exit"]))
        check(want["message"] in p.stderr and name in p.stderr,
              "%s: stderr %r lacks %r and the file name" % (name, p.stderr, want["message"]))
        check(not os.path.exists(out), "%s: output left behind" % name)
    leftovers = [f for f in os.listdir(tmp) if ".tmp." in f]
    check(not leftovers, "temporary files left: %s" % leftovers)
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
