"""The plain Faust app of :mod:`bench.faust_floor`: one agent reading a topic of
docket events and counting them per key in a RocksDB-backed table (one read and one
write, hence one changelog record, per event). Nothing of docket runs in it but its
Faust configuration (:func:`agents.plumbing.faust_settings`: RocksDB store, acks=all,
the shortened fetch wait, web off).

Run by the benchmark as ``python -m bench.faust_floor_app`` with the environment:
DOCKET_* (read by :func:`app.settings.load`), BENCH_FAUST_APP_ID, BENCH_FAUST_TOPIC
and BENCH_FAUST_DATA_DIR.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from app.settings import load

TABLE = "counts"

# Launched exactly as docket's workers are (agents.plumbing.run_worker: no progress
# spinner, whose handler would set the root logger to DEBUG), so the comparison is fair.
KEEP_SPINNER = False


def changelog_topic(app_id: str) -> str:
    """Faust's name for the changelog topic of the table."""
    return f"{app_id}-{TABLE}-changelog"


def build(app_id: str, topic: str, data_dir: Path):
    """The Faust app (imported here: the benchmark imports this module for its names)."""
    import faust

    from agents.plumbing import faust_settings

    settings = load()
    app = faust.App(app_id, **faust_settings(settings, data_dir, None))
    counts = app.Table(TABLE, partitions=settings.partitions, default=int, key_type=bytes, value_type=int)
    source = app.topic(topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                       value_serializer="raw", internal=False)

    @app.agent(source)
    async def count(stream):
        async for key, _value in stream.items():
            counts[key] += 1

    return app


def main() -> None:
    import faust

    settings = load()
    data_dir = Path(os.environ["BENCH_FAUST_DATA_DIR"])
    data_dir.mkdir(parents=True, exist_ok=True)
    asyncio.set_event_loop(asyncio.new_event_loop())  # Faust wants a current loop
    app = build(os.environ["BENCH_FAUST_APP_ID"], os.environ["BENCH_FAUST_TOPIC"], data_dir)
    from agents.plumbing import run_worker

    run_worker(app, settings)


if __name__ == "__main__":
    main()
