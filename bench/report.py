"""The report of a `make bench` run, named ``bench-<date>-<HHMM>``: ``.json`` (everything
measured), ``.md`` (the tables), ``-latency.png`` (latency percentiles and throughput
against the offered rate), ``-timeline.png`` (throughput and p99 over time), the py-spy
collapsed stacks, and the README's benchmark section (the text between
``<!-- bench:begin -->`` and ``<!-- bench:end -->``).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
from pathlib import Path

from bench.common import report_stem
from bench.kafka_native import marginal_cpu
from launcher.broker import kafka_version

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def _get(d: dict | None, *path, default=None):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def _n(x, unit: str = "", digits: int = 0) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, (int, float)):
        return f"{x:,.{digits}f}{unit}"
    return str(x)


def docket_throughput(results: dict) -> float | None:
    """The most results per second any step of the open-model sweep delivered. Never
    more than the highest rate offered: a step delivers what it is sent."""
    rates = _get(results, "kafka_native", "rates", default=[]) or []
    seen = [s["throughput_per_s"] for s in rates if s.get("throughput_per_s")]
    return max(seen, default=None)


def ratios(results: dict) -> dict:
    """docket against the baselines. Against the Faust floor and the Kafka ceiling,
    docket's drain (results/s working off a backlog), because they too are measured
    as fast as they can go over records already there or produced at once; the sweep's
    most results/s delivered stops at the highest rate it offers (10,000/s), so with
    a floor above 3,333 events/s it could never show docket / Faust floor >= 3. Against
    Quix Streams, docket's headline (the highest rate with p99 < 100 ms)."""
    docket = _get(results, "drain", "results_per_s")
    headline = _get(results, "kafka_native", "max_rate_p99_under_100ms")
    floor = _get(results, "faust_floor", "events_per_s")
    quix = _get(results, "quix", "events_per_s")
    ceiling = _get(results, "kafka_ceiling", "producer", "records_per_s")
    return {"docket_per_s": docket_throughput(results),
            "docket_drain_per_s": docket,
            "docket_p99_under_100ms_per_s": headline,
            "docket_over_faust_floor": round(docket / floor, 3) if docket and floor else None,
            "docket_over_quix": round(headline / quix, 3) if headline and quix else None,
            "docket_over_kafka_ceiling": round(docket / ceiling, 5) if docket and ceiling else None}


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} cores ({model or platform.machine()}), Python {platform.python_version()}, "
            f"Kafka {kafka_version()}, one broker; every process on 127.0.0.1")


# --------------------------------------------------------------------------- tables

QUIX_ROW = "Quix Streams stateful app (librdkafka)"
DRAIN_ROLES = (("a", "a"), ("b", "b"), ("clerk", "Clerk"), ("broker", "broker"))


def drain_row(dr: dict) -> tuple[str, str]:
    """The summary row of docket's drain (bench/drain.py via bench.run)."""
    parts = f", {dr['partitions']} partitions" if dr.get("partitions") else ""
    events = f"{_n(dr['events'])} events" if dr.get("events") else "events"
    name = (f"**docket draining a backlog{parts}** (closed model, as the Faust floor: "
            f"{events} produced at once, first to last result)")
    if "error" in dr:
        return name, f"failed: {dr['error']}"
    cpu = dr.get("cpu_us_per_event") or {}
    each = ", ".join(f"{label} {_n(cpu[role])}" for role, label in DRAIN_ROLES if role in cpu)
    return name, (f"**{_n(dr.get('results_per_s'))} results/s**, {_n(dr.get('cpu_us_per_event_total'))} µs of CPU "
                  f"per event" + (f" ({each})" if each else ""))


