"""The fault console (`docket console`, issue 16): a stack of its own (broker, instances
a, b, c with two required copies, the Clerk, a workload) and one page on 127.0.0.1
where a person kills, slows and corrupts nodes live and watches the Clerk hold.

- console/stack.py: the processes and the controls (kill, restart, slow, corrupt,
  broker stop/start), with their refusals;
- console/monitor.py: what the page shows, read from the topics and /metrics;
- console/safety.py: every published result checked against a pure replay;
- console/web.py: the aiohttp server (page, State JSON, event stream, controls);
- console/cli.py: the `docket console` command.

Spec: specs/console.allium.
"""
