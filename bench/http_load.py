"""docket over HTTP: POST /v1/events at a fixed rate with vegeta, client-side latency
and throughput next to the server-side stage histograms of the same run.

    result = await measure(api_url, token, metrics_urls, work, rate=500, duration_s=30, seed=1)

vegeta (pinned: :data:`VEGETA_VERSION`) is built once per machine with the local Go
toolchain into ``<DOCKET_BROKER_CACHE>/go-bin`` (default ``~/.cache/docket/go-bin``):
:func:`ensure_vegeta`.

What a run does:

1. targets (outside the timed part): ``rate * duration_s`` requests of the inventory
   workload (:func:`chaos.workload.inventory`) as the API takes them, ``{"event_name",
   "payload"}``, each with an Idempotency-Key of its own (a workload repeat becomes a
   fresh event: every request is new work for the pipeline) and skus renamed after a
   run id, so runs against one stack never share stock; vegeta's JSON target format, one
   per line;
2. scrapes every ``/metrics`` page;
3. ``vegeta attack -lazy -format=json -rate=R/s -duration=Ds`` (open model: requests go
   out at the rate whatever the answers do), bounded and dying with this process;
4. waits (at most :data:`SETTLE_S`) until the Clerk has decided every event the API
   accepted, then scrapes again: the stage figures are quantiles of the histogram
   deltas, so they cover this run only;
5. ``vegeta report -type=json`` and ``vegeta encode --to csv`` give the client side;
6. the CPU every process of the stack and vegeta used from the attack's start to the
   settling, per request sent (:class:`CpuAccount`).

:func:`floor` runs vegeta the same way against a plain aiohttp app
(bench/http_floor_app.py): what any Python API on aiohttp pays per request here.

An answer 200 (applied) or 409 (rejected by the domain) is a decided outcome; 202 means
the result did not come within DOCKET_API_TIMEOUT_MS (the event was accepted and is
still decided later): it counts in ``ok_2xx_per_s`` but not in ``decided_per_s``.
Nothing here asserts a speed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import os
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson

from bench.common import histogram_quantile, percentiles, say
from bench.profile import cpu_delta, cpu_seconds

VEGETA_MODULE = "github.com/tsenart/vegeta/v12"
VEGETA_VERSION = "v12.12.0"
MAX_WORKERS = 4000
SETTLE_S = 30.0
DECIDED = (200, 409)  # applied, rejected by the domain: both are outcomes the instances agreed on
ACCEPTED = (200, 202, 409, 422, 502)  # the event reached Kafka: the Clerk decides (or reports) it

# stage -> (role, metric family, labels the series must carry)
STAGES: dict[str, tuple[str, str, dict[str, str]]] = {
    "usher_intake": ("a", "docket_instance_intake_seconds", {}),
    "evaluation": ("a", "docket_instance_evaluation_seconds", {}),
    "output_produce": ("a", "docket_instance_produce_seconds", {}),
    "output_ack": ("a", "docket_instance_output_ack_seconds", {}),
    "clerk_copy_transit": ("clerk", "docket_clerk_copy_transit_seconds", {}),
    "clerk_agreement_wait": ("clerk", "docket_clerk_agreement_wait_seconds", {}),
    "clerk_decision": ("clerk", "docket_clerk_decision_latency_seconds", {}),
    "api_result_wait": ("api", "docket_api_result_wait_seconds", {}),
    "api_request": ("api", "docket_api_request_duration_seconds", {"route": "/v1/events"}),
}


# --------------------------------------------------------------------------- vegeta


def go_bin() -> Path:
    from app.settings import load

    return load().broker_cache / "go-bin"


def ensure_vegeta() -> Path:
    """The vegeta binary, built on first use (instant afterwards).

    Built from a throwaway module that requires exactly :data:`VEGETA_VERSION`, which is
    what ``go install module@version`` does, except that ``go install`` also asks the
    module proxy for the module's version list (to report deprecations) and fails where
    a proxy or mirror refuses that list; a pinned go.mod needs only the version itself.
    Go verifies the downloaded modules against sum.golang.org as usual."""
    directory = go_bin()
    exe = directory / "vegeta"
    stamp = directory / "vegeta.version"
    if exe.is_file() and os.access(exe, os.X_OK) and stamp.is_file() \
            and stamp.read_text().strip() == f"{VEGETA_MODULE}@{VEGETA_VERSION}":
        return exe
    go = shutil.which("go")
    if go is None:
        raise RuntimeError(
            f"the HTTP benchmark needs vegeta {VEGETA_VERSION}, built with Go, and `go` is not on PATH: "
            "install Go 1.22 or newer (https://go.dev/dl/, or apt-get install golang-go), "
            f"or put a vegeta binary at {exe} and write '{VEGETA_MODULE}@{VEGETA_VERSION}' into {stamp}")
    directory.mkdir(parents=True, exist_ok=True)
    say(f"building vegeta {VEGETA_VERSION} with {go} into {directory} (once per machine) ...")
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="docket-vegeta-") as tmp:
        Path(tmp, "go.mod").write_text(
            f"module docket.local/vegeta\n\ngo 1.22\n\nrequire {VEGETA_MODULE} {VEGETA_VERSION}\n")
        partial = directory / f".vegeta.{os.getpid()}.partial"
        env = {**os.environ, "GOFLAGS": "-mod=mod", "GOBIN": str(directory)}
        proc = subprocess.run([go, "build", "-trimpath", "-o", str(partial), VEGETA_MODULE], cwd=tmp, env=env,
                              capture_output=True, text=True, timeout=900, check=False)
        if proc.returncode != 0:
            partial.unlink(missing_ok=True)
            raise RuntimeError(f"building vegeta {VEGETA_VERSION} failed (go build, exit {proc.returncode}):\n"
                               + (proc.stderr or proc.stdout)[-3000:])
        partial.replace(exe)  # atomic: a concurrent run sees the old binary or the new one
    stamp.write_text(f"{VEGETA_MODULE}@{VEGETA_VERSION}\n")
    say(f"vegeta {VEGETA_VERSION} ready at {exe} ({time.monotonic() - began:.0f} s)")
    return exe


# --------------------------------------------------------------------------- targets


def requests(seed: int, count: int, run_id: str) -> Iterator[tuple[str, bytes]]:
    """(Idempotency-Key, JSON body) of ``count`` API requests: the inventory workload,
    skus renamed after ``run_id``, one key per request."""
    from chaos.workload import inventory

    for i, rec in enumerate(inventory(seed=seed, events=count)):
        env = orjson.loads(rec.value)
        payload = dict(env["payload"])
        payload["sku"] = f"{run_id}.{payload['sku']}"
        yield f"bench-{run_id}-{i:07d}", orjson.dumps({"event_name": env["event_name"], "payload": payload})


def target_lines(url: str, token: str, items: Iterable[tuple[str, bytes]]) -> Iterator[bytes]:
    """vegeta JSON targets (``-format=json``), one per line."""
    endpoint = url.rstrip("/") + "/v1/events"
    auth = [f"Bearer {token}"]
    for key, body in items:
        yield orjson.dumps({
            "method": "POST",
            "url": endpoint,
            "body": base64.b64encode(body).decode("ascii"),
            "header": {"Authorization": auth, "Content-Type": ["application/json"], "Idempotency-Key": [key]},
        }) + b"\n"


def write_targets(path: Path, url: str, token: str, *, count: int, seed: int, run_id: str) -> int:
    n = 0
    with path.open("wb") as f:
        for line in target_lines(url, token, requests(seed, count, run_id)):
            f.write(line)
            n += 1
    return n


# --------------------------------------------------------------------------- Prometheus


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], dict]:
    """Every histogram series of a /metrics page: (family, sorted labels without le) ->
    {"buckets": {le: cumulative count}, "sum": s, "count": n}. Counters' ``_total``
    samples and gauges are kept too, under (sample name, labels) -> {"value": v}."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            if fam.type == "histogram":
                series = out.setdefault((fam.name, labels), {"buckets": {}, "sum": 0.0, "count": 0.0})
                if s.name.endswith("_bucket"):
                    series["buckets"][float(s.labels["le"])] = s.value
                elif s.name.endswith("_sum"):
                    series["sum"] = s.value
                elif s.name.endswith("_count"):
                    series["count"] = s.value
            elif (fam.type == "counter" and s.name.endswith("_total")) or fam.type == "gauge":
                out[(s.name, labels)] = {"value": s.value}
    return out


