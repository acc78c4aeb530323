"""`docket demo`: a realistic workload of the configured domain through the REST API, then
a check of the domain's invariants.

The workload is :func:`chaos.workload.records` with the domain's kit (app/domains/kit.py;
deterministic for a seed): the kit's set-up events first (inventory: receipts for every
warehouse x sku; accounts: every account opened, then funded), then its mix, some events
bound to be rejected (more than the stock or the balance), some repeated with the same
Idempotency-Key (answered with the original outcome: replays), some reusing a key for
another request (422). Each run names its affinity groups (skus, books) and keys after a
fresh run id, so runs against a stack that keeps its state (``make run``) never see each
other's entities.

Requests with one affinity key are sent in workload order, one at a time (the order the
workload was designed in: a transfer that drains an entity, then one that would need
the drained amount); different affinity keys go in parallel, at most ``--concurrency``
requests in flight. A request that fails in transit, or that the API answers 503
("not accepted", or its outcome unknown), is sent again with the same key at once, well
within the idempotency TTL: that is what idempotency keys are for. An answer 202
(undecided at the API's timeout) is polled until decided.

The check uses only what the API says: it reads every entity the run's events name from
``GET /v1/entities/{type}/{id}`` (once each entity has reached the highest version an
answer reported) and runs the kit's checks over the requests the API answered as applied
(each idempotency key counted once), the entities read, and every state an answer
carried (inventory: no stock negative, per sku the total across warehouses equals the
applied adjustments; accounts: no balance negative, money conserved per book and
currency, closed accounts empty). Exit code 0 when every check passes and every event
was decided, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import math
import re
import secrets
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import quote, urlsplit

import click
import orjson

from app.cli_types import SEED, Seconds
from app.settings import load


@dataclass(frozen=True)
class Request:
    lane: str  # the affinity key: requests of one lane are sent in order
    key: str  # Idempotency-Key
    event_name: str
    payload: dict


def requests_for(kit, seed: int, events: int, run_id: str, shape: Mapping[str, int] | None = None) -> list[Request]:
    """The workload of ``kit`` (a DomainKit) as REST requests: affinity groups named
    ``<run_id>.<name>``, keys ``demo-<run_id>-<workload key>``. ``shape`` sizes the
    workload [default: the kit's ``demo_shape``]; ValueError for one the kit cannot use."""
    from chaos.workload import records

    out = []
    for rec in records(kit, seed, events, scope=f"{run_id}.", **dict(shape or kit.demo_shape)):
        env = orjson.loads(rec.value)
        name, payload = env["event_name"], env["payload"]
        out.append(Request(kit.domain.affinity_key(name, payload), f"demo-{run_id}-{env['idempotency_key']}",
                           name, payload))
    return out


@dataclass
class Tally:
    """What the API answered, as the summary table shows it."""

    applied: int = 0
    rejected: Counter = field(default_factory=Counter)  # reason -> count (first answers only)
    replays: int = 0
    diverged: int = 0
    undecided: int = 0  # still pending at the end
    errors: Counter = field(default_factory=Counter)  # "HTTP 500", "ClientConnectorError", ...
    resent: int = 0  # requests sent again after a transport failure or a 503
    polled: int = 0  # answers 202, then polled
    latencies: list[float] = field(default_factory=list)  # seconds, send -> decided answer
    # idempotency key -> the request first sent with it, when the API answered it applied
    applied_keys: dict[str, Request] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)  # entity key -> highest version seen
    seen: list[tuple[str, dict]] = field(default_factory=list)  # (entity key, state) of every answer
    done: int = 0


def _outcome_entities(body: dict) -> list[dict]:
    outcome = body.get("outcome") or {}
    return outcome.get("entities") or []