def summary_rows(results: dict) -> list[tuple[str, str]]:
    kc, ak, ff, qx, dr, kn = (results.get(k) or {}
                              for k in ("kafka_ceiling", "aiokafka", "faust_floor", "quix", "drain", "kafka_native"))
    r = ratios(results)
    rows = []
    if "error" in kc:
        rows.append(("Kafka ceiling", f"failed: {kc['error']}"))
    elif kc:
        p = kc.get("producer", {})
        rows.append((f"Kafka ceiling: ProducerPerformance, {_n(p.get('record_bytes'))}-byte records, acks=all",
                     f"{_n(p.get('records_per_s'))} records/s (p99 {_n(p.get('p99_ms'))} ms)"))
        rows.append(("Kafka ceiling: ConsumerPerformance", f"{_n(_get(kc, 'consumer', 'records_per_s'))} records/s"))
    if "error" in ak:
        rows.append(("aiokafka", f"failed: {ak['error']}"))
    elif ak:
        produce = f"{_n(_get(ak, 'produce', 'records_per_s'))} records/s"
        if "produce_batch" in ak:
            produce += f" (send_batch: {_n(_get(ak, 'produce_batch', 'records_per_s'))})"
        rows.append(("aiokafka produce loop", produce))
        rows.append(("aiokafka consume loop", f"{_n(_get(ak, 'consume', 'records_per_s'))} records/s"))
    if "error" in ff:
        rows.append(("Faust floor", f"failed: {ff['error']}"))
    elif ff:
        rows.append(("Faust floor: one agent, a RocksDB table update per event", f"{_n(ff.get('events_per_s'))} events/s"))
    if "error" in qx:
        rows.append((QUIX_ROW, f"failed: {qx['error']}"))
    elif qx:
        rows.append((QUIX_ROW, f"{_n(qx.get('events_per_s'))} events/s, "
                               f"{_n(qx.get('cpu_us_per_event'))} µs of CPU per event"))
    if dr:
        rows.append(drain_row(dr))
    if "error" in kn:
        rows.append(("docket over Kafka", f"failed: {kn['error']}"))
    elif kn:
        parts = f", {kn['partitions']} partitions" if kn.get("partitions") else ""
        rows.append((f"**docket over Kafka{parts}: highest rate with p99 < 100 ms** (open model, intended send -> result published)",
                     f"**{_headline(kn)}**"))
        rows.append(("docket over Kafka: highest rate sustained (all answered, >= 90% delivered)",
                     _n(kn.get("max_sustained_rate"), " events/s")))
        rows.append(("docket over Kafka: most results/s delivered at any rate (at most the rate offered)",
                     _n(r["docket_per_s"], " results/s")))
        first = next(iter(marginal_cpu(kn)), None)
        if first is not None:
            what = f"docket over Kafka: CPU per event above the idle stack at {_n(first['rate'])} events/s (every process)"
            rows.append((what, f"{_n(first['total_us'])} µs: every core of the box at {_n(first['bound_per_s'], ' events/s')}"))
        for other in kn.get("by_partitions") or []:
            if "error" in other:
                rows.append((f"docket over Kafka, {other['partitions']} partitions", f"failed: {other['error']}"))
                continue
            rows.append((f"**docket over Kafka, {other['partitions']} partitions: highest rate with p99 < 100 ms**",
                         f"**{_headline(other)}** (sustained: {_n(other.get('max_sustained_rate'), ' events/s')})"))
    h = results.get("http") or {}
    if "error" in h:
        rows.append(("docket over HTTP", f"failed: {h['error']}"))
    for runs in http_runs(results):
        parts = f", {runs['partitions']} partitions" if runs.get("partitions") else ""
        if "error" in runs:
            rows.append((f"docket over HTTP{parts}", f"failed: {runs['error']}"))
            continue
        best = http_headline(runs)
        rows.append((f"**docket over HTTP{parts}: most decided/s with p99 < 100 ms** (vegeta, after a warm-up)",
                     f"**{_n(best['decided_per_s'], ' decided/s')} at {_n(best['rate'])}/s offered**" if best
                     else "none of the rates tried"))
        for step in runs.get("rates", []):
            lat = step.get("latency_ms", {})
            rows.append((f"docket over HTTP{parts} (vegeta, {_n(step.get('rate'))} requests/s offered)",
                         f"{_n(step.get('decided_per_s'))} decided/s, p50 {_n(lat.get('p50'))} ms, "
                         f"p99 {_n(lat.get('p99'))} ms, success {_n(100 * (step.get('success_ratio') or 0), '%', 1)}"))
    rows += http_cpu_rows(results)
    rows.append(("docket / Faust floor (docket's drain)", _n(r["docket_over_faust_floor"], "", 3)))
    rows.append(("docket / Quix Streams (docket's rate with p99 < 100 ms)", _n(r["docket_over_quix"], "", 3)))
    quix = _get(results, "quix", "events_per_s")
    for other in _get(results, "kafka_native", "by_partitions", default=[]) or []:
        rate = other.get("max_rate_p99_under_100ms")
        if quix and rate:
            rows.append((f"docket / Quix Streams, {other['partitions']} partitions", _n(rate / quix, "", 3)))
    rows.append(("docket / Kafka ceiling (docket's drain)", _n(r["docket_over_kafka_ceiling"], "", 5)))
    return rows


