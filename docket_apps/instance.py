"""``DOCKET_INSTANCE_ID=a faust -A docket_apps.instance worker``: a worker of one
redundant instance, the same as ``docket instance --id a`` (without ``--wait`` and
``--inject-faults``).

``app``: the instance's Faust app (agents/instance.py ``build``), data directory
``$DOCKET_DATA_ROOT/<prefix>-<id>``; its worker first runs
agents/instance.py ``preflight`` (Kafka answers, the topics exist, the input topic is
LogAppendTime; otherwise ``Error: ...`` and exit status 1). DOCKET_INSTANCE_ID unset or
not an id: exit status 2 at import, naming it.
"""

from __future__ import annotations

import sys
from functools import partial

from agents import instance as _instance
from docket_apps import settings_or_exit

settings = settings_or_exit()
if not settings.instance_id:
    print("docket: configuration error: DOCKET_INSTANCE_ID is not set; `faust -A docket_apps.instance "
          "worker` runs the instance it names, e.g. DOCKET_INSTANCE_ID=a", file=sys.stderr)
    raise SystemExit(2)

instance_id: str = settings.instance_id
data_dir = _instance.default_data_dir(settings, instance_id)
app = _instance.build(settings, instance_id, data_dir)
app.docket_preflight = partial(_instance.preflight, settings, instance_id, data_dir)
