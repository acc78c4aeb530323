"""Give RocksDB's flushed memtables back to the operating system.

RocksDB builds each memtable out of arena blocks of ``write_buffer_size / 8`` bytes
(its default ``arena_block_size``: 256 KiB with the Ledger's 2 MiB write buffers,
agents/instance.py LEDGER_ROCKSDB_OPTIONS) taken from malloc, and frees them when the
memtable is flushed. glibc serves a block that large with mmap, and munmaps it on free, only while
its mmap threshold is below the block size; the threshold starts at 128 KiB but is
*dynamic*: every free of an mmapped chunk raises it to that chunk's size (up to 32 MiB,
glibc malloc/malloc.c, "mmap_threshold"). After the first few flushes the blocks come
from the heap instead, where a freed block between live ones cannot be returned, and a
worker's RSS climbs with every flush to a new high-water mark.

Measured in `make soak`'s setting (150 events/s, 8 partitions, 2026-12-02): instance
a's heap held 18.6 MiB free of 46.4 MiB ten minutes in and its RSS rose by about 1
MiB a minute with memtables of 4 to 12 MiB in all; with the threshold fixed at 128 KiB
the blocks are mmapped, their memory goes back on each flush, and the heap held 5 MiB
free (python -m bench.soak, glibc's mallinfo2 and RocksDB's
``rocksdb.cur-size-all-mem-tables`` read in the worker every 30 s).

Setting the threshold through ``mallopt`` (as the ``MALLOC_MMAP_THRESHOLD_``
environment variable does) turns the dynamic adjustment off. Larger allocations then
cost an mmap and a munmap each: a memtable block every few hundred KiB written, not a
per-event cost.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("docket.allocator")

M_MMAP_THRESHOLD = -3  # glibc malloc.h
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's initial threshold: below a 256 KiB memtable block


def fixed_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes for this process, so that
    allocations of at least that size (RocksDB's memtable blocks) are mmapped and given
    back to the OS when freed. Call it before RocksDB opens. Returns True when set,
    False when the C library is not glibc (musl, macOS: nothing is changed, and their
    allocators do not have this dynamic threshold). Never raises."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # glibc only  # noqa: B018
    except (OSError, AttributeError):
        log.debug("not glibc: the allocator's mmap threshold is left as it is")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, threshold) == 1