def _headline(sweep: dict) -> str:
    """The highest rate with p99 < 100 ms, and the CPU every process used per event at it."""
    rate = sweep.get("max_rate_p99_under_100ms")
    if not rate:
        return "none of the rates tried"
    at = next((x for x in sweep.get("rates") or [] if x.get("rate") == rate), {})
    cpu = at.get("cpu_us_per_event")
    return _n(rate, " events/s") + (f", {_n(cpu)} µs of CPU per event" if cpu else "")


def table(header: list[str], rows: list[list]) -> str:
    """A Markdown table; a cell's line breaks become spaces and its ``|`` is escaped (a
    failure's message may hold both), so every row stays one row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value) -> str:
    return " ".join(str(value).split()).replace("|", "\\|")


def native_tables(results: dict) -> str:
    """The sweep's table and where its latency went, per partition count."""
    kn = results.get("kafka_native") or {}
    if not kn.get("rates") and not kn.get("by_partitions"):  # --only another part, or it failed
        return f"Not measured{': ' + _cell(kn['error']) if kn.get('error') else '.'}"
    sweeps = [kn] + [o for o in kn.get("by_partitions") or [] if "error" not in o]
    parts = []
    for sweep in sweeps:
        head = f"### {sweep['partitions']} partitions\n\n" if sweep.get("partitions") else ""
        parts.append("\n\n".join(x for x in (head + native_table(sweep), marginal_table(sweep), stage_table(sweep)) if x))
    return "\n\n".join(parts) if parts else "Not measured."


def marginal_table(sweep: dict) -> str:
    """Each rate's CPU per event above the idle stack, per process (bench/kafka_native.py
    marginal_cpu), and the rate at which that cost would take every core."""
    costs = marginal_cpu(sweep)
    if not costs:
        return ""
    roles = sorted({r for c in costs for r in c["us_per_event"]})
    idle = sweep["idle"]["cpu"]
    rows = [[_n(c["rate"])] + [_n(c["us_per_event"].get(r)) for r in roles]
            + [_n(c["total_us"]), _n(c["bound_per_s"])] for c in costs]
    return (f"CPU per event above the idle stack (idle for {_n(sweep['idle']['seconds'])} s after the warm-up, "
            "cores: " + ", ".join(f"{r} {idle[r]['cores']:.3f}" for r in roles if r in idle)
            + "), µs per event by process, and the rate at which events costing that much would take every core "
            f"of this {os.cpu_count()}-core box. At the low rates each event travels alone:\n\n"
            + table(["offered /s"] + [f"{r} µs" for r in roles] + ["total µs", "every core at /s"], rows))


# stage of bench/stages.py -> its column
STAGE_COLUMNS = [("generator", "generator"), ("instance a", "instance a"), ("instance b", "instance b"),
                 ("agreement", "second copy"), ("clerk", "Clerk"), ("whole", "input -> result")]