def _series(scrape: dict, family: str, labels: dict[str, str]) -> dict | None:
    want = set(labels.items())
    found = [v for (name, lab), v in scrape.items() if name == family and want <= set(lab)]
    if not found:
        return None
    if len(found) == 1:
        return found[0]
    merged = {"buckets": defaultdict(float), "sum": 0.0, "count": 0.0}  # several series: add them up
    for v in found:
        for le, c in v["buckets"].items():
            merged["buckets"][le] += c
        merged["sum"] += v["sum"]
        merged["count"] += v["count"]
    return merged


def stage_delta(before: dict | None, after: dict | None) -> dict | None:
    """{count, mean, p50, p99, p999} in ms of the observations between two scrapes of
    one histogram series (a series missing before counts from zero)."""
    if after is None:
        return None
    base = before or {"buckets": {}, "sum": 0.0, "count": 0.0}
    buckets = sorted((le, c - base["buckets"].get(le, 0.0)) for le, c in after["buckets"].items())
    count = after["count"] - base["count"]
    out: dict = {"count": round(count)}
    if count <= 0:
        return {**out, "mean": None, "p50": None, "p99": None, "p999": None}
    out["mean"] = round((after["sum"] - base["sum"]) / count * 1000, 3)
    for name, q in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999)):
        v = histogram_quantile(buckets, q)
        out[name] = None if v is None else round(v * 1000, 3)
    return out


