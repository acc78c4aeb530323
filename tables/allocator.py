"""Give the memory of RocksDB's flushed memtables back to the operating system.

RocksDB builds each memtable out of arena blocks of ``write_buffer_size / 8`` bytes
(its default ``arena_block_size``: 512 KiB with the Ledger's 4 MiB write buffers,
agents/instance.py LEDGER_ROCKSDB_OPTIONS) taken from malloc, and frees them when the
memtable is flushed. glibc serves a block that large with mmap, and munmaps it on
free, only while its mmap threshold is below the block size; the threshold starts at
128 KiB but is *dynamic*: every free of an mmapped chunk raises it to that chunk's size
(up to 32 MiB; glibc malloc/malloc.c, "mmap_threshold"). After the first few flushes
the blocks come from the heap instead, a freed block between live chunks cannot be
returned by shrinking the heap, and a worker's RSS climbs to a new high-water mark.

Measured in `make soak`'s setting (150 events/s, 8 partitions, 2 MiB memtables,
2026-12-02): instance a's heap held 18.6 MiB free of 46.4 MiB ten minutes in, and its
RSS rose by about 1 MiB a minute, while RocksDB's memtables held 4 to 12 MiB in all
(glibc's ``mallinfo2`` and RocksDB's ``rocksdb.cur-size-all-mem-tables``, read in the
worker every 30 s).

Two remedies were measured. Fixing the threshold at 128 KiB (``mallopt``, as the
``MALLOC_MMAP_THRESHOLD_`` variable does) kept the RSS flat, but every allocation of
128 KiB or more (fetch responses, record batches) then took fresh pages from the kernel:
the instances spent 12 to 16% more CPU per event in ``python -m bench.drain --events
60000`` (instance a's CPU per Clerk CPU 1.36 and 1.41 against 1.21 and 1.21). What
docket does instead is :func:`trim_heap`, every :data:`TRIM_INTERVAL_S`: glibc's
``malloc_trim(0)``, which since glibc 2.8 hands every whole free page of every arena
back with ``madvise(MADV_DONTNEED)``, wherever it lies in the heap. Allocations keep
their usual path; a trimmed page costs a page fault only when the heap uses it again.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# How often an instance trims its heap (seconds): a memtable of the Ledger's fills in
# seconds to minutes (4 MiB at about 19 KB/s per partition at 150 events/s on 8
# partitions), so freed blocks wait at most this long.
TRIM_INTERVAL_S = 10.0


def _glibc():
    """glibc's handle, or None when the C library is another one (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  glibc only
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return libc


_LIBC = _glibc()


def trim_heap() -> bool | None:
    """Return every whole free page of glibc's heap to the OS (``malloc_trim(0)``).
    True when memory was released, False when there was none to release, None when
    the C library is not glibc (nothing done). Never raises. Cost: a walk of the
    heap's free chunks and one madvise per free run of pages; 1.8 ms for 16 MiB of free
    memtable blocks (the probe of tests/unit/test_allocator.py on the 2-core box)."""
    if _LIBC is None:
        return None
    return bool(_LIBC.malloc_trim(0))
