"""The dependencies whose private API docket uses (app/private_api.py) keep the shape
docket relies on, and are pinned to the minor version that shape was tested with (a rule of the build, not
of the system's behaviour: no spec rule; "PrivateApiPinned" below names it). A failure names the attribute and where
docket uses it: upgrading such a dependency means reading what changed there first."""

from __future__ import annotations

import ast
import hashlib
import inspect
import re
import tomllib
from importlib.metadata import version
from pathlib import Path

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from agents.plumbing import HistogramBatch, observe_many
from agents.intake import FAUST_INTERNALS
from app.batching import AIOKAFKA_INTERNALS
from app.private_api import PRIVATE_API, missing

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("app", "agents", "tables", "chaos", "launcher", "docket_apps")

# Underscore names that are public API: namedtuple's methods, and sys._current_frames
# (documented in the sys module's reference; agents/stopping.py waiting_on).
PUBLIC_UNDERSCORE = {"_replace", "_asdict", "_fields", "_make", "_current_frames"}

# Sources docket keeps a modified copy of, or replaces: a change there must be read and
# carried into docket's copy (the digest is of the installed version's source).
COPIED_SOURCES = {
    # launcher/stack.py OrderedManager.loop is honcho's loop with the ordered stop added
    ("honcho.manager", "Manager.loop"): "1a921f8fa9ebc0ce579c84f90325a8b305f09f11e1d82cce3ed90a04c405562c",
    # launcher/stack.py OrderedManager._start forks _relay instead of the process itself
    ("honcho.manager", "Manager._start"): "b93592d93254ad98c5f4d5d15fdfdc507cf126a86036b5c61e91945a9c609c9e",
    # launcher/stack.py OrderedManager.terminate stops in two steps
    ("honcho.manager", "Manager.terminate"): "f6003c1b6850ffc192b8258c89a5fe8ca5f2622b9f6d4be21736035fc9dd15dc",
    # app/api.py _Server.__call__ makes docket's RequestHandler the way this does
    ("aiohttp.web_server", "Server.__call__"): "c5700549e688b1642127dabf810686e87af8acb2be722a02847646ffd1b31401",
}


def test_private_api_pinned_every_private_attribute_keeps_its_shape() -> None:
    """PrivateApiPinned: every private attribute of app/private_api.py exists on the
    installed version (on the class, or an instance built without a network);
    the failure lists each one that does not, with where docket uses it."""
    gone = [f"{dist}: {owner}.{attr} (used by {where}): {problem}"
            for dist, owner, attr, where in PRIVATE_API
            if (problem := missing(owner, attr)) is not None]
    assert not gone, "private API docket uses changed shape:\n" + "\n".join(gone)


def test_private_api_pinned_copied_sources_unchanged() -> None:
    """PrivateApiPinned: the honcho and aiohttp methods docket keeps a modified copy of
    (or replaces) are the ones the copy was made from."""
    import importlib

    changed = []
    for (module, qualname), digest in COPIED_SOURCES.items():
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        if hashlib.sha256(inspect.getsource(obj).encode()).hexdigest() != digest:
            changed.append(f"{module}.{qualname}")
    assert not changed, (f"changed upstream: {', '.join(changed)}: read the change, carry it into docket's copy "
                         "(launcher/stack.py OrderedManager, app/api.py _Server), then update the digest here")


def test_private_api_pinned_histogram_internals_count_like_observe() -> None:
    """PrivateApiPinned: observe_many and HistogramBatch, which write prometheus_client's
    buckets and sum directly, expose exactly what as many observe() calls do."""
    def exposition(fill) -> str:
        registry = CollectorRegistry()
        h = Histogram("probe_seconds", "probe", registry=registry, buckets=(0.001, 0.01, 0.1, 1.0))
        fill(h)
        # all but the creation time
        return "\n".join(line for line in generate_latest(registry).decode().splitlines() if "_created" not in line)

    values = [0.0005, 0.003, 0.003, 0.05, 0.5, 2.0]

    def by_observe(h) -> None:
        for v in values:
            h.observe(v)
        for _ in range(7):
            h.observe(0.02)

    def by_internals(h) -> None:
        batch = HistogramBatch(h)
        for v in values:
            batch.add(v)
        batch.flush()
        observe_many(h, 0.02, 7)

    assert exposition(by_internals) == exposition(by_observe)
    assert HistogramBatch(Histogram("p", "p", registry=CollectorRegistry())).bounds, \
        "prometheus_client Histogram._upper_bounds is gone: HistogramBatch fell back to observe()"


def _minor(v: str) -> tuple[int, int]:
    major, minor = v.split(".")[:2]
    return int(major), int(minor)


