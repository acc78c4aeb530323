"""bench/http_load.py without a broker or vegeta: the targets it writes are requests
the API accepts, vegeta's report and per-request CSV are read right, and the stage
figures are quantiles of histogram deltas. No timing is asserted."""

from __future__ import annotations

import base64
import math

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from app.api import _REQUEST_FIELDS, create_app, parse_idempotency_key
from app.client import DocketClient
from app.settings import SETTINGS, load
from bench import http_load
from bench.common import histogram_quantile
from launcher.broker import free_port

TOKEN = "bench-token-0123456789"


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch):
    for s in SETTINGS:
        monkeypatch.delenv(s.env, raising=False)
    monkeypatch.setenv("DOCKET_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")  # nobody listens
    monkeypatch.setenv("DOCKET_API_TOKENS", TOKEN)
    return load()


def targets(count: int, seed: int = 3, run_id: str = "rtest") -> list[dict]:
    lines = list(http_load.target_lines("http://127.0.0.1:8080/", TOKEN,
                                       http_load.requests(seed, count, run_id)))
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in lines)
    return [orjson.loads(line) for line in lines]


def test_targets_are_unique_valid_api_requests(settings) -> None:
    client = DocketClient(settings)  # not started: used for the domain's validation only
    got = targets(600)  # past the receipts: transfers, adjustments, repeats and reuses
    assert len(got) == 600
    keys = [t["header"]["Idempotency-Key"][0] for t in got]
    assert len(set(keys)) == len(keys)
    names = set()
    for t in got:
        assert t["method"] == "POST" and t["url"] == "http://127.0.0.1:8080/v1/events"
        assert t["header"]["Authorization"] == [f"Bearer {TOKEN}"]
        assert t["header"]["Content-Type"] == ["application/json"]
        _, problem = parse_idempotency_key(t["header"]["Idempotency-Key"][0])
        assert problem is None, problem
        body = orjson.loads(base64.b64decode(t["body"], validate=True))
        assert set(body) == set(_REQUEST_FIELDS)
        assert client.check_event(body["event_name"], body["payload"]) == []
        assert body["payload"]["sku"].startswith("rtest.")
        names.add(body["event_name"])
    assert names == {"stock.adjust", "stock.transfer"}
    assert targets(50) == targets(50)  # a pure function of seed and run id
    assert targets(50, run_id="other") != targets(50)


async def test_the_api_accepts_the_targets_up_to_kafka(settings) -> None:
    """Through the real API (no Kafka): past validation, so refused only with 503."""
    client = DocketClient(settings)
    async with TestClient(TestServer(create_app(settings, client, connect=False))) as tc:
        for t in targets(200)[::40]:
            headers = {k: v[0] for k, v in t["header"].items()}
            resp = await tc.post("/v1/events", data=base64.b64decode(t["body"]), headers=headers)
            assert resp.status == 503, await resp.text()


def test_write_targets_writes_one_line_per_request(tmp_path) -> None:
    path = tmp_path / "targets.jsonl"
    n = http_load.write_targets(path, "http://h:1", TOKEN, count=25, seed=1, run_id="x")
    assert n == 25 and len(path.read_bytes().splitlines()) == 25


# vegeta v12.12.0 `report -type=json` of a 10 s run at 100/s against a dev stack
REPORT = (b'{"latencies":{"total":694396740165,"mean":694396740,"50th":238909247,"90th":1824795390,'
          b'"95th":2069215825,"99th":2323830515,"max":2684341797,"min":27876367},"bytes_in":{"total":514889,'
          b'"mean":514.889},"bytes_out":{"total":115159,"mean":115.159},"earliest":"2026-11-22T03:00:15.024082428Z",'
          b'"latest":"2026-11-22T03:00:25.014157676Z","end":"2026-11-22T03:00:25.106872756Z","duration":9990075248,'
          b'"wait":92715080,"requests":1000,"rate":100.09934611855888,"throughput":86.78153284315722,'
          b'"success":0.875,"status_codes":{"200":875,"409":125},"errors":["409 Conflict"]}')


def test_vegeta_report_is_read() -> None:
    rep = http_load.parse_report(REPORT)
    assert rep["requests"] == 1000
    assert rep["status_codes"] == {"200": 875, "409": 125}
    assert rep["errors"] == ["409 Conflict"]
    assert rep["latency_ms"]["p50"] == 238.909 and rep["latency_ms"]["p99"] == 2323.831
    assert rep["latency_ms"]["max"] == 2684.342 and rep["latency_ms"]["mean"] == 694.397
    assert math.isclose(rep["duration_s"], 9.990075248) and math.isclose(rep["wait_s"], 0.09271508)