class Demo:
    def __init__(self, url: str, token: str, concurrency: int, timeout_s: float) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.tally = Tally()
        self.first_sent: dict[str, Request] = {}
        # requests whose every send failed until the timeout: (request, when first
        # sent, why); the API may have accepted one before the failure
        self.unknown: list[tuple[Request, float, str]] = []
        # when the API stopped answering (monotonic s; None while it answers): one
        # outage is waited out for --timeout in all, not --timeout per request
        self.down_since: float | None = None
        self.unread: list[str] = []  # entity keys read_entities could not read (the API unreachable)
        self.session = None

    async def __aenter__(self) -> Self:
        import aiohttp

        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.concurrency + 4),
            timeout=aiohttp.ClientTimeout(total=self.timeout_s + 30),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    # ------------------------------------------------------------------ preflight

    async def preflight(self, domain: str) -> str | None:
        """None if the API is ready, serves ``domain`` and accepts the token, else what
        is wrong: also when nothing answers at the URL, or a server that is not docket's
        REST API does (a worker's /metrics port, any other HTTP server)."""
        import aiohttp

        try:
            async with self.session.get(f"{self.url}/readyz") as r:
                body = await self._json(r)
                if not (isinstance(body, dict) and isinstance(body.get("checks"), dict)
                        and isinstance(body.get("domain"), str)):
                    return await self._foreign(r, "/readyz")
                served = body["domain"]
                if served != domain:
                    return (f"the API at {self.url} serves the {served} domain, and this demo submits {domain} "
                            f"events: run `make demo DEMO_ARGS='--domain {served}'` (or `DOCKET_DOMAIN={served} "
                            f"make demo`)")
                if r.status != 200:
                    return f"the API at {self.url} is not ready: {body.get('message', r.status)}"
            async with self.session.get(f"{self.url}/v1/events/demo-preflight", headers=self.headers) as r:
                if r.status in (401, 403):
                    body = await self._json(r)
                    if not isinstance(body, dict):
                        return await self._foreign(r, "/v1/events/demo-preflight")
                    return f"the API refused the token ({r.status}): {body.get('message')}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return (f"cannot reach the API at {self.url}: {str(exc) or type(exc).__name__}; start the stack with "
                    "`make run`, or point --url at `docket api`'s address (by default "
                    "http://127.0.0.1:$DOCKET_API_PORT)")
        return None

    @staticmethod
    async def _json(r) -> Any:
        """The JSON body of answer ``r``, or None when it is not JSON."""
        try:
            return orjson.loads(await r.read())
        except orjson.JSONDecodeError:
            return None

    async def _foreign(self, r, path: str) -> str:
        """What is wrong when ``GET path`` answered ``r``, which is not docket's REST API."""
        text = (await r.read()).decode("utf-8", errors="replace")
        shown = " ".join(text.split())
        shown = shown[:80] + ("..." if len(shown) > 80 else "")
        prefix = urlsplit(self.url).path.rstrip("/")
        # `--url http://host:port/v1` reached docket's API under a path it does not serve (a user check)
        hint = (f" (--url ends in the path {prefix!r}: give the API's base URL, without the /v1 of its routes)"
                if prefix.endswith("/v1") else "")
        return (f"the server at {self.url} does not look like docket's REST API: GET {path} answered "
                f"{r.status} {r.headers.get('Content-Type') or '(no content type)'}, {shown!r}{hint}. Point --url "
                "at `docket api`'s address (by default http://127.0.0.1:$DOCKET_API_PORT), or start the stack "
                "with `make run`")

    # ------------------------------------------------------------------ submitting

    async def submit(self, req: Request, gate: asyncio.Semaphore) -> None:
        import aiohttp

        t = self.tally
        self.first_sent.setdefault(req.key, req)
        body = orjson.dumps({"event_name": req.event_name, "payload": req.payload})
        headers = {**self.headers, "Idempotency-Key": req.key}
        attempts = 0
        async with gate:
            began = time.perf_counter()  # latency: from sending (not from queueing for the gate)
            deadline = time.monotonic() + self.timeout_s
            while True:
                attempts += 1
                try:
                    async with self.session.post(f"{self.url}/v1/events", data=body, headers=headers) as r:
                        status, answer = r.status, await r.json(content_type=None)
                except (TimeoutError, aiohttp.ClientError) as exc:
                    why = type(exc).__name__
                else:
                    if status != 503:
                        self.down_since = None
                        break
                    why = "HTTP 503"
                # not accepted, or accepted and the answer lost: the same key is safe to
                # send again, for as long as one event's outcome is waited for (--timeout),
                # and no longer than --timeout after the API stopped answering: each
                # request waiting its own --timeout in turn made an API gone for good a
                # hang of events / concurrency x --timeout (the eleventh fresh-user trial)
                now = time.monotonic()
                self.down_since = now if self.down_since is None else self.down_since
                if now >= min(deadline, self.down_since + self.timeout_s):
                    self.unknown.append((req, began, why))
                    return
                t.resent += 1
                await asyncio.sleep(min(0.2 * attempts, 2.0))  # back-off before sending again
        if status == 202:
            t.polled += 1
            status, answer = await self.poll(req.key)
        self.record(req, status, answer, time.perf_counter() - began)

    async def settle_unknown(self) -> None:
        """Send once more, with the same key, each request whose sends all failed until
        the timeout (the API down meanwhile): the API may have accepted one before a
        failure, and the checks must count it if it was applied; a repeat answers the
        original's outcome, or submits it if it never arrived. What still fails is
        counted as an error under its failure (``Tally.errors``) and stays in
        ``self.unknown``: its fate is not known, and the checks count it as not applied."""
        unknown, self.unknown = self.unknown, []
        gate = asyncio.Semaphore(self.concurrency)
        await asyncio.gather(*(self.submit(req, gate) for req, _began, _why in unknown))
        for _req, _began, why in self.unknown:
            self.tally.done += 1
            self.tally.errors[why] += 1

    async def poll(self, key: str) -> tuple[int, dict]:
        """Poll GET /v1/events/{key} until decided or diverged (or the timeout), through
        transport failures (the API restarting: it died with a traceback before).
        Returns (status, answer): 200 applied, 409 rejected, 422 key reused, 502
        diverged, 202 not decided at the timeout (the answer last read, ``{}`` if none)."""
        import aiohttp

        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                async with self.session.get(f"{self.url}/v1/events/{quote(key, safe='')}",
                                            headers=self.headers) as r:
                    answer, status = await r.json(content_type=None), r.status
            except (TimeoutError, aiohttp.ClientError, ValueError):  # ValueError: not JSON
                answer, status = {}, 503  # the API restarting, or a proxy's page: ask again
            if not isinstance(answer, dict):
                answer = {}
            state = answer.get("state")
            if status == 200 and state == "decided":
                outcome = answer.get("outcome") or {}
                if outcome.get("status") == "applied":
                    return 200, answer
                reason = outcome.get("reason")
                return (422 if reason == "idempotency_key_reused" else 409), {**answer, "error": reason}
            if state == "diverged":
                return 502, answer
            if time.monotonic() >= deadline:
                return 202, answer
            await asyncio.sleep(0.2)  # poll interval of the event's state

    def record(self, req: Request, status: int, answer: dict, seconds: float) -> None:
        t = self.tally
        t.done += 1
        if status in (200, 409, 422, 502):
            t.latencies.append(seconds)
        replay = bool(answer.get("replay"))
        for ent in _outcome_entities(answer):
            key, version = ent.get("key"), ent.get("version", 0)
            if key and version > t.versions.get(key, -1):
                t.versions[key] = version
            if key and isinstance(ent.get("state"), dict):
                t.seen.append((key, ent["state"]))
        if status == 200:
            if replay:
                t.replays += 1
            else:
                t.applied += 1
            # each key counted once, with the request first sent with it (a repeat or
            # a request sent again after a lost answer may be the first to hear "applied")
            t.applied_keys.setdefault(req.key, self.first_sent[req.key])
        elif status in (409, 422):
            if replay:
                t.replays += 1
            else:
                t.rejected[answer.get("error") or "rejected"] += 1
        elif status == 502:
            t.diverged += 1
        elif status == 202:
            t.undecided += 1
        else:
            t.errors[f"HTTP {status} {answer.get('error', '')}".strip()] += 1

    async def run(self, requests: list[Request], progress=None) -> float:
        """Send every request (per lane in order); return the seconds it took."""
        lanes: dict[str, list[Request]] = defaultdict(list)
        for req in requests:
            lanes[req.lane].append(req)
        gate = asyncio.Semaphore(self.concurrency)

        async def lane(reqs: list[Request]) -> None:
            for req in reqs:
                await self.submit(req, gate)
                if progress is not None:
                    progress(self.tally)

        began = time.perf_counter()
        await asyncio.gather(*(lane(reqs) for reqs in lanes.values()))
        return time.perf_counter() - began

    # ------------------------------------------------------------------ checking

    async def read_entities(self, keys: list[str], deadline_s: float | None = None) -> dict[str, dict | None]:
        """GET every entity; wait until each has reached the highest version an answer
        reported, so the check sees the state after the last event. One deadline for the
        whole read, ``deadline_s`` from now [default: --timeout, at least 30 s], through
        dropped connections and 5xx answers (the API restarting): a deadline per entity
        that ran while it queued for a connection left most entities one try after an
        outage (the eleventh fresh-user trial). Entity key -> its answer, or None when
        the API says no agreed change exists (404) or the version stays behind; the keys
        never read (no answer but failures until the deadline) are also in
        ``self.unread``: the checks cannot judge them."""
        import aiohttp

        gate = asyncio.Semaphore(self.concurrency)
        found: dict[str, dict | None] = {}
        deadline = time.monotonic() + (max(30.0, self.timeout_s) if deadline_s is None else deadline_s)
        self.unread = []

        async def one(key: str) -> None:
            kind, ident = key.split(":", 1)
            url = f"{self.url}/v1/entities/{quote(kind, safe='')}/{quote(ident, safe=':')}"
            want = self.tally.versions.get(key, 0)
            answered = False
            async with gate:
                while True:
                    try:
                        async with self.session.get(url, headers=self.headers) as r:
                            body, status = await r.json(content_type=None), r.status
                    except (TimeoutError, aiohttp.ClientError, ValueError):  # ValueError: not JSON
                        body, status = None, 503  # the API restarting: ask again until the deadline
                    answered = answered or status < 500
                    ent = body if status == 200 and isinstance(body, dict) else None
                    # an answer that is no answer (the API down) is not "no change yet"
                    if (status < 500 and (ent or {}).get("version", 0) >= want) or time.monotonic() >= deadline:
                        found[key] = ent
                        if not answered:
                            self.unread.append(key)
                        return
                    await asyncio.sleep(0.2)  # poll interval: the API's view catches up

        await asyncio.gather(*(one(k) for k in keys))
        self.unread.sort()
        return found


