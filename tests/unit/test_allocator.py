"""tables/allocator.py: an instance fixes glibc's mmap threshold, so RocksDB's memtable
blocks (256 KiB with the Ledger's 2 MiB write buffers) are mmapped and go back to the
OS when freed, instead of staying in the heap after glibc's dynamic threshold rose.

Each case runs in a process of its own: the threshold is process-wide state."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from agents.instance import LEDGER_ROCKSDB_OPTIONS
from tables.allocator import MMAP_THRESHOLD_BYTES, fixed_mmap_threshold

# What a memtable does: RocksDB's arena takes blocks of arena_block_size, by default
# write_buffer_size / 8 (RocksDB's ColumnFamilyOptions); an earlier, larger block
# freed first raises glibc's dynamic threshold above it.
BLOCK = LEDGER_ROCKSDB_OPTIONS["write_buffer_size"] // 8
PROBE = textwrap.dedent(f"""
    import ctypes, sys
    from tables.allocator import fixed_mmap_threshold
    class MallInfo2(ctypes.Structure):
        _fields_ = [(f, ctypes.c_size_t) for f in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                    "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.mallinfo2.restype = MallInfo2
    if sys.argv[1] == "fixed":
        assert fixed_mmap_threshold()
    libc.free(libc.malloc(4 * 1024 * 1024))  # an mmapped chunk freed: the threshold rises
    before = libc.mallinfo2().hblkhd
    block = libc.malloc({BLOCK})
    print(libc.mallinfo2().hblkhd - before)
    libc.free(block)
""")


def mmapped_bytes_of_a_block(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout)


def glibc() -> bool:
    return subprocess.run(
        [sys.executable, "-c", "import ctypes; ctypes.CDLL('libc.so.6').gnu_get_libc_version"],
        capture_output=True, check=False).returncode == 0


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or not glibc(),
                                reason="glibc's allocator only")


def test_memtable_block_is_above_the_threshold() -> None:
    assert BLOCK > MMAP_THRESHOLD_BYTES


def test_fixed_threshold_mmaps_a_memtable_block_after_a_larger_free() -> None:
    assert mmapped_bytes_of_a_block("fixed") >= BLOCK


def test_glibcs_dynamic_threshold_would_put_it_in_the_heap() -> None:
    # the premise of tables/allocator.py: without the fix the same block is not mmapped
    assert mmapped_bytes_of_a_block("default") == 0


def test_returns_true_where_it_applies() -> None:
    assert fixed_mmap_threshold() is True