def stage_table(sweep: dict) -> str:
    rows = []
    for s in sweep.get("rates") or []:
        st = s.get("stages_ms") or {}
        if not st:
            continue
        rows.append([_n(s["rate"])] + [f"{_n(_get(st, k, 'p50'))} / {_n(_get(st, k, 'p99'))}" if k in st else "n/a"
                                       for k, _ in STAGE_COLUMNS])
    if not rows:
        return ""
    return ("Where the latency went (bench/stages.py), p50 / p99 ms between the broker's timestamps of each "
            "decided position's records: generator = intended send -> input appended; instance x = input -> "
            "x's copy appended; second copy = input -> the copy that completed the match; Clerk = that copy -> "
            "result appended; input -> result:\n\n"
            + table(["offered /s"] + [c for _, c in STAGE_COLUMNS], rows))


def native_table(sweep: dict) -> str:
    rows = []
    for s in sweep.get("rates", []) or []:
        lat = s["latency_ms"]
        cores = sum(c.get("cores") or 0 for c in (s.get("cpu") or {}).values())
        rows.append([_n(s["rate"]), _n(s.get("throughput_per_s")), f"{s['results']:,}/{s['sent']:,}",
                     _n(lat.get("p50")), _n(lat.get("p99")), _n(lat.get("p999")), _n(lat.get("max")),
                     _n(s.get("generator_worst_lag_ms")), _n(cores, "", 2) if s.get("cpu") else "n/a",
                     _n(s.get("cpu_us_per_event")), "yes" if s["drained"] else "**no: saturated**"])
    not_run = sweep.get("not_run") or []
    text = table(["offered /s", "results /s", "answered", "p50 ms", "p99 ms", "p99.9 ms", "max ms",
                  "generator lag ms", "cores used", "CPU µs per event", "all answered"], rows)
    if not_run:
        text += f"\n\nNot run (a lower rate was already past saturation): {', '.join(map(str, not_run))} events/s."
    return text


STAGES = ["usher_intake", "evaluation", "output_produce", "output_ack", "clerk_copy_transit",
          "clerk_agreement_wait", "clerk_decision", "api_result_wait", "api_request"]


def http_runs(results: dict) -> list[dict]:
    """The HTTP runs per partition count: [{partitions, rates}] (or {partitions, error}),
    the first count's first; a report of before 2026-12-01 has one count and no
    ``partitions``."""
    h = results.get("http") or {}
    if "error" in h or not h:
        return []
    return [h, *(h.get("by_partitions") or [])]


# An HTTP step counts for the headline only when at least this share of its requests
# was decided (200 or 409): failed requests answer fast and would flatter its p99.
MIN_SUCCESS = 0.99


def http_headline(runs: dict) -> dict | None:
    """The step of ``runs`` with the most decided requests/s among those whose p99 (every
    answer) stayed under 100 ms and which decided at least :data:`MIN_SUCCESS` of their
    requests; None when none did."""
    ok = [s for s in runs.get("rates") or [] if (s.get("latency_ms") or {}).get("p99") is not None
          and s["latency_ms"]["p99"] < 100 and (s.get("success_ratio") or 0) >= MIN_SUCCESS]
    return max(ok, key=lambda s: s.get("decided_per_s") or 0, default=None)


def _per_rate(steps: list[dict], role: str) -> str:
    """"275 µs at 1,000/s, 176 at 2,000/s": ``role``'s CPU per request at each rate."""
    cells = [(s["rate"], ((s.get("cpu") or {}).get("by_role") or {}).get(role, {}).get("us_per_request"))
             for s in steps]
    cells = [(rate, us) for rate, us in cells if us is not None]
    return ", ".join(f"{_n(us)}{' µs' if i == 0 else ''} at {_n(rate)}/s" for i, (rate, us) in enumerate(cells))


