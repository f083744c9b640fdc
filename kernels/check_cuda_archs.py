#!/usr/bin/env python3
"""Checks which GPU architectures a binary carries (CTest kernels_cuda_archs).

Lists the SASS (ELF) and PTX entries of the CUDA fat binary embedded in
--binary, with cuobjdump --list-elf/--list-ptx when it is available, else by
reading the .nv_fatbin section directly (the same entries cuobjdump lists),
and fails unless the sets are exactly --elf and --ptx. --skip REASON exits 77
(CTest's skip code) with the reason, for builds without CUDA.
"""
import argparse
import os
import re
import shutil
import struct
import subprocess
import sys

FATBIN_MAGIC = 0xBA55ED50
KIND_PTX, KIND_ELF = 1, 2


def parse_fatbin(path):
    """{'elf': {sm...}, 'ptx': {sm...}} from the .nv_fatbin section of an ELF64 file."""
    data = open(path, "rb").read()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise SystemExit(f"{path}: not an ELF64 file")
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    secs = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_off = secs[shstrndx][4]

    def name(sec):
        start = names_off + sec[0]
        return data[start:data.index(b"\0", start)].decode()

    found = {"elf": set(), "ptx": set()}
    for sec in secs:
        if name(sec) != ".nv_fatbin":
            continue
        pos, end = sec[4], sec[4] + sec[5]
        while pos + 16 <= end:
            magic, _version, hsize, fsize = struct.unpack_from("<IHHQ", data, pos)
            if magic != FATBIN_MAGIC:
                pos += 8  # padding between fat binaries
                continue
            entry, last = pos + hsize, pos + hsize + fsize
            while entry < last:
                kind, _v, ehsize, psize = struct.unpack_from("<HHIQ", data, entry)
                sm = struct.unpack_from("<I", data, entry + 28)[0]
                if kind == KIND_ELF:
                    found["elf"].add(sm)
                elif kind == KIND_PTX:
                    found["ptx"].add(sm)
                entry += ehsize + psize
            pos = last
    return found


def with_cuobjdump(tool, path):
    found = {"elf": set(), "ptx": set()}
    for kind in ("elf", "ptx"):
        out = subprocess.run([tool, f"--list-{kind}", path], capture_output=True, text=True)
        if out.returncode != 0 and "does not contain" not in out.stderr:
            raise SystemExit(f"{tool} --list-{kind} failed: {out.stderr.strip()}")
        for m in re.finditer(r"\.sm_(\d+)[a-z]?\.(?:cubin|ptx)", out.stdout):
            found[kind].add(int(m.group(1)))
    return found


def numbers(text):
    return {int(x) for x in re.split(r"[,;\s]+", text) if x}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary")
    ap.add_argument("--elf", default="")
    ap.add_argument("--ptx", default="")
    ap.add_argument("--cuobjdump", default="")
    ap.add_argument("--skip", default="")
    args = ap.parse_args()
    if args.skip:
        print(f"SKIPPED: {args.skip}")
        return 77
    tool = args.cuobjdump if args.cuobjdump and os.access(args.cuobjdump, os.X_OK) else shutil.which("cuobjdump")
    found = parse_fatbin(args.binary)
    how = ".nv_fatbin section"
    if tool:
        listed = with_cuobjdump(tool, args.binary)
        if listed != found:
            print(f"cuobjdump lists {listed}, the fat binary holds {found}")
            return 1
        how = f"{tool} and the .nv_fatbin section"
    want = {"elf": numbers(args.elf), "ptx": numbers(args.ptx)}
    print(f"{args.binary} ({how}): SASS sm_{sorted(found['elf'])}, PTX compute_{sorted(found['ptx'])}")
    if found != want:
        print(f"expected SASS sm_{sorted(want['elf'])}, PTX compute_{sorted(want['ptx'])}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