# `vegeta encode --to csv` rows (bodies and headers shortened): 200, 409, 202, a timeout
S = 1_795_316_415_000_000_000
CSV = [
    f"{S},200,215501682,99,468,,e30=,docket-100,0,POST,http://127.0.0.1:18380/v1/events,e30=\n",
    f"{S + 400_000_000},409,1472686440,100,576,409 Conflict,e30=,docket-100,1,POST,http://h/v1/events,e30=\n",
    f"{S + 1_200_000_000},202,5001000000,100,300,,e30=,docket-100,2,POST,http://h/v1/events,e30=\n",
    (f'{S + 1_300_000_000},0,10000000000,0,0,"Post ""http://h/v1/events"": context deadline exceeded",'
     f",docket-100,3,POST,http://h/v1/events,\n"),
]


def test_results_csv_is_summarised() -> None:
    rows = http_load.parse_results_csv(CSV)
    assert [r[1] for r in rows] == [200, 409, 202, 0]
    assert rows[3][3] == 'Post "http://h/v1/events": context deadline exceeded'
    out = http_load.summarise(rows, rate=2, duration_s=2.0)
    assert out["requests"] == 4 and out["decided"] == 2 and out["pending_202"] == 1
    assert out["status_codes"] == {"0": 1, "200": 1, "202": 1, "409": 1}
    assert out["success_ratio"] == 0.5
    span = 11.3  # first start -> last end
    assert out["span_s"] == span
    assert out["decided_per_s"] == out["throughput_per_s"] == round(2 / span, 1)
    assert out["ok_2xx_per_s"] == round(2 / span, 1)  # 200 and 202
    assert out["errors"] == ['Post "http://h/v1/events": context deadline exceeded']  # not "409 Conflict"
    assert out["decided_latency_ms"]["max"] == 1472.686 and out["latency_ms"]["max"] == 10000.0
    tl = out["timeline"]
    assert [e["t"] for e in tl] == list(range(len(tl)))
    assert sum(e["sent_per_s"] for e in tl) == 4 and sum(e["ok_per_s"] for e in tl) == 2
    assert tl[0]["ok_per_s"] == 1 and tl[1]["ok_per_s"] == 1  # completed at 0.2 s and 1.9 s


def test_2xx_rate_counts_202_but_decided_rate_does_not() -> None:
    rows = [(i * 10_000_000, code, 1_000_000, "") for i, code in enumerate([200, 202, 202, 409])]
    out = http_load.summarise(rows, rate=100, duration_s=0.04)
    assert out["decided"] == 2 and math.isclose(out["ok_2xx_per_s"], 1.5 * out["decided_per_s"], rel_tol=0.01)


def page(values: list[float], extra: list[float] = (), route: str = "/v1/events") -> str:
    r = CollectorRegistry()
    h = Histogram("docket_api_request_duration_seconds", "d", ["route"], registry=r,
                  buckets=(.001, .01, .1, 1))
    Histogram("docket_clerk_agreement_wait_seconds", "w", registry=r, buckets=(.001, .01, .1, 1))
    for v in values:
        h.labels(route).observe(v)
    for v in extra:
        h.labels("/healthz").observe(v)
    return generate_latest(r).decode()


def test_stage_figures_are_quantiles_of_the_histogram_delta() -> None:
    before = {"api": http_load.parse_metrics(page([5.0] * 50))}  # slow requests of an earlier run
    after_values = [5.0] * 50 + [0.005] * 90 + [0.05] * 10
    after = {"api": http_load.parse_metrics(page(after_values, extra=[0.5] * 7))}
    stages = http_load.server_stages(before, after)
    api = stages["api_request"]
    assert api["count"] == 100  # this run's requests on /v1/events only
    buckets = [(.001, 0), (.01, 90), (.1, 100), (1, 100), (math.inf, 100)]
    assert api["p50"] == round(histogram_quantile(buckets, 0.5) * 1000, 3)
    assert api["p99"] == round(histogram_quantile(buckets, 0.99) * 1000, 3)
    assert api["p999"] == round(histogram_quantile(buckets, 0.999) * 1000, 3)
    assert 1 < api["p50"] <= 10 and 10 < api["p99"] <= 100
    assert api["mean"] == round((90 * 0.005 + 10 * 0.05) / 100 * 1000, 3)
    assert "usher_intake" not in stages  # no page for instance a: left out
    assert http_load.stage_delta(None, after["api"][("docket_clerk_agreement_wait_seconds", ())]) == {
        "count": 0, "mean": None, "p50": None, "p99": None, "p999": None}


def test_a_series_first_seen_after_the_run_began_counts_from_zero() -> None:
    after = http_load.parse_metrics(page([0.05] * 4))
    series = after[("docket_api_request_duration_seconds", (("route", "/v1/events"),))]
    d = http_load.stage_delta(None, series)
    assert d["count"] == 4 and 10 < d["p50"] <= 100


def scrape(decisions: float = 0, divergences: float = 0, submissions: float | None = None,
           waiting: float = 0) -> dict:
    clerk = {("docket_clerk_decisions_total", ()): {"value": decisions},
             ("docket_clerk_divergences_total", ()): {"value": divergences}}
    out = {"clerk": clerk}
    if submissions is not None:
        out["api"] = {("docket_api_submissions_total", (("result", "applied"),)): {"value": submissions},
                      ("docket_api_waiting_submissions", ()): {"value": waiting}}
    return out


