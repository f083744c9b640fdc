#!/usr/bin/env python3
"""Golden files: every committed valid .bs (written by format 1.0) must still decode to its original
byte for byte and verify; every committed corrupt .bs must fail with the status code and exit code that docs/FORMAT.md
section 10.1 gives its failure class (expected.json must agree with the spec's table) and a message
naming the problem, leaving no output behind.

    python3 tests/golden/golden_test.py path/to/bigsmall
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_golden  # noqa: E402  (the spec's error table)

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
    table = make_golden.error_table()
    check(len(expected["corrupt"]) >= 8, "expected.json lists %d corrupt files" % len(expected["corrupt"]))
    for name, want in sorted(expected["corrupt"].items()):
        spec = table.get(want.get("class"))
        check(spec == (want.get("code"), want["exit"]),
              "%s: expected.json says %s/%s for class %r, docs/FORMAT.md 10.1 says %s (rerun make_golden.py "
              "--expectations-only)" % (name, want.get("code"), want["exit"], want.get("class"), spec))
        src = os.path.join(HERE, "corrupt", name)
        out = os.path.join(tmp, name + ".out")
        p = subprocess.run([bigsmall, "decompress", src, "-o", out, "--json"], capture_output=True, text=True)
        check(p.returncode == want["exit"], "%s: exit %d, expected %d" % (name, p.returncode, want["exit"]))
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
