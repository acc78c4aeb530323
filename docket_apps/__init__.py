"""Modules that hold a docket Faust app as ``app``, built at import from the DOCKET_*
settings, for Faust's own command line:

    DOCKET_INSTANCE_ID=a faust -A docket_apps.instance worker   # a worker of instance a
    faust -A docket_apps.clerk worker                           # a Clerk worker

Each builds exactly what ``docket instance --id a`` / ``docket clerk`` build
(agents/instance.py, agents/clerk.py ``build``), and its worker, a
:class:`agents.worker.DocketWorker`, runs the same start-up checks (``preflight``)
and process tuning before it starts. The data directory is
``$DOCKET_DATA_ROOT/<prefix>-<role>``; Faust's environment variables are ignored
(agents/worker.py new_app), Faust's ``worker`` flags (``--web-port``, ``--web-bind``,
``--without-web``, ``--loglevel``) apply.
"""

from __future__ import annotations

import sys

from agents.plumbing import worker_settings
from app.registry import check_domain
from app.settings import ConfigError, Settings


def settings_or_exit() -> Settings:
    """The DOCKET_* settings (:func:`agents.plumbing.worker_settings`), DOCKET_DOMAIN
    checked (:func:`app.registry.check_domain`); on a ConfigError the process exits 2
    with docket's message (the same as ``docket``'s), not a traceback from inside
    Faust's app lookup."""
    try:
        settings = worker_settings()  # DOCKET_EVENT_LOOP installed before Faust's worker creates its loop
        check_domain(settings.domain)
        return settings
    except ConfigError as exc:
        print(f"docket: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