def test_private_api_pinned_to_tested_minor_versions() -> None:
    """PrivateApiPinned: each distribution of app/private_api.py (and faust-streaming
    and aiokafka, for agents/intake.py and app/batching.py) has a dependency in
    pyproject.toml of the form `>=X.Y.Z,<X.Y+1`, and the installed version is of
    that minor version."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = {}
    for dep in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*(.*)", dep)
        spec[m.group(1).lower()] = m.group(3).replace(" ", "")
    wrong = []
    for dist in sorted({d for d, *_ in PRIVATE_API} | {"faust-streaming", "aiokafka"}):
        pin = spec.get(dist)
        m = re.fullmatch(r">=(\d+)\.(\d+)(?:\.\d+)?,<(\d+)\.(\d+)", pin or "")
        if m is None:
            wrong.append(f"{dist}: {pin!r} in pyproject.toml is not >=X.Y.Z,<X.Y+1")
            continue
        low, high = (int(m.group(1)), int(m.group(2))), (int(m.group(3)), int(m.group(4)))
        if high != (low[0], low[1] + 1):
            wrong.append(f"{dist}: {pin} allows more than one minor version")
        if _minor(version(dist)) != low:
            wrong.append(f"{dist}: installed {version(dist)}, pinned {pin}")
    assert not wrong, "\n".join(wrong)


def _scan() -> tuple[dict[str, list[str]], set[str]]:
    """(private attribute -> where docket's sources read it on another object,
    private names docket defines itself)."""
    used: dict[str, list[str]] = {}
    own: set[str] = set()
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            where = path.relative_to(ROOT)
            for n in ast.walk(tree):
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    own.add(n.name)
                elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                    own.add(n.id)
                elif isinstance(n, ast.arg):
                    own.add(n.arg)
                elif isinstance(n, ast.alias):
                    own.add(n.asname or n.name)
                elif (isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)
                      and isinstance(n.value, ast.Name) and n.value.id in ("self", "cls")):
                    own.add(n.attr)
            for n in ast.walk(tree):
                attr = None
                if isinstance(n, ast.Attribute) and n.attr.startswith("_") and not n.attr.startswith("__"):
                    base = n.value
                    if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                        continue
                    if isinstance(base, ast.Call) and getattr(base.func, "id", None) == "super":
                        continue
                    attr = n.attr
                elif (isinstance(n, ast.Call) and getattr(n.func, "id", None) in ("getattr", "hasattr", "setattr")
                      and len(n.args) >= 2 and isinstance(n.args[1], ast.Constant)
                      and isinstance(n.args[1].value, str) and n.args[1].value.startswith("_")
                      and not n.args[1].value.startswith("__")):
                    attr = n.args[1].value
                if attr is not None:
                    used.setdefault(attr, []).append(f"{where}:{n.lineno}")
    return used, own


def test_private_api_pinned_no_unlisted_private_access() -> None:
    """PrivateApiPinned: every `._name` (or getattr(x, "_name")) docket's sources read
    on an object not their own is listed in app/private_api.py, agents/intake.py
    FAUST_INTERNALS or app/batching.py AIOKAFKA_INTERNALS, or is a name docket itself
    defines (a name docket also defines hides a third-party one: list those by hand)."""
    used, own = _scan()
    listed = ({attr for _, _, attr, _ in PRIVATE_API} | {attr for _, attr in FAUST_INTERNALS}
              | {attr for _, _, attr in AIOKAFKA_INTERNALS} | PUBLIC_UNDERSCORE)
    unlisted = {attr: where for attr, where in used.items() if attr not in listed and attr not in own}
    assert not unlisted, ("private attributes of other packages used but not listed in app/private_api.py "
                          "(list them, and pin their distribution to its minor version):\n"
                          + "\n".join(f"{a}: {', '.join(w)}" for a, w in sorted(unlisted.items())))


def test_any_compression_codec_every_kafka_codec_decodes() -> None:
    """AnyCompressionCodec: a record batch compressed with each of Kafka's codecs
    (gzip 1, snappy 2, lz4 3, zstd 4: the batch header's attribute bits) reads back
    through aiokafka's record reader, the one its fetcher uses, record for record.
    Without cramjam (aiokafka's lz4, snappy and zstd extras) codecs 2 to 4 raise
    UnsupportedCodecError, which crashed a worker fetching such a batch."""
    from aiokafka.record.default_records import DefaultRecordBatchBuilder
    from aiokafka.record.memory_records import MemoryRecords

    values = [b'{"idempotency_key":"k-%d","event_name":"stock.adjust","payload":{}}' % i for i in range(20)]
    for codec in (1, 2, 3, 4):
        builder = DefaultRecordBatchBuilder(magic=2, compression_type=codec, is_transactional=0, producer_id=-1,
                                            producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
        for i, value in enumerate(values):
            builder.append(i, timestamp=1_000 + i, key=b"s1", value=value, headers=[])
        raw = bytes(builder.build())
        batch = MemoryRecords(raw).next_batch()
        assert batch.compression_type == codec and len(raw) < sum(map(len, values)), codec
        assert [(r.offset, r.key, r.value) for r in batch] == [(i, b"s1", v) for i, v in enumerate(values)], codec