def balance_check(kit, tally: Tally, entities: dict[str, dict | None],
                  unread: Sequence[str] = ()) -> dict[str, Any]:
    """The kit's checks over what the API said: the requests answered as applied (each
    key once), the entities read (entity key -> the API's answer, None when not found)
    and every state an answer carried. ``passed`` when every check passes. With
    ``unread`` entities (the API unreachable while they were read) no check is run,
    and it does not pass: an entity not read counted as empty, and the checks failed
    docket's correct results (the eleventh fresh-user trial)."""
    final = {key: ent["state"] for key, ent in entities.items() if ent is not None}
    missing = sorted(k for k, e in entities.items() if e is None)
    applied = [(req.event_name, req.payload) for req in tally.applied_keys.values()]
    checks = {} if unread else kit.check(applied, final, tally.seen)
    return {
        "entities_read": len(final),
        "entities_missing": missing,
        "entities_unread": list(unread),
        "checks": {name: c.as_dict() for name, c in checks.items()},
        "passed": not unread and all(c.passed for c in checks.values()),
    }


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)  # nearest rank
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def summary_table(summary: dict):
    from rich.table import Table

    t = Table(title=f"docket demo {summary['run_id']}: {summary['events']} events in "
                    f"{summary['seconds']:.1f} s ({summary['events_per_s']:.0f}/s), "
                    f"concurrency {summary['concurrency']}", title_justify="left")
    t.add_column("", style="bold")
    t.add_column("count / value", justify="right")
    t.add_row("applied", str(summary["applied"]))
    for reason, n in sorted(summary["rejected"].items(), key=lambda kv: -kv[1]):
        t.add_row(f"rejected: {reason}", str(n))
    t.add_row("replays (same key, original outcome)", str(summary["replays"]))
    t.add_row("divergences", str(summary["divergences"]))
    if summary["undecided"]:
        t.add_row("undecided at the end", f"[red]{summary['undecided']}[/red]")
    for what, n in sorted(summary["errors"].items()):
        t.add_row(f"error: {what}", f"[red]{n}[/red]")
    if summary["resent"]:
        t.add_row("sent again (lost answer or 503)", str(summary["resent"]))
    if summary["polled"]:
        t.add_row("answered 202, then polled", str(summary["polled"]))
    lat = summary["latency_ms"]
    fmt = (lambda v: "-" if v is None else f"{v:.1f} ms")
    t.add_row("latency p50 / p99 / max", f"{fmt(lat['p50'])} / {fmt(lat['p99'])} / {fmt(lat['max'])}")
    b = summary["balance"]
    t.add_row("entities read from the API", f"{b['entities_read']} of {b['entities_read'] + len(b['entities_missing'])}")
    if b.get("entities_unread"):
        t.add_row("checks", f"[red]not run: {len(b['entities_unread'])} entities could not be read (the API "
                  "unreachable)[/red]")
    for name, c in b["checks"].items():
        t.add_row(name, c["detail"] if c["passed"] else f"[red]FAILED: {c['detail']}[/red]")
    t.add_row("balance check", "[green]passed[/green]" if b["passed"] else "[red]FAILED[/red]")
    return t


