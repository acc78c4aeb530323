"""``faust -A docket_apps.clerk worker``: a Clerk worker, the same as ``docket clerk``
(without ``--wait``).

``app``: the Clerk's Faust app (agents/clerk.py ``build``), data directory
``$DOCKET_DATA_ROOT/<prefix>-clerk``; Faust's web server (on by default under
``faust worker``) serves ``/metrics`` on DOCKET_CLERK_WEB_PORT unless ``--web-port``
says otherwise. Its worker first runs agents/clerk.py ``preflight`` (Kafka answers,
every configured output topic and the results, divergences and entities topics
exist; otherwise ``Error: ...`` and exit status 1).
"""

from __future__ import annotations

from functools import partial

from agents import clerk as _clerk
from docket_apps import settings_or_exit

settings = settings_or_exit()
data_dir = _clerk.default_data_dir(settings)
app = _clerk.build(settings, data_dir, settings.clerk_web_port)
app.docket_preflight = partial(_clerk.preflight, settings, data_dir)