def http_cpu_rows(results: dict) -> list[tuple[str, str]]:
    """Summary rows: the REST API's CPU per request at each rate (the first partition
    count) next to the HTTP floor's, a plain aiohttp app's, at the same rates."""
    rows = []
    runs = next((r for r in http_runs(results) if "error" not in r), None)
    api = _per_rate(runs.get("rates") or [], "api") if runs else ""
    if api:
        parts = f", {runs['partitions']} partitions" if runs.get("partitions") else ""
        rows.append((f"docket's REST API: CPU per request{parts} (the API process only)", api))
    fl = _get(results, "http", "floor") or {}
    if "error" in fl:
        rows.append((HTTP_FLOOR_ROW, f"failed: {fl['error']}"))
    elif fl.get("rates"):
        rows.append((HTTP_FLOOR_ROW, _per_rate(fl["rates"], "server")))
    return rows


HTTP_FLOOR_ROW = "HTTP floor: a plain aiohttp app (route, read, parse the JSON, answer), CPU per request"


def http_floor_table(results: dict) -> str:
    """The HTTP floor's runs: latency and the CPU per request of its server and of vegeta."""
    fl = _get(results, "http", "floor") or {}
    if "error" in fl:
        return f"Failed: {fl['error']}"
    rows = []
    for s in fl.get("rates") or []:
        lat, by = s.get("latency_ms") or {}, (s.get("cpu") or {}).get("by_role") or {}
        rows.append([_n(s.get("rate")), _n(s.get("requests")), _n(100 * (s.get("success_ratio") or 0), "%", 1),
                     _n(lat.get("p50"), "", 1), _n(lat.get("p99"), "", 1),
                     _n((by.get("server") or {}).get("us_per_request")),
                     _n((by.get("vegeta") or {}).get("us_per_request"))])
    if not rows:
        return "Not measured."
    return ("bench/http_floor_app.py, one server for every rate, vegeta as for docket (the kernel's account of "
            "the server; vegeta's from its rusage):\n\n"
            + table(["offered /s", "requests", "success", "p50 ms", "p99 ms", "server µs per request",
                     "vegeta µs per request"], rows))


def http_tables(results: dict) -> str:
    """The HTTP runs' table and server-side stages, per partition count."""
    parts = []
    for runs in http_runs(results):
        if "error" in runs:
            continue
        head = f"### {runs['partitions']} partitions\n\n" if runs.get("partitions") else ""
        warm = [s["warmup"] for s in runs.get("rates") or [] if s.get("warmup")]
        if warm:
            head += (f"Each rate on a fresh stack, after a warm-up of {warm[0]['duration_s']:g} s at up to "
                     f"{_n(max(w['rate'] for w in warm))} requests/s whose answers are not counted.\n\n")
        parts.append(head + http_table(runs.get("rates") or []))
    return "\n\n".join(parts) if parts else "Not measured."


def http_table(steps: list[dict]) -> str:
    rows, stage_rows = [], []
    for s in steps:
        lat = s.get("latency_ms", {})
        codes = ", ".join(f"{k}: {v:,}" for k, v in sorted((s.get("status_codes") or {}).items()))
        rows.append([_n(s.get("rate")), _n(s.get("requests")), _n(s.get("decided_per_s")),
                     _n(s.get("ok_2xx_per_s")), _n(100 * (s.get("success_ratio") or 0), "%", 1),
                     _n(lat.get("p50")), _n(lat.get("p99")), _n(lat.get("p999")), codes or "n/a"])
        server = s.get("server_ms") or {}
        for stage in STAGES:
            if stage in server:
                st = server[stage]
                stage_rows.append([_n(s.get("rate")), stage, _n(st.get("count")), _n(st.get("p50"), "", 1),
                                   _n(st.get("p99"), "", 1), _n(st.get("p999"), "", 1)])
    if not rows:
        return "Not measured."
    return (table(["offered /s", "requests", "decided /s", "2xx /s", "success", "p50 ms", "p99 ms", "p99.9 ms",
                   "status codes"], rows)
            + "\n\nServer-side stages during the same runs (Prometheus histograms, delta over the run; "
              "bucket-interpolated):\n\n"
            + table(["offered /s", "stage", "observations", "p50 ms", "p99 ms", "p99.9 ms"], stage_rows)
            + http_cpu_table(steps))