async def run_demo(url: str, token: str, kit, *, events: int, seed: int, concurrency: int,
                   shape: Mapping[str, int] | None, run_id: str, timeout_s: float, show_progress: bool,
                   console) -> dict:
    requests = requests_for(kit, seed, events, run_id, shape)
    async with Demo(url, token, concurrency, timeout_s) as demo:
        problem = await demo.preflight(kit.domain.name)
        if problem:
            raise click.ClickException(problem)
        if show_progress:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            with Progress(TextColumn("[bold]submitting"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), TextColumn("{task.fields[detail]}"),
                          console=console, transient=False) as bar:
                task = bar.add_task("submit", total=len(requests), detail="")

                def progress(t: Tally) -> None:
                    bar.update(task, completed=t.done, detail=(
                        f"applied {t.applied}  rejected {sum(t.rejected.values())}  replays {t.replays}"
                        + (f"  diverged {t.diverged}" if t.diverged else "")
                        + (f"  errors {sum(t.errors.values())}" if t.errors else "")))

                seconds = await demo.run(requests, progress)
        else:
            seconds = await demo.run(requests)
        await demo.settle_unknown()
        t = demo.tally
        keys = sorted({k for r in requests for k in kit.domain.entity_keys(r.event_name, r.payload)})
        entities = await demo.read_entities(keys)
    balance = balance_check(kit, t, entities, demo.unread)
    ms = [x * 1000 for x in t.latencies]
    return {
        "run_id": run_id,
        "domain": kit.domain.name,
        "url": url,
        "events": len(requests),
        "concurrency": concurrency,
        "seconds": seconds,
        "events_per_s": len(requests) / seconds if seconds else 0.0,
        "applied": t.applied,
        "rejected": dict(t.rejected),
        "replays": t.replays,
        "divergences": t.diverged,
        "undecided": t.undecided,
        "errors": dict(t.errors),
        "unknown_fate": len(demo.unknown),
        "resent": t.resent,
        "polled": t.polled,
        "latency_ms": {"p50": _quantile(ms, 0.50), "p99": _quantile(ms, 0.99), "max": max(ms, default=None)},
        "balance": balance,
        "passed": balance["passed"] and not t.undecided and not t.errors,
    }


