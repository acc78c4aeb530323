"""Fixtures for the pipeline tests: settings with few partitions and a short Warden
TTL (so expiry happens inside a 10-second stream), and docket worker processes that
are always cleaned up."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from app.settings import Settings
from tests.integration.procs import Worker, killed_at_teardown, worker_env

PIPELINE_PARTITIONS = 4
PIPELINE_TTL_MS = 2_000  # stream time; the workloads span ~10 s of it (1 ms per event)


@pytest.fixture
def pipeline_ttl_ms() -> int:
    """The Warden TTL of ``pipeline_settings``; a test module may override this fixture."""
    return PIPELINE_TTL_MS


@pytest.fixture
def pipeline_env(monkeypatch: pytest.MonkeyPatch, pipeline_ttl_ms: int) -> None:
    """Environment for ``pipeline_settings``; set before docket_settings loads it."""
    monkeypatch.setenv("DOCKET_PARTITIONS", str(PIPELINE_PARTITIONS))
    monkeypatch.setenv("DOCKET_IDEMPOTENCY_TTL_MS", str(pipeline_ttl_ms))
    monkeypatch.setenv("DOCKET_INSTANCES", "a,b")


@pytest.fixture
async def pipeline_settings(pipeline_env: None, pipeline_ttl_ms: int, docket_settings: Settings) -> Settings:
    """docket_settings (own prefix, topics created, own data root) with
    PIPELINE_PARTITIONS partitions and a ``pipeline_ttl_ms`` Warden TTL."""
    assert docket_settings.partitions == PIPELINE_PARTITIONS
    assert docket_settings.idempotency_ttl_ms == pipeline_ttl_ms
    return docket_settings


@pytest.fixture
async def workers(pipeline_settings: Settings, tmp_path: Path) -> AsyncIterator[Callable[..., Worker]]:
    """``spawn(instance_id, data_dir=None, **env) -> Worker`` (not started yet). Every
    worker spawned is SIGKILLed at teardown if it is still running, whatever the
    test's outcome."""
    spawned: list[Worker] = []

    def spawn(instance_id: str, data_dir: Path | None = None, **env: str) -> Worker:
        worker = Worker(
            instance=instance_id,
            env=worker_env(pipeline_settings, **env),
            data_dir=data_dir or pipeline_settings.data_root / f"{pipeline_settings.app_id(instance_id)}",
            log_dir=tmp_path / "logs",
        )
        spawned.append(worker)
        return worker

    with killed_at_teardown(spawned):
        yield spawn
