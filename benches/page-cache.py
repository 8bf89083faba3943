#!/usr/bin/env python3
"""What this machine's kernel and file system charge for the writes a segment gets.

Used for BENCHMARKS.md, "2026-12-06, 14:37-15:25". Three measurements, in a scratch
file under DIR (default: the current directory), each run twice:

1. CPU a 100 B of page-cache writes (pwrite of 512 MiB into a new file), by write size:
   4 KiB, 100 KB and 107 KB at unaligned offsets (a batch lands where the last ended),
   and aligned 128 KiB to 1 MiB.
2. A batch written as its first 12 bytes and then the rest (two pwrites) against one
   pwritev, and writes into a file preallocated with fallocate(KEEP_SIZE) against a
   growing one (CPU a batch of 107 KB, and of the final fdatasync).
3. fdatasync'd bandwidth: 256 MiB as 256 KiB or 1 MiB chunks with an fdatasync after
   each, into a growing file, a fallocate'd one (KEEP_SIZE, and with its size set),
   and one whose blocks were written with zeros first.

    python3 benches/page-cache.py [DIR]
"""
import ctypes
import os
import resource
import sys
import time

DIR = sys.argv[1] if len(sys.argv) > 1 else "."
PATH = os.path.join(DIR, "page-cache-scratch.bin")
libc = ctypes.CDLL("libc.so.6", use_errno=True)
KEEP_SIZE = 1


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def fallocate(fd, mode, length):
    if libc.fallocate(fd, mode, ctypes.c_long(0), ctypes.c_long(length)) != 0:
        raise OSError(ctypes.get_errno(), "fallocate")


def fresh():
    return os.open(PATH, os.O_RDWR | os.O_CREAT | os.O_TRUNC)


def done(fd):
    os.close(fd)
    os.unlink(PATH)


def by_size(size, total=512 << 20):
    data = b"x" * size
    fd = fresh()
    before = cpu()
    for offset in range(0, total - size + 1, size):
        os.pwrite(fd, data, offset)
    spent = cpu() - before
    done(fd)
    return spent / (total / 100) * 1e9


def batch_writes(mode, total=256 << 20):
    head, rest = b"h" * 12, b"x" * 106920
    size = len(head) + len(rest)
    fd = fresh()
    if mode == "preallocated":
        fallocate(fd, KEEP_SIZE, total + (1 << 20))
    before = cpu()
    batches = 0
    for offset in range(0, total - size + 1, size):
        if mode == "two pwrites":
            os.pwrite(fd, head, offset)
            os.pwrite(fd, rest, offset + 12)
        else:
            os.pwritev(fd, [head, rest], offset)
        batches += 1
    written = cpu()
    os.fdatasync(fd)
    synced = cpu()
    done(fd)
    return (written - before) / batches * 1e6, (synced - written) / batches * 1e6


def synced_bandwidth(mode, chunk, total=256 << 20):
    data = os.urandom(chunk)
    fd = fresh()
    if mode == "KEEP_SIZE":
        fallocate(fd, KEEP_SIZE, total)
    elif mode == "size set":
        fallocate(fd, 0, total)
    elif mode == "zeros first":
        zeros = b"\0" * (1 << 20)
        for offset in range(0, total, 1 << 20):
            os.pwrite(fd, zeros, offset)
    os.fsync(fd)
    started = time.monotonic()
    for offset in range(0, total - chunk + 1, chunk):
        os.pwrite(fd, data, offset)
        os.fdatasync(fd)
    elapsed = time.monotonic() - started
    done(fd)
    return total / elapsed / 1e6


print(f"load before: {open('/proc/loadavg').read().split()[:3]}")
print("1. page-cache writes, CPU a 100 B")
for size in [4096, 102400, 106932, 131072, 262144, 1048576]:
    runs = [by_size(size) for _ in range(2)]
    print(f"   {size:>8} B writes: " + ", ".join(f"{r:.1f} ns" for r in runs))
print("2. 107 KB batches, CPU a batch: writes, then the fdatasync")
for mode in ["two pwrites", "one pwritev", "preallocated"]:
    runs = [batch_writes(mode) for _ in range(2)]
    print(f"   {mode:>12}: " + ", ".join(f"{w:.2f} + {s:.2f} us" for w, s in runs))
print("3. fdatasync'd bandwidth")
for chunk in [256 << 10, 1 << 20]:
    for mode in ["growing", "KEEP_SIZE", "size set", "zeros first"]:
        runs = [synced_bandwidth(mode, chunk) for _ in range(2)]
        print(f"   {chunk >> 10:>5} KiB chunks, {mode:>11}: " + ", ".join(f"{r:.0f} MB/s" for r in runs))