def _check_run_id(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,16}", value):
        raise click.BadParameter("1-16 characters of A-Z a-z 0-9 _ -", param_hint="--run-id")
    return value


# The most entities the shapes may multiply to (warehouses x skus, books x accounts):
# the demo's model of the expected state holds each one.
MAX_SHAPE_PRODUCT = 1_000_000


def _parse_shape(values: tuple[str, ...]) -> dict[str, int]:
    shape = {}
    for v in values:
        name, eq, n = v.partition("=")
        if not eq or not name.isidentifier() or not (n.isascii() and n.isdigit()):
            raise click.BadParameter(f"{v!r} is not NAME=N (e.g. skus=50)", param_hint="--shape")
        shape[name] = int(n)
    return shape


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")  # RFC 3986's scheme, then "://"


def url_problem(url: str, example: str) -> str | None:
    """None when ``url`` is one the demo can send to (http or https, with a host, a port
    in 1-65535 when one is given, and no query or fragment), else
    one line saying what is wrong with it, that only http and https are supported and
    what a valid URL looks like (``example``: the default --url). Pure: the demo checks
    it before connecting, as aiohttp's own error for another scheme ("ftp://x/readyz")
    named neither the scheme nor the fix (a user check)."""
    fix = (f"docket demo supports only http and https: write http://HOST:PORT or https://HOST:PORT, e.g. "
           f"--url {example} (`docket api`'s address by default)")
    found = _SCHEME.match(url)
    if found is None:  # "localhost:8080", "mailto:x": no scheme://, so no host to send to
        return f"--url {url!r} does not start with http:// or https://; {fix}"
    scheme = found[1].lower()  # schemes are case-insensitive (RFC 3986, 3.1)
    if scheme not in ("http", "https"):
        return f"--url {url!r} uses the unsupported scheme {scheme!r}; {fix}"
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port  # .port raises for one out of 0-65535
    except ValueError as exc:  # e.g. an unclosed "[" of an IPv6 address, port 99999
        return f"--url {url!r} is not a valid URL ({exc}); {fix}"
    if not host:
        return f"--url {url!r} names no host; {fix}"
    if port == 0:  # nothing listens on port 0: connecting would only fail with "cannot reach"
        return f"--url {url!r} names port 0, which no server listens on; {fix}"
    # the demo appends its routes to --url, so "?x=1" or "#top" left it asking GET
    # /readyz of a page that is not the API (404, "does not look like docket's REST API")
    # an empty one ("http://host:8080/?") too: urlsplit gives '' for it, as for none
    extra = [f"the query {'?' + parts.query!r}"] if parts.query or "?" in url.split("#", 1)[0] else []
    extra += [f"the fragment {'#' + parts.fragment!r}"] if parts.fragment or "#" in url else []
    if extra:
        return (f"--url {url!r} is not a base URL: drop {' and '.join(extra)} (the demo appends its own "
                f"routes, /readyz and /v1/...); {fix}")
    if parts.username is not None or parts.password is not None:
        # aiohttp refuses credentials in the URL beside the Authorization header (a
        # traceback), and the banner would print the password: name neither
        shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        return (f"--url {shown!r} (credentials removed) holds a user name or password: docket's API takes a bearer "
                "token, not them; pass it with --token (or DOCKET_API_TOKENS), and the URL without them")
    return None


