"""Building blocks for driving the Usher and Arbiter without a broker."""

from __future__ import annotations

import random

import orjson

import app.domains  # noqa: F401
from agents.usher import Usher
from app.records import InputRecord, partition_for
from app.registry import registry
from tables.ledger import Ledger
from tables.registrar import Registrar
from tables.store import MemoryStore
from tables.warden import Warden

PARTITIONS = 4
TTL = 300_000
inventory = registry.get("inventory")


def envelope(ikey: str, name: str, payload) -> bytes:
    return orjson.dumps({"idempotency_key": ikey, "event_name": name, "payload": payload})


class Stream:
    """An input topic in memory: assigns partitions by murmur2 and offsets in order."""

    def __init__(self, partitions: int = PARTITIONS) -> None:
        self.partitions = partitions
        self.records: list[InputRecord] = []
        self._next: dict[int, int] = {}

    def add(self, key: bytes | None, value: bytes | None, ts: int, partition: int | None = None) -> InputRecord:
        if partition is None:
            partition = partition_for(key, self.partitions) if key is not None else 0
        offset = self._next.get(partition, 0)
        self._next[partition] = offset + 1
        rec = InputRecord(partition, offset, ts, key, value)
        self.records.append(rec)
        return rec

    def event(self, ikey: str, name: str, payload, ts: int) -> InputRecord:
        return self.add(payload["sku"].encode(), envelope(ikey, name, payload), ts)


def usher(store: MemoryStore | None = None, capacity: int = 1000, ttl: int = TTL,
          instance: str = "a", domain=inventory) -> Usher:
    """An Usher over a MemoryStore; ``domain``: a Domain, or a version number -> Domain
    mapping (app/versions.py DomainVersions)."""
    store = store or MemoryStore()
    return Usher(instance, domain, Registrar(Ledger(store), capacity), Warden(store, ttl), PARTITIONS)


def run(u: Usher, records, batch_size: int, committed=lambda p: 0):
    outs = []
    for i in range(0, len(records), batch_size):
        outs.extend(u.process(records[i:i + batch_size], committed))
    return outs


def workload(seed: int, n: int, ttl_jumps: bool = False, jitter_ms: int = 0) -> Stream:
    """Random inventory traffic over few skus (heavy contention), with repeats,
    reused keys and drains to zero. With ``ttl_jumps``, stream time leaps past the
    TTL now and then so keys expire and are used again; ``jitter_ms`` puts record
    timestamps out of order by up to that much (producers' clocks differ)."""
    rng = random.Random(seed)
    s = Stream()
    ts = 1_000_000
    sent: list[tuple[str, str, dict]] = []
    for i in range(n):
        ts += rng.randint(0, 50)
        if ttl_jumps and rng.random() < 0.03:
            ts += TTL + rng.randint(0, 1000)
        r = rng.random()
        if sent and r < 0.12:
            ikey, name, payload = rng.choice(sent)  # exact repeat
        elif sent and r < 0.15:
            ikey = rng.choice(sent)[0]  # reused key, new request
            name, payload = "stock.adjust", {"warehouse": "w0", "sku": rng.choice(["s0", "s1", "s2"]),
                                             "delta": rng.randint(1, 9)}
        else:
            ikey = f"k{i}"
            sku = rng.choice(["s0", "s1", "s2"])
            if rng.random() < 0.4:
                name, payload = "stock.adjust", {"warehouse": rng.choice(["w0", "w1", "w2"]), "sku": sku,
                                                 "delta": rng.choice([rng.randint(1, 30), -rng.randint(1, 30)])}
            else:
                a, b = rng.sample(["w0", "w1", "w2"], 2)
                name, payload = "stock.transfer", {"sku": sku, "from_warehouse": a, "to_warehouse": b,
                                                   "quantity": rng.randint(1, 40)}
        sent.append((ikey, name, payload))
        s.event(ikey, name, payload, ts + (rng.randint(-jitter_ms, jitter_ms) if jitter_ms else 0))
    return s


def entity_state(store: MemoryStore) -> dict:
    ledger = Ledger(store)
    out = {}
    for p in range(PARTITIONS):
        for key, rec in ledger.entities(p):
            out[key] = (rec.state, rec.version)
    return out