def server_stages(before: dict[str, dict], after: dict[str, dict], instance: str = "a") -> dict[str, dict]:
    """Per stage of :data:`STAGES` (instance stages from ``instance``), the delta's
    quantiles; a stage whose page or series is missing is left out."""
    out = {}
    for stage, (role, family, labels) in STAGES.items():
        if role == "a":
            role = instance
        if role not in after:
            continue
        d = stage_delta(_series(before.get(role, {}), family, labels), _series(after[role], family, labels))
        if d is not None:
            out[stage] = d
    return out


def stream_items_per_event(before: dict[str, dict], after: dict[str, dict], events: int) -> dict[str, float]:
    """Per worker role, the stream items its agents took (Faust's
    ``faust_total_events_total``, a batch or a Clerk item each) between two scrapes,
    per event sent: how many rounds of its agent an event cost. A role missing from
    either scrape is left out; empty when ``events`` is 0."""
    if not events:
        return {}
    return {role: round((_counter(after[role], "faust_total_events_total")
                         - _counter(before[role], "faust_total_events_total")) / events, 3)
            for role in after if role in before and role != "api"}


def _counter(scrape: dict, name: str) -> float:
    return sum(v["value"] for (n, _), v in scrape.items() if n == name and "value" in v)


async def scrape_all(session, urls: dict[str, str], problems: list[str]) -> dict[str, dict]:
    async def one(role: str, url: str):
        try:
            async with session.get(url) as r:
                text = await r.text()
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}")
            return role, parse_metrics(text)
        except Exception as exc:  # noqa: BLE001  a missing page leaves its stages out, and says so
            problems.append(f"scraping {role} {url}: {type(exc).__name__}: {exc}")
            return role, None

    got = await asyncio.gather(*(one(role, url) for role, url in urls.items()))
    return {role: scrape for role, scrape in got if scrape is not None}


# --------------------------------------------------------------------------- vegeta's answers


def parse_report(raw: bytes | str) -> dict:
    """The parts of ``vegeta report -type=json`` the benchmark keeps (latencies in ms)."""
    rep = orjson.loads(raw)
    lat = rep.get("latencies") or {}

    def ms(name: str) -> float | None:
        return None if name not in lat else round(lat[name] / 1e6, 3)

    return {
        "requests": rep.get("requests", 0),
        "rate": rep.get("rate"),  # requests sent per second
        "throughput": rep.get("throughput"),  # vegeta's: 2xx and 3xx per second
        "success": rep.get("success"),  # vegeta's: share of 2xx and 3xx
        "status_codes": {str(k): v for k, v in (rep.get("status_codes") or {}).items()},
        "errors": list(rep.get("errors") or []),
        "latency_ms": {"mean": ms("mean"), "p50": ms("50th"), "p90": ms("90th"), "p95": ms("95th"),
                       "p99": ms("99th"), "max": ms("max"), "min": ms("min")},
        "duration_s": (rep.get("duration") or 0) / 1e9,
        "wait_s": (rep.get("wait") or 0) / 1e9,
    }


def parse_results_csv(lines: Iterable[str]) -> list[tuple[int, int, int, str]]:
    """(start ns, status code, latency ns, error) per request from ``vegeta encode --to
    csv`` (columns: timestamp, code, latency, bytes out, bytes in, error, body, ...)."""
    out = []
    for row in csv.reader(lines):
        if len(row) < 6:
            continue
        out.append((int(row[0]), int(row[1]), int(row[2]), row[5]))
    return out