HTTP_CPU_ROLES = ("api", "a", "b", "clerk", "broker", "vegeta")


def http_cpu_table(steps: list[dict]) -> str:
    """Per rate, each process's CPU per request sent (µs; the kernel's account from the
    attack's start until the Clerk had decided what the API accepted), every process
    together, and the cores they used; empty when no run accounted its CPU."""
    measured = [s for s in steps if (s.get("cpu") or {}).get("by_role")]
    if not measured:
        return ""
    roles = [r for r in HTTP_CPU_ROLES if any(r in s["cpu"]["by_role"] for s in measured)]
    roles += sorted({r for s in measured for r in s["cpu"]["by_role"]} - set(roles))
    rows = [[_n(s.get("rate"))] + [_n((s["cpu"]["by_role"].get(r) or {}).get("us_per_request")) for r in roles]
            + [f"**{_n(s['cpu'].get('us_per_request'))}**", _n(s["cpu"].get("cores"), "", 2)] for s in measured]
    return ("\n\nCPU per request sent, µs (the kernel's account of each process from the attack's start until "
            "the Clerk had decided what the API accepted; vegeta's own from its rusage):\n\n"
            + table(["offered /s", *roles, "all", "cores"], rows))


def profile_tables(results: dict) -> str:
    prof = _get(results, "kafka_native", "profile")
    if not prof:
        return "Not taken."
    parts = [f"At {prof['rate']:,} events/s (the highest rate sustained), for {prof['seconds']:.0f} s, on a fresh "
             f"stack after its warm-up. CPU of every process of the run while sampled (the kernel's account):\n"]
    cpu = prof.get("cpu") or {}
    rows = [[role, _n(c["cores"], "", 2), _n(c["us_per_event"]), _n(c["user_s"], "", 1), _n(c["system_s"], "", 1)]
            for role, c in sorted(cpu.items(), key=lambda kv: -kv[1]["cores"])]
    if rows:
        total = sum(c["us_per_event"] for c in cpu.values())
        rows.append(["**all**", _n(sum(c["cores"] for c in cpu.values()), "", 2), f"**{_n(total)}**", "", ""])
        parts.append(table(["process", "cores", "CPU µs per event", "user s", "system s"], rows))
    parts.append(f"\npy-spy (100 samples/s, non-blocking, the thread holding the GIL) on instance a and the Clerk; "
                 f"collapsed stacks: {', '.join(f'`{v}`' for v in prof.get('files', {}).values())}.")
    for role in ("instance", "clerk"):
        p = prof.get(role)
        if not p:
            continue
        c = p.get("cpu") or {}
        parts.append(f"\n**{role}**: {_n(c.get('us_per_event'))} µs of CPU per event. py-spy found it holding the "
                     f"GIL in {p['samples']:,} samples (waiting in select() in {p.get('idle_samples', 0):,}). "
                     f"Costliest functions by own time, as a share of those samples and as µs per event:\n")
        parts.append(table(["function", "share", "µs/event"],
                           [[f"`{r['function']}`", f"{100 * r['share']:.1f}%", _n(r["us_per_event"], "", 1)]
                            for r in p["self"][:12]]))
    return "\n".join(parts)


