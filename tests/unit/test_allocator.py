"""tables/allocator.py: an instance trims glibc's heap on a timer, so the pages of
RocksDB's flushed memtable blocks (512 KiB each with the Ledger's 4 MiB write buffers)
go back to the OS even when glibc's dynamic mmap threshold has put them in the heap.

Each case runs in a process of its own: the heap and the threshold are process-wide."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from agents.instance import LEDGER_ROCKSDB_OPTIONS
from tables.allocator import trim_heap

# What a memtable does: RocksDB's arena takes blocks of arena_block_size, by default
# write_buffer_size / 8 (RocksDB's ColumnFamilyOptions), and frees them at the flush.
BLOCK = LEDGER_ROCKSDB_OPTIONS["write_buffer_size"] // 8
BLOCKS = 64  # 16 MiB of them
PROBE = textwrap.dedent(f"""
    import ctypes, sys, time
    from tables.allocator import trim_heap
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]

    def rss_kib():
        return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])

    libc.free(libc.malloc(4 * 1024 * 1024))  # an mmapped chunk freed: the threshold rises
    blocks, guards = [], []
    for _ in range({BLOCKS}):
        block = libc.malloc({BLOCK})
        libc.memset(block, 1, {BLOCK})  # resident, as a filled memtable is
        blocks.append(block)
        # a live chunk after each, too large for glibc's free lists, so it comes from the
        # top of the heap: the freed blocks cannot merge, nor the heap shrink past them
        guards.append(libc.malloc(32 * 1024))
    for block in blocks:
        libc.free(block)
    before = rss_kib()
    began = time.perf_counter()
    released = trim_heap() if sys.argv[1] == "trim" else None
    took_ms = (time.perf_counter() - began) * 1000
    print(before - rss_kib(), released, took_ms)
""")


def run_probe(mode: str) -> tuple[int, str, float]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    freed_kib, released, took_ms = out.stdout.split()
    return int(freed_kib), released, float(took_ms)


def glibc() -> bool:
    return sys.platform.startswith("linux") and trim_heap() is not None


pytestmark = pytest.mark.skipif(not glibc(), reason="glibc's allocator only")


def test_freed_memtable_blocks_stay_resident_without_a_trim() -> None:
    # the premise of tables/allocator.py: glibc keeps them in the heap
    freed_kib, _, _ = run_probe("keep")
    assert freed_kib < BLOCK // 1024


def test_trim_hands_freed_memtable_blocks_back() -> None:
    freed_kib, released, _ = run_probe("trim")
    assert released == "True"
    assert freed_kib >= BLOCKS * BLOCK // 1024 * 9 // 10


def test_trim_with_nothing_to_release_is_harmless() -> None:
    trim_heap()
    assert trim_heap() in (True, False)