def default_token() -> str | None:
    from launcher.stack import TOKEN_FILE

    settings = load()
    if settings.api_tokens:
        return settings.api_tokens[0]
    try:
        return (settings.data_root / TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


@click.command("demo")
@click.option("--url", default=None, help="the API's base URL [default: from DOCKET_API_HOST and DOCKET_API_PORT]")
@click.option("--token", default=None,
              help="bearer token [default: the first of DOCKET_API_TOKENS, else the one `make run` keeps "
                   "in $DOCKET_DATA_ROOT/api-token]")
@click.option("--events", default=3000, show_default=True, type=click.IntRange(1), help="events to submit")
@click.option("--seed", type=SEED, default=1, show_default=True,
              help="workload seed, a 64-bit integer (same seed, same workload)")
@click.option("--concurrency", default=32, show_default=True, type=click.IntRange(1),
              help="most requests in flight")
@click.option("--domain", default=None, metavar="NAME",
              help="the stack's domain (one with a kit) [default: DOCKET_DOMAIN, else inventory]")
@click.option("--shape", multiple=True, metavar="NAME=N", callback=lambda _c, _p, v: _parse_shape(v),
              help="sizes the workload, repeatable (inventory: warehouses=5 skus=50; accounts: books=20 "
                   "accounts=6) [default: the domain's]")
@click.option("--run-id", default=None, callback=lambda _c, _p, v: _check_run_id(v),
              help="names this run's affinity groups and keys (1-16 of A-Z a-z 0-9 _ -) [default: random]")
@click.option("--timeout", "timeout_s", type=Seconds(), default=60.0, show_default=True,
              help="seconds to wait for one event's outcome")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON instead of a table")
def demo(url: str | None, token: str | None, events: int, seed: int, concurrency: int, domain: str | None,
         shape: dict[str, int], run_id: str | None, timeout_s: float, as_json: bool) -> None:
    """Submit a realistic workload through the REST API and check the domain's invariants."""
    from rich.console import Console

    import app.domains  # noqa: F401  registers the built-in domains
    from app.registry import NoKit, UnknownDomain, registry
    from launcher.stack import api_base_url

    domain = domain or load().domain
    try:
        kit = registry.kit(domain)
    except (UnknownDomain, NoKit) as exc:
        raise click.BadParameter(str(exc), param_hint="--domain") from None
    unknown = sorted(set(shape) - set(kit.demo_shape))
    if unknown:
        raise click.BadParameter(f"{domain} has no shape {', '.join(unknown)} (its shapes: "
                                 f"{', '.join(f'{k}={v}' for k, v in kit.demo_shape.items())})", param_hint="--shape")
    shape = {**kit.demo_shape, **shape}
    product = math.prod(shape.values())
    if product > MAX_SHAPE_PRODUCT:
        # the demo's model holds every entity (inventory: a stock per warehouse and sku):
        # skus=5000000 ran out of memory, skus=10^20 hung (the twelfth fresh-user trial)
        raise click.BadParameter(f"{' x '.join(f'{k}={v:,}' for k, v in shape.items())} = {product:,} entities; "
                                 f"the demo holds each in memory, at most {MAX_SHAPE_PRODUCT:,}", param_hint="--shape")
    try:
        requests_for(kit, seed, 1, "check", shape)
    except (TypeError, ValueError) as exc:
        raise click.BadParameter(f"{domain}: {exc}", param_hint="--shape") from None
    if events < kit.min_events:
        raise click.BadParameter(f"the {domain} demo needs at least {kit.min_events} events for its checks to "
                                 "prove anything", param_hint="--events")
    default_url = api_base_url(load())
    url = url or default_url
    problem = url_problem(url, default_url)
    if problem:  # before connecting: an Error line and exit 1, as for a server that is not docket's API
        raise click.ClickException(problem)
    token = token or default_token()
    if not token:
        raise click.UsageError("no token: pass --token, or set DOCKET_API_TOKENS (`make run` prints its token)")
    run_id = run_id or secrets.token_hex(3)
    console = Console(stderr=True)
    if not as_json:
        console.print(f"docket demo: {events} {domain} events "
                      f"({', '.join(f'{k}={v}' for k, v in shape.items())}, seed {seed}) to {url}, run id {run_id}")
    summary = asyncio.run(run_demo(url, token, kit, events=events, seed=seed, concurrency=concurrency,
                                   shape=shape, run_id=run_id, timeout_s=timeout_s,
                                   show_progress=console.is_terminal and not as_json, console=console))
    if as_json:
        click.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    else:
        Console().print(summary_table(summary))
        if summary["balance"]["entities_unread"]:
            click.echo(f"{len(summary['balance']['entities_unread'])} entities could not be read back within "
                       f"--timeout ({timeout_s:g} s, at least 30): the API did not answer, so the checks were not "
                       "run", err=True)
        if summary["unknown_fate"]:
            click.echo(f"{summary['unknown_fate']} request(s) could not be sent within --timeout "
                       f"({timeout_s:g} s), nor once more at the end: the API may have applied them, and the "
                       "checks below count them as not applied", err=True)
        for name, c in summary["balance"]["checks"].items():
            if not c["passed"]:
                click.echo(f"{name} failed: {c['detail']}", err=True)
    sys.exit(0 if summary["passed"] else 1)