def test_settled_when_the_clerk_has_decided_what_the_api_accepted() -> None:
    before = scrape(100, 1, 90)
    missing = "the Clerk has decided 50 of 60 accepted events"
    assert http_load._settled(before, scrape(150, 1, 150), answered=10) == (False, missing)
    assert http_load._settled(before, scrape(159, 2, 150), answered=10) == (True, "")
    assert http_load._settled(before, scrape(200, 1, 150, waiting=3), answered=10)[0] is False
    # without the API's page: the answers the client got
    assert http_load._settled(scrape(100), scrape(105), answered=6)[0] is False
    assert http_load._settled(scrape(100), scrape(106), answered=6)[0] is True
    assert http_load._settled({}, {}, answered=6)[0] is True  # no Clerk page: nothing to wait for


def test_cpu_per_request_divides_each_process_and_their_sum_by_the_requests_sent() -> None:
    cpu = {"api": {"seconds": 26.0, "cores": 0.52}, "clerk": {"seconds": 9.5, "cores": 0.19},
           "vegeta": {"seconds": 9.0, "cores": 0.18}}
    got = http_load.cpu_per_request(cpu, 50_000)
    assert got["by_role"]["api"] == {"seconds": 26.0, "cores": 0.52, "us_per_request": 520.0}
    assert got["by_role"]["clerk"]["us_per_request"] == 190.0
    assert got["us_per_request"] == 890.0
    assert got["cores"] == 0.89
    assert http_load.cpu_per_request(cpu, 0)["us_per_request"] is None  # nothing sent: no cost per request


def test_cpu_delta_is_the_seconds_used_between_two_readings_and_leaves_out_a_process_gone() -> None:
    from bench.profile import cpu_delta, cpu_seconds

    before = {"api": 10.0, "clerk": 4.0, "gone": 1.0}
    after = {"api": 15.0, "clerk": 5.0}
    assert cpu_delta(before, after, 10.0) == {"api": {"seconds": 5.0, "cores": 0.5},
                                              "clerk": {"seconds": 1.0, "cores": 0.1}}
    import os
    mine = cpu_seconds({"me": os.getpid(), "nobody": 2 ** 22 + 1})  # above pid_max's default: no such process
    assert set(mine) == {"me"} and mine["me"] > 0


async def test_the_http_floor_app_answers_json_and_refuses_what_is_not() -> None:
    """bench/http_floor_app.py does the floor's work: route, read, parse, answer."""
    from bench import http_floor_app

    async with TestClient(TestServer(http_floor_app.create_app())) as client:
        line = targets(1)[0]
        resp = await client.post("/v1/events", data=base64.b64decode(line["body"]),
                                 headers={"Content-Type": "application/json"})
        assert resp.status == 200 and await resp.json() == {"status": "ok"}
        resp = await client.post("/v1/events", data=b"{not json", headers={"Content-Type": "application/json"})
        assert resp.status == 400 and "not JSON" in (await resp.json())["error"]
        assert (await client.get("/healthz")).status == 200


def test_the_http_floor_app_says_in_one_line_why_it_cannot_listen(monkeypatch, capsys) -> None:
    import socket
    import sys

    from bench import http_floor_app

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setattr(sys, "argv", ["http_floor_app", "--port", str(port)])
        with pytest.raises(SystemExit) as exit_:
            http_floor_app.main()
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"http_floor_app: cannot listen on http://127.0.0.1:{port}:") and "Traceback" not in err
    for bad in ("0", "70000", "x"):
        monkeypatch.setattr(sys, "argv", ["http_floor_app", "--port", bad])
        with pytest.raises(SystemExit) as exit_:
            http_floor_app.main()
        assert exit_.value.code == 2 and "is not a port number" in capsys.readouterr().err


def items_page(per_stream: dict[str, float]) -> dict:
    """A worker's /metrics as Faust's Prometheus monitor writes its stream counter, parsed."""
    r = CollectorRegistry()
    c = Counter("faust_total_events", "events", ["stream"], registry=r)
    for stream, n in per_stream.items():
        c.labels(stream).inc(n)
    return http_load.parse_metrics(generate_latest(r).decode())


def test_stream_items_per_event_is_the_counters_delta_over_the_events_sent() -> None:
    """The Kafka-native sweep's stream items per event (how many rounds of its agents
    an event cost a worker): every stream's items of a role between the two scrapes,
    over the events sent; the API, and a role missing from either scrape, left out."""
    before = {"clerk": items_page({"clerk": 100}), "a": items_page({"usher": 40}), "api": items_page({"x": 1})}
    after = {"clerk": items_page({"clerk": 1_100, "other": 50}), "a": items_page({"usher": 540}),
             "b": items_page({"usher": 9}), "api": items_page({"x": 99})}
    assert http_load.stream_items_per_event(before, after, 1_000) == {"clerk": 1.05, "a": 0.5}
    assert http_load.stream_items_per_event(before, after, 0) == {}