def summarise(rows: list[tuple[int, int, int, str]], *, rate: int, duration_s: float) -> dict:
    """Client-side figures of one run from its per-request rows."""
    codes = Counter(code for _, code, _, _ in rows)
    n = len(rows)
    if n:
        start = min(r[0] for r in rows)
        span_s = max((r[0] + r[2] for r in rows), default=start) - start
        span_s = max(span_s / 1e9, 1e-9)
    else:
        start, span_s = 0, 0.0
    decided = sum(codes[c] for c in DECIDED)
    ok_2xx = sum(v for c, v in codes.items() if 200 <= c < 300)
    all_ms = [lat / 1e6 for _, _, lat, _ in rows]
    decided_ms = [lat / 1e6 for _, code, lat, _ in rows if code in DECIDED]
    errors: list[str] = []  # transport errors and timeouts; vegeta also names every non-2xx answer
    for _, code, _, err in rows:
        if err and not (code and err.startswith(f"{code} ")) and err not in errors and len(errors) < 5:
            errors.append(err)

    def latency(samples: list[float]) -> dict:
        p = percentiles(samples)
        return {"p50": p["p50"], "p99": p["p99"], "p999": p["p999"], "max": p["max"],
                "mean": round(sum(samples) / len(samples), 3) if samples else None}

    per_second: dict[int, list[float]] = defaultdict(list)  # second of completion -> decided latencies
    sent: Counter = Counter()
    for t0, code, lat, _ in rows:
        sent[int((t0 - start) // 1_000_000_000)] += 1
        if code in DECIDED:
            per_second[int((t0 + lat - start) // 1_000_000_000)].append(lat / 1e6)
    last = max([*per_second, *sent], default=-1)
    timeline = []
    for t in range(last + 1):
        lats = per_second.get(t, [])
        timeline.append({"t": t, "sent_per_s": sent.get(t, 0), "ok_per_s": len(lats),
                         "p99_ms": percentiles(lats)["p99"]})
    decided_per_s = round(decided / span_s, 1) if n else 0.0
    return {
        "rate": rate,
        "duration_s": duration_s,
        "requests": n,
        "decided": decided,
        "decided_per_s": decided_per_s,
        "throughput_per_s": decided_per_s,  # decided outcomes (200, 409) per second; 202 is not one
        "ok_2xx_per_s": round(ok_2xx / span_s, 1) if n else 0.0,
        "success_ratio": round(decided / n, 4) if n else 0.0,
        "pending_202": codes.get(202, 0),
        "status_codes": {str(c): v for c, v in sorted(codes.items())},
        "latency_ms": latency(all_ms),
        "decided_latency_ms": latency(decided_ms),
        "errors": errors,
        "timeline": timeline,
        "span_s": round(span_s, 3),
    }


def cpu_per_request(cpu: dict[str, dict], requests: int) -> dict:
    """The CPU a run cost per request: ``cpu`` is role -> {seconds, cores} over the run
    (bench.profile.cpu_delta, the kernel's account; vegeta's own from its rusage), and
    ``requests`` what vegeta sent. Returns {by_role: role -> {seconds, cores,
    us_per_request}, us_per_request: every role together, cores: the same}; µs per
    request are None when nothing was sent."""
    by_role = {role: {**c, "us_per_request": round(c["seconds"] / requests * 1e6, 1) if requests else None}
               for role, c in cpu.items()}
    total_s = sum(c["seconds"] for c in cpu.values())
    return {"by_role": by_role,
            "us_per_request": round(total_s / requests * 1e6, 1) if requests else None,
            "cores": round(sum(c["cores"] or 0 for c in cpu.values()), 3)}


# --------------------------------------------------------------------------- a run


async def _run(cmd: list[str], *, timeout_s: float, stdout=None) -> bytes:
    """Run ``cmd`` (dies with this process; killed after ``timeout_s``); its stdout
    (unless redirected to ``stdout``), or RuntimeError with its stderr."""
    from launcher.broker import set_parent_death_signal

    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=stdout if stdout is not None else asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        preexec_fn=set_parent_death_signal if sys.platform == "linux" else None)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except (TimeoutError, asyncio.CancelledError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(cmd[0]).name} {cmd[1]} exited {proc.returncode}: "
                           f"{err.decode(errors='replace')[-2000:]}")
    return out or b""


class CpuAccount:
    """The CPU the processes of ``pids`` (role -> pid) and the next vegeta attack use
    from now until :meth:`close`: the kernel's account of each process, and vegeta's
    from this process's reaped children (pass :attr:`attack` to :func:`_attack` as
    ``cpu_of_attack``): a child of this process that exited and was reaped during the
    attack (none does in a run that goes well) would be counted as vegeta's."""

    def __init__(self, pids: dict[str, int] | None) -> None:
        self.pids = pids
        self.before, self.began = cpu_seconds(pids), time.monotonic()
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.children_before = used.ru_utime + used.ru_stime
        self.attack: dict = {}

    def close(self, requests: int) -> dict:
        """:func:`cpu_per_request` of everything used since the start, per request of
        ``requests``. Raises KeyError when no attack reported its CPU."""
        window_s = time.monotonic() - self.began
        cpu = cpu_delta(self.before, cpu_seconds(self.pids), window_s)
        vegeta_s = self.attack["seconds"] - self.children_before
        cpu["vegeta"] = {"seconds": round(vegeta_s, 3), "cores": round(vegeta_s / window_s, 3)}
        return cpu_per_request(cpu, requests)


async def measure(api_url: str, token: str, metrics_urls: dict[str, str], work: Path, *, rate: int,
                  duration_s: float, seed: int, api_timeout_ms: int | None = None,
                  warmup_s: float = 0.0, warmup_rate: int | None = None,
                  pids: dict[str, int] | None = None) -> dict:
    """One open-model run of POST /v1/events at ``rate`` per second for ``duration_s``
    (see the module docstring). With ``warmup_s``, first that long at ``warmup_rate``
    (default: ``rate``) with requests of their own, answered and settled before the
    measured run's first scrape, and reported apart (``warmup``: {rate, duration_s,
    requests, decided_per_s, latency_ms, settled}): a fresh stack's first seconds (the
    API's first produce, the workers' first fetches and transactions) took 0.8-2.8 s
    per request in the runs of 2026-12-01, which a 60 s run's p99 would otherwise be.
    Returns {rate, duration_s, sent_per_s (achieved), requests, decided,
    decided_per_s, throughput_per_s (= decided_per_s), ok_2xx_per_s, success_ratio
    (decided / requests), pending_202, status_codes, latency_ms (every answer),
    decided_latency_ms (200 and 409 only), errors, timeline [{t, sent_per_s, ok_per_s,
    p99_ms}], server_ms {stage: {count, mean, p50, p99, p999}} (instance a),
    server_ms_b (instance b's stages), settled, vegeta (its own report), problems,
    cpu (:func:`cpu_per_request`: every process of ``pids``, role -> pid, and vegeta,
    from the attack's start until the Clerk has decided what the API accepted)}."""
    import aiohttp

    from app.settings import load

    vegeta = ensure_vegeta()
    work.mkdir(parents=True, exist_ok=True)
    # the client waits 5 s longer than the API does before it answers 202
    timeout_s = (api_timeout_ms if api_timeout_ms is not None else load().api_timeout_ms) / 1000 + 5
    count = max(1, round(rate * duration_s))
    run_id = f"r{seed}x{secrets.token_hex(3)}"
    targets = work / f"targets-{rate}-s{seed}.jsonl"
    results = work / f"results-{rate}-s{seed}.bin"
    began = time.monotonic()
    write_targets(targets, api_url, token, count=count, seed=seed, run_id=run_id)
    say(f"http: {count} targets written in {time.monotonic() - began:.1f} s; attacking {api_url} "
        f"at {rate}/s for {duration_s:g} s ...")
    problems: list[str] = []
    warmup = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        if warmup_s > 0:
            w_rate = warmup_rate or rate
            w_targets = work / f"targets-{rate}-s{seed}-warmup.jsonl"
            write_targets(w_targets, api_url, token, count=max(1, round(w_rate * warmup_s)), seed=seed + 10_000,
                          run_id=f"{run_id}w")
            say(f"http: warming up at {w_rate}/s for {warmup_s:g} s ...")
            w_before = await scrape_all(session, metrics_urls, problems)
            w_rows = await _attack(vegeta, w_targets, work / f"results-{rate}-s{seed}-warmup", rate=w_rate,
                                   duration_s=warmup_s, timeout_s=timeout_s)
            w_out = summarise(w_rows, rate=w_rate, duration_s=warmup_s)
            w_answered = sum(v for c, v in w_out["status_codes"].items() if int(c) in ACCEPTED)
            w_settled, _ = await _settle(session, metrics_urls, w_before, w_answered, [])
            warmup = {k: w_out[k] for k in ("rate", "duration_s", "requests", "decided_per_s", "latency_ms")}
            warmup["settled"] = w_settled
        before = await scrape_all(session, metrics_urls, problems)
        account = CpuAccount(pids)
        rows = await _attack(vegeta, targets, results.with_suffix(""), rate=rate, duration_s=duration_s,
                             timeout_s=timeout_s, cpu_of_attack=account.attack)
        report = parse_report(await _run([str(vegeta), "report", "-type=json", str(results)], timeout_s=300))
        out = summarise(rows, rate=rate, duration_s=duration_s)
        answered = sum(v for c, v in out["status_codes"].items() if int(c) in ACCEPTED)
        settled, after = await _settle(session, metrics_urls, before, answered, problems)
        out["cpu"] = account.close(out["requests"])
    out["warmup"] = warmup
    out["server_ms"] = server_stages(before, after, "a")
    if "b" in after:
        out["server_ms_b"] = {k: v for k, v in server_stages(before, after, "b").items()
                              if STAGES[k][0] == "a"}
    out["settled"] = settled
    out["sent_per_s"] = round(report["rate"] or 0.0, 1)  # what vegeta achieved (< rate: it hit max-workers)
    out["vegeta"] = report
    out["problems"] = problems
    lat = out["latency_ms"]
    say(f"http {rate}/s: {out['requests']} requests ({out['sent_per_s']}/s sent), {out['decided_per_s']} decided/s, "
        f"codes {out['status_codes']}, "
        f"p50 {lat['p50']} ms, p99 {lat['p99']} ms, p99.9 {lat['p999']} ms")
    return out


FLOOR_READY_S = 30.0  # the floor's server answers /healthz within this, on a loaded machine


async def floor(work: Path, *, rates: list[int], duration_s: float, seed: int = 500) -> dict:
    """The HTTP floor: vegeta at each of ``rates`` for ``duration_s`` against a plain
    aiohttp app (bench/http_floor_app.py: route, read, parse the JSON, answer) on
    docket's targets, one fresh server for them all. Per rate {rate, duration_s,
    requests, sent_per_s, success_ratio, status_codes, latency_ms, cpu
    (:func:`cpu_per_request`: the server and vegeta)}; what docket's API costs per
    request above ``cpu.by_role.server`` is its own. Raises RuntimeError when the
    server does not start or vegeta fails."""
    from launcher.broker import free_port, set_parent_death_signal

    vegeta = ensure_vegeta()
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (work / "http-floor-server.log").open("wb") as log:
        server = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.http_floor_app", "--port", str(port), stdout=log, stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parent.parent,
            preexec_fn=set_parent_death_signal if sys.platform == "linux" else None)
        steps = []
        try:
            await _wait_answering(f"{url}/healthz", server, work / "http-floor-server.log")
            for n, rate in enumerate(rates):
                targets = work / f"floor-targets-{rate}.jsonl"
                write_targets(targets, url, "unused-by-the-floor", count=max(1, round(rate * duration_s)),
                              seed=seed + n, run_id=f"floor{seed + n}")
                say(f"http floor: {rate:,} requests/s for {duration_s:g} s against a plain aiohttp app ...")
                account = CpuAccount({"server": server.pid})
                rows = await _attack(vegeta, targets, work / f"floor-results-{rate}", rate=rate, duration_s=duration_s,
                                     timeout_s=10.0, cpu_of_attack=account.attack)
                out = summarise(rows, rate=rate, duration_s=duration_s)
                step = {k: out[k] for k in ("rate", "duration_s", "requests", "success_ratio", "status_codes",
                                             "latency_ms")}
                step["sent_per_s"] = round(out["requests"] / out["span_s"], 1) if out["span_s"] else 0.0
                step["cpu"] = account.close(out["requests"])
                say(f"http floor {rate}/s: {out['requests']} requests, p50 {out['latency_ms']['p50']} ms, "
                    f"p99 {out['latency_ms']['p99']} ms, server {step['cpu']['by_role']['server']['us_per_request']} "
                    f"µs of CPU per request")
                steps.append(step)
        finally:
            with contextlib.suppress(ProcessLookupError):
                server.terminate()
            try:
                await asyncio.wait_for(server.wait(), 10)
            except TimeoutError:
                server.kill()
                await server.wait()
    return {"rates": steps}


async def _wait_answering(url: str, server, log: Path) -> None:
    """Until ``url`` answers 200 (at most FLOOR_READY_S). Raises RuntimeError, with the
    server's log, when it exits or the time is up."""
    import aiohttp

    deadline = time.monotonic() + FLOOR_READY_S
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            if server.returncode is not None:
                raise RuntimeError(f"the HTTP floor's server exited {server.returncode}: "
                                   f"{log.read_text(errors='replace')[-2000:].strip()}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP floor's server did not answer within {FLOOR_READY_S:g} s: "
                                   f"{log.read_text(errors='replace')[-2000:].strip()}")
            await asyncio.sleep(0.2)  # poll interval of the condition above


async def _attack(vegeta: Path, targets: Path, stem: Path, *, rate: int, duration_s: float,
                  timeout_s: float, cpu_of_attack: dict | None = None) -> list[tuple[int, int, int, str]]:
    """``vegeta attack`` of ``targets`` at ``rate``/s for ``duration_s`` (open model), its
    results kept in ``<stem>.bin``; the per-request rows of :func:`parse_results_csv`.
    ``cpu_of_attack``, when given, gets ``seconds``: this process's reaped children's
    CPU (RUSAGE_CHILDREN, user + system) as the attack ended, before the encoding.
    Raises RuntimeError (from :func:`_run`) when vegeta fails or outlives its bound."""
    results = stem.with_suffix(".bin")
    csv_path = stem.with_suffix(".csv")
    await _run([str(vegeta), "attack", "-lazy", "-format=json", f"-rate={rate}/1s",
                f"-duration={duration_s:g}s", f"-timeout={timeout_s:g}s", f"-max-workers={MAX_WORKERS}",
                f"-targets={targets}", f"-output={results}", f"-name=docket-{rate}"],
               timeout_s=duration_s + timeout_s + 60)
    if cpu_of_attack is not None:
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_of_attack["seconds"] = used.ru_utime + used.ru_stime
    with csv_path.open("wb") as f:
        await _run([str(vegeta), "encode", "--to", "csv", str(results)], timeout_s=300, stdout=f)
    with csv_path.open(newline="") as f:
        rows = parse_results_csv(f)
    csv_path.unlink(missing_ok=True)  # response bodies included: large; vegeta's .bin stays
    return rows


def _settled(before: dict, after: dict, answered: int) -> tuple[bool, str]:
    """(whether the Clerk has decided every event the API accepted since ``before``,
    what is missing). Accepted: the API's submissions that reached Kafka
    (docket_api_submissions_total), once none is waiting; without the API's page, the
    answers the client got (``answered``)."""
    if "clerk" not in after or "clerk" not in before:
        return True, "no /metrics page of the Clerk: not waited for"
    done = sum(_counter(after["clerk"], n) - _counter(before["clerk"], n)
               for n in ("docket_clerk_decisions_total", "docket_clerk_divergences_total"))
    if "api" in after and "api" in before:
        waiting = _counter(after["api"], "docket_api_waiting_submissions")
        accepted = (_counter(after["api"], "docket_api_submissions_total")
                    - _counter(before["api"], "docket_api_submissions_total"))
        if waiting > 0:
            return False, f"{waiting:g} submissions still wait in the API"
    else:
        accepted = answered
    if done < accepted:
        return False, f"the Clerk has decided {done:g} of {accepted:g} accepted events"
    return True, ""


async def _settle(session, urls: dict[str, str], before: dict, answered: int,
                  problems: list[str]) -> tuple[bool, dict]:
    """Scrape until :func:`_settled` (at most :data:`SETTLE_S`): the server-side figures
    then include the events answered 202 or abandoned by the client. (True when it got
    there, the last scrape.)"""
    deadline = time.monotonic() + SETTLE_S
    while True:
        failed: list[str] = []
        after = await scrape_all(session, urls, failed)
        ok, missing = _settled(before, after, answered)
        if ok or time.monotonic() >= deadline:
            problems += failed
            if missing:
                problems.append(missing if ok else f"after {SETTLE_S:g} s {missing}")
            return ok, after
        await asyncio.sleep(0.25)  # poll interval of the condition above