def quix_table(results: dict) -> str:
    qx = results.get("quix") or {}
    if "error" in qx:
        return f"Failed: {qx['error']}"
    if not qx:
        return "Not measured."
    text = table(["events", "events /s", "seconds", "CPU µs per event", "user s", "system s", "output records",
                  "changelog records", "partitions", "quixstreams"],
                 [[_n(qx.get("events")), _n(qx.get("events_per_s")), _n(qx.get("seconds"), "", 3),
                   _n(qx.get("cpu_us_per_event"), "", 1), _n(qx.get("cpu_user_s"), "", 2),
                   _n(qx.get("cpu_system_s"), "", 2), _n(qx.get("output_records")), _n(qx.get("changelog_records")),
                   _n(qx.get("partitions")), _n(qx.get("quixstreams"))]])
    return (text + "\n\nOne app (bench/quix_app.py) over pre-loaded events: per event, the stock it touches read "
            "from Quix's RocksDB state, the inventory domain's validate and evaluate, the changed stock written "
            "back, one result record out. The rate is over the span of the output records' broker timestamps; "
            "the CPU is the app process's (the kernel's account) from just before its first output record to its "
            "last. Quix writes the state to RocksDB and its changelog at each checkpoint (every 5 s), the latest "
            "value of each key once, hence far fewer changelog records than events.")


def markdown(results: dict, day: str, images: list[str]) -> str:
    head = f"# docket benchmarks, {day}{' (smoke)' if results.get('smoke') else ''}\n\n"
    head += (f"`make bench` on {machine()}. Wall time {_n((results.get('wall_s') or 0) / 60, ' min', 1)}. "
             f"Target: 10,000 events/s with p99 < 100 ms.\n\n")
    body = [summary_block(results, images),
            "## Quix Streams stateful app\n\n" + quix_table(results),
            "## docket over Kafka (open-model sweep)\n\n" + native_tables(results),
            "## docket over HTTP (vegeta)\n\n" + http_tables(results),
            "## The HTTP floor: a plain aiohttp app\n\n" + http_floor_table(results),
            "## Profile\n\n" + profile_tables(results)]
    return head + "\n\n".join(body) + "\n"


def summary_block(results: dict, images: list[str], prefix: str = "") -> str:
    text = table(["measurement", "figure"], [list(r) for r in summary_rows(results)])
    pics = "\n\n".join(f"![{Path(i).stem}]({prefix}{i})" for i in images)
    return text + ("\n\n" + pics if pics else "")


def summary(results: dict) -> str:
    return "\n".join(f"{k}: {v}" for k, v in summary_rows(results))


# --------------------------------------------------------------------------- plots

