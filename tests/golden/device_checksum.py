#!/usr/bin/env python3
"""Independent reference of the .bs 1.1 device checksum (docs/FORMAT.md section 3.1), written from
the spec, not from codec/device_checksum.h. golden_test.py compares it with what the C++ writer stored.

    python3 tests/golden/device_checksum.py FILE...    prints the checksum of each file's bytes
"""
import sys

MASK = (1 << 64) - 1
POSITION_KEY = 0x9E3779B97F4A7C15
SEED = 0x42534D3131435343  # "BSM11CSC" read as a big-endian integer


def fmix64(k):
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & MASK
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & MASK
    k ^= k >> 33
    return k


def term(k, w):
    return fmix64(w ^ ((k * POSITION_KEY + SEED) & MASK))


def checksum_sum(data, offset=0):
    """Sum (mod 2^64) of the terms of `data` placed at byte `offset` (a multiple of 8) of a tensor."""
    assert offset % 8 == 0
    total, k = 0, offset // 8
    for i in range(0, len(data), 8):
        word = int.from_bytes(data[i:i + 8].ljust(8, b"\0"), "little")
        total = (total + term(k, word)) & MASK
        k += 1
    return total


def finish(total, num_bytes):
    return fmix64(total ^ fmix64((num_bytes + SEED) & MASK))


def device_checksum(data):
    return finish(checksum_sum(data), len(data))


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print("%016x  %s" % (device_checksum(open(path, "rb").read()), path))
