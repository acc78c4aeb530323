"""Read a *stopped* worker's Ledger straight from its RocksDB files.

Faust keeps one RocksDB database per table partition, under the worker's data
directory: ``<data_dir>/<app id>-data/v1/tables/ledger-<partition>.db`` (the exact
nesting is Faust's; this module finds the ``ledger-<n>.db`` directories wherever
they are below ``data_dir``). Each is opened read-only in raw mode, so a dump never
changes what it inspects; the worker must not be running (RocksDB allows a
read-only open beside a writer, but the view would be a moving target).

Used to compare instances with each other and with the oracle (chaos/replay.py):

    dump_entities(data_dir_a) == dump_entities(data_dir_b) == {
        key: {"state": s, "version": v} for key, (s, v) in oracle.states.items()}
"""

from __future__ import annotations

import re
from pathlib import Path

from tables.ledger import ENTITY_PREFIX, EntityRecord

_DB_NAME = re.compile(r"(?P<table>.+)-(?P<partition>\d+)\.db")


def ledger_paths(data_dir: Path | str, table: str = "ledger") -> dict[int, Path]:
    """partition -> RocksDB directory of ``table`` below ``data_dir``."""
    found: dict[int, Path] = {}
    for path in sorted(Path(data_dir).rglob(f"{table}-*.db")):
        m = _DB_NAME.fullmatch(path.name)
        if not (m and m["table"] == table and path.is_dir()):
            continue
        partition = int(m["partition"])
        if partition in found:
            raise ValueError(f"two databases for {table} partition {partition}: {found[partition]} and {path}")
        found[partition] = path
    return found


def _open_read_only(path: Path):
    from rocksdict import AccessType, Options, Rdict

    return Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())


def dump_raw(data_dir: Path | str, table: str = "ledger") -> dict[int, dict[bytes, bytes]]:
    """partition -> {key: value} of every table key (entities and Warden versions),
    without Faust's own bookkeeping (the persisted changelog offset)."""
    out: dict[int, dict[bytes, bytes]] = {}
    for partition, path in sorted(ledger_paths(data_dir, table).items()):
        db = _open_read_only(path)
        try:
            out[partition] = {k: v for k, v in db.items() if not k.startswith(b"__faust")}
        finally:
            db.close()
    return out


def dump_partition(path: Path | str) -> dict[str, EntityRecord]:
    """Every entity record in one partition's database, by entity key."""
    db = _open_read_only(Path(path))
    try:
        out = {}
        for key, value in db.items(from_key=ENTITY_PREFIX):
            if not key.startswith(ENTITY_PREFIX):
                break
            out[key[len(ENTITY_PREFIX):].decode("utf-8")] = EntityRecord.decode(value)
        return out
    finally:
        db.close()


def dump_ledger(data_dir: Path | str, table: str = "ledger") -> dict[int, dict[str, EntityRecord]]:
    """partition -> {entity key: EntityRecord} for every ledger database of the worker."""
    return {p: dump_partition(path) for p, path in sorted(ledger_paths(data_dir, table).items())}


def dump_entities(data_dir: Path | str, table: str = "ledger") -> dict[str, dict]:
    """{entity key: {"state": ..., "version": ...}} over all partitions of a stopped
    worker: the domain's entities (docket's own Ledger keys, the activation histories
    of app/versions.py, are left out, as the replay reference leaves them out). An
    entity found in two partitions is an error (the affinity key puts each entity in
    exactly one)."""
    from app.versions import RESERVED_PREFIX

    out: dict[str, dict] = {}
    where: dict[str, int] = {}
    for partition, entities in dump_ledger(data_dir, table).items():
        for key, rec in entities.items():
            if key.startswith(RESERVED_PREFIX):
                continue
            if key in out:
                raise ValueError(f"entity {key!r} is in partitions {where[key]} and {partition}")
            out[key] = {"state": rec.state, "version": rec.version}
            where[key] = partition
    return out