def plots(results: dict, out: Path, stem: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _pos: f"{v:,.0f}" if v >= 1 else f"{v:g}")

    def readable(ax) -> None:
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(plain)
            axis.set_minor_formatter(FuncFormatter(lambda _v, _pos: ""))

    made = []
    native = _get(results, "kafka_native", "rates", default=[]) or []
    http = _get(results, "http", "rates", default=[]) or []
    http_parts = _get(results, "http", "partitions")
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    parts = _get(results, "kafka_native", "partitions")
    native_title = f"docket over Kafka ({parts} partitions)" if parts else "docket over Kafka"
    http_title = f"docket over HTTP ({http_parts} partitions)" if http_parts else "docket over HTTP"
    for ax, steps, title, measurement in ((axes[0], native, native_title, "kafka_native"),
                                          (axes[1], http, http_title, "http")):
        for key, style in (("p50", "o-"), ("p99", "s-"), ("p999", "^-")):
            pts = [(s["rate"], s["latency_ms"].get(key)) for s in steps if s.get("latency_ms", {}).get(key)]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=key.replace("p999", "p99.9"))
        for other in _get(results, measurement, "by_partitions", default=[]) or []:
            pts = [(x["rate"], x["latency_ms"].get("p99")) for x in other.get("rates") or []
                   if x.get("latency_ms", {}).get("p99")]
            if pts:
                ax.plot(*zip(*pts, strict=True), "d--", label=f"p99, {other['partitions']} partitions")
        ax.axhline(100, color="grey", linestyle="--", linewidth=1, label="100 ms")
        ax.set(xscale="log", yscale="log", xlabel="offered rate (/s)", ylabel="latency (ms)", title=title)
        readable(ax)
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    ax = axes[2]
    for steps, key, label in ((native, "throughput_per_s", "Kafka: results/s"),
                              (http, "decided_per_s", "HTTP: decided/s")):
        pts = [(s["rate"], s.get(key)) for s in steps if s.get(key)]
        if pts:
            ax.plot(*zip(*pts, strict=True), "o-", label=label)
    every = [s["rate"] for s in native + http]
    if every:
        ax.plot([min(every), max(every)], [min(every), max(every)], ":", color="grey", label="offered")
    for key, label, colour in (("faust_floor", "Faust floor", "tab:red"), ("quix", "Quix Streams", "tab:purple"),
                               ("drain", "docket's drain", "tab:green")):
        level = _get(results, key, "results_per_s" if key == "drain" else "events_per_s")
        if level:
            ax.axhline(level, color=colour, linestyle="--", linewidth=1, label=f"{label} {level:,.0f}/s")
    ax.set(xscale="log", yscale="log", xlabel="offered rate (/s)", ylabel="delivered (/s)",
           title="throughput vs offered rate")
    readable(ax)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path = out / f"{stem}-latency.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    made.append(path)

    timeline = _get(results, "kafka_native", "timeline", default=[]) or []
    fig, axes = plt.subplots(1 + len(http), 1, figsize=(12, 3.2 * (1 + len(http))), squeeze=False)
    panels = [(axes[0][0], timeline, "results_per_s", "docket over Kafka: the whole sweep")]
    http_where = f" on {http_parts} partitions" if http_parts else ""
    panels += [(axes[i + 1][0], s.get("timeline") or [], "ok_per_s",
                f"docket over HTTP{http_where} at {s['rate']:,}/s offered") for i, s in enumerate(http)]
    for ax, points, key, title in panels:
        if points:
            ts = [p["t"] for p in points]
            ax.plot(ts, [p.get(key) or 0 for p in points], color="tab:blue", label="per second")
            ax2 = ax.twinx()
            ax2.plot(ts, [p.get("p99_ms") or float("nan") for p in points], color="tab:orange", label="p99 ms")
            ax2.set_yscale("log")
            ax2.set_ylabel("p99 (ms)", color="tab:orange")
        ax.set(xlabel="seconds", ylabel="delivered /s", title=title)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path = out / f"{stem}-timeline.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    made.append(path)
    return made


# --------------------------------------------------------------------------- writing

def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


def replace_readme_section(block: str, readme: Path = README) -> bool:
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        return False
    before, rest = text.split(BEGIN, 1)
    _, after = rest.split(END, 1)
    readme.write_text(f"{before}{BEGIN}\n{block}\n{END}{after}")
    return True


def write(results: dict, out: Path, work: Path, *, update_readme: bool = True,
          now: datetime.datetime | None = None) -> list[Path]:
    """Write the report into ``out``, named for ``now`` (default: the clock;
    bench/common.py report_stem); returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    now = now or datetime.datetime.now()
    day = now.date().isoformat()
    # one report per run: a second run on the same day must not overwrite the first
    stem = report_stem(out, "bench", now, "-smoke" if results.get("smoke") else "")
    results = dict(results)
    results["ratios"] = ratios(results)
    written = []
    prof = _get(results, "kafka_native", "profile")
    if prof:
        for role, src in list(prof.get("files", {}).items()):
            dst = out / f"{stem}-profile-{role}.collapsed.txt"
            shutil.copyfile(src, dst)
            prof["files"][role] = dst.name
            written.append(dst)
    images = plots(results, out, stem)
    written += images
    names = [p.name for p in images]
    (out / f"{stem}.json").write_text(json.dumps(_jsonable(results), indent=1) + "\n")
    (out / f"{stem}.md").write_text(markdown(results, day, names))
    written += [out / f"{stem}.json", out / f"{stem}.md"]
    if update_readme:
        rel = os.path.relpath(out, README.parent)
        block = (f"Latest run: [{stem}.md]({rel}/{stem}.md) ({machine()}).\n\n"
                 + summary_block(results, names, prefix=f"{rel}/"))
        if replace_readme_section(block):
            written.append(README)
    return written
