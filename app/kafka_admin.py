"""Small helpers around aiokafka shared by the broker launcher, topic management and tests."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator


# Every Kafka consumer docket runs reads with this isolation level (DESIGN.md invariant
# 8): a record of an aborted transaction has no effect, and one of a transaction still
# open is read once it commits. Faust's worker consumers get it in app/faust_tuning.py.
ISOLATION_LEVEL = "read_committed"


class KafkaUnreachable(ConnectionError):
    """No broker answered at the bootstrap address."""


@contextlib.contextmanager
def quiet(logger_name: str = "aiokafka") -> Iterator[None]:
    """Silence a library logger for a block where failures are expected and handled
    (aiokafka logs every refused connection at ERROR, which would reach the terminal
    through logging's last-resort handler)."""
    logger = logging.getLogger(logger_name)
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(previous)


async def connect_admin(bootstrap: str, timeout_s: float = 30.0, settings=None, component: str = "admin"):
    """A started AIOKafkaAdminClient with docket's connection settings (``settings``:
    Settings or a KafkaConnection; None: the DOCKET_KAFKA_* environment), or
    KafkaUnreachable naming the address. Raises KafkaAuthError (app/kafka_config.py),
    naming the setting to fix, when Kafka answers but refuses the credentials or the
    TLS handshake: waiting cannot help, so callers that poll must not retry it."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaConnectionError

    from app.kafka_config import check_connection, client_kwargs

    kwargs = client_kwargs(settings, component, "admin", bootstrap_servers=bootstrap)
    # a default: DOCKET_KAFKA_EXTRA's request_timeout_ms, if any, wins
    kwargs.setdefault("request_timeout_ms", int(timeout_s * 1000))
    with quiet():
        reached = await check_connection(settings, bootstrap, min(timeout_s, 10.0), component)
    if not reached:
        raise KafkaUnreachable(f"cannot reach Kafka at {bootstrap}")
    admin = AIOKafkaAdminClient(**kwargs)
    try:
        with quiet():
            await asyncio.wait_for(admin.start(), timeout_s)
    except (TimeoutError, KafkaConnectionError, OSError):
        await admin.close()
        raise KafkaUnreachable(f"cannot reach Kafka at {bootstrap}") from None
    return admin
