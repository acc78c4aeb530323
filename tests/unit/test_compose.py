"""docker-compose.yml cannot drift from the Procfile (no Docker engine in CI, so this is
its only check): the same components, the same docket subcommands and flags, DOCKET_*
settings that exist and agree, Kafka dependencies, healthchecks and volumes, and a Kafka
service configured like the local launcher."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from honcho.environ import parse_procfile

from app.settings import SETTINGS
from launcher import broker as launcher

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = {s.env: s.default for s in SETTINGS}
# Procfile process -> compose service. The Procfile's broker is the local launcher; in
# compose it is the apache/kafka image.
BROKER = ("broker", "kafka")
# Settings a container must set differently from the host: where Kafka is, where the
# data volume is mounted, where the API listens / is found.
# The workers' /metrics listens on the container's interfaces (DOCKET_METRICS_HOST), so
# that a scraper on the compose network, or the host through a published port, reads it.
CONTAINER_SPECIFIC = {"DOCKET_KAFKA_BOOTSTRAP", "DOCKET_DATA_ROOT", "DOCKET_API_HOST", "DOCKET_API_PORT",
                      "DOCKET_METRICS_HOST"}
# Launcher properties that name addresses or paths, which differ in a container.
ADDRESS_KEYS = {"listeners", "advertised.listeners", "controller.quorum.voters",
                "listener.security.protocol.map", "log.dirs"}
VAR = re.compile(r"\$\{(DOCKET_[A-Z0-9_]+)(?::-([^}]*))?\}")


@pytest.fixture(scope="module")
def procfile() -> dict[str, str]:
    return dict(parse_procfile((ROOT / "Procfile").read_text()).processes)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict) -> dict[str, dict]:
    return compose["services"]


def docket_services(services: dict[str, dict]) -> dict[str, dict]:
    return {name: svc for name, svc in services.items() if name != BROKER[1]}


def command_of(svc: dict) -> str:
    cmd = svc["command"]
    return cmd if isinstance(cmd, str) else shlex.join(cmd)


def procfile_command(line: str) -> str:
    """The command a Procfile line runs, without the shell's `exec`."""
    return line.removeprefix("exec ").strip()


def test_same_components(procfile: dict[str, str], services: dict[str, dict]) -> None:
    assert set(procfile) == {"broker", "topics", "instance-a", "instance-b", "clerk", "api"}
    expected = {BROKER[1] if name == BROKER[0] else name for name in procfile}
    assert set(services) == expected


def test_procfile_runs_the_broker_in_the_foreground(procfile: dict[str, str]) -> None:
    assert procfile_command(procfile["broker"]) == "docket broker run"
    # exec: the component itself gets honcho's signals and reports its own exit code
    assert all(line.startswith("exec docket ") for line in procfile.values()), procfile


def test_same_commands_and_flags(procfile: dict[str, str], services: dict[str, dict]) -> None:
    for name, line in procfile.items():
        if name == BROKER[0]:
            continue
        assert command_of(services[name]) == procfile_command(line), name


def test_components_wait_for_their_topics(procfile: dict[str, str]) -> None:
    """honcho starts everything at once: whatever needs topics polls for them (the API
    connects in the background by itself) instead of crashing at start."""
    for name in ("topics", "instance-a", "instance-b", "clerk"):
        args = shlex.split(procfile_command(procfile[name]))
        assert "--wait" in args, name
        assert float(args[args.index("--wait") + 1]) >= 60, name


# Procfile process -> the setting naming the port of its /metrics page
WEB_PORTS = {"instance-a": "DOCKET_INSTANCE_A_WEB_PORT", "instance-b": "DOCKET_INSTANCE_B_WEB_PORT",
             "clerk": "DOCKET_CLERK_WEB_PORT"}


def web_port_arg(line: str) -> str | None:
    args = shlex.split(procfile_command(line))
    return args[args.index("--web-port") + 1] if "--web-port" in args else None


def test_every_worker_serves_metrics_on_a_port_of_its_own(procfile: dict[str, str]) -> None:
    """MetricsListenOnConfiguredAddress (observability): instance a, instance b and the
    Clerk each serve /metrics (Faust's web server, `--web-port`) on the port its own
    setting names, with that setting's default; no two workers, the API or the broker
    share a port."""
    workers = {name for name, line in procfile.items()
               if shlex.split(procfile_command(line))[1] in ("instance", "clerk")}
    assert workers == set(WEB_PORTS)
    defaults = {}
    for name, var in WEB_PORTS.items():
        arg = web_port_arg(procfile[name])
        assert arg == f"${{{var}:-{DEFAULTS[var]}}}", f"Procfile {name}: --web-port {arg}"
        defaults[name] = DEFAULTS[var]
    taken = [*defaults.values(), DEFAULTS["DOCKET_API_PORT"], DEFAULTS["DOCKET_BROKER_PORT"]]
    assert len(set(taken)) == len(taken), taken
    assert web_port_arg(procfile["api"]) is None and web_port_arg(procfile["topics"]) is None


def test_the_stacks_banner_names_the_procfiles_metrics_ports(procfile: dict[str, str], monkeypatch) -> None:
    """The instances' ports `docket stack run` prints (Settings.instance_web_ports) are
    the Procfile's, and follow their settings."""
    from app.settings import load

    for var in WEB_PORTS.values():
        monkeypatch.delenv(var, raising=False)
    ports = dict(load().instance_web_ports)
    assert {f"instance-{i}" for i in ports} == {n for n in WEB_PORTS if n.startswith("instance-")}
    for ident, port in ports.items():
        assert str(port) == DEFAULTS[WEB_PORTS[f"instance-{ident}"]]
    monkeypatch.setenv("DOCKET_INSTANCE_B_WEB_PORT", "7001")
    assert dict(load().instance_web_ports)["b"] == 7001


def test_the_stacks_banner_prints_metrics_on_docket_metrics_host(monkeypatch) -> None:
    """MetricsListenOnConfiguredAddress: under DOCKET_METRICS_HOST=::1 the banner named
    http://127.0.0.1:<port>/metrics for the Clerk and the instances, where nothing
    listened (the tenth fresh-user trial); it names [::1], and 127.0.0.1 for a
    wildcard."""
    from app.settings import load
    from launcher.stack import banner

    monkeypatch.setenv("DOCKET_METRICS_HOST", "::1")
    settings = load()
    text = banner(settings, "tok", "generated", "key-1")
    assert f"Clerk: http://[::1]:{settings.clerk_web_port}/metrics" in text
    for ident, port in settings.instance_web_ports:
        assert f"instance {ident}: http://[::1]:{port}/metrics" in text
    assert "127.0.0.1:" + str(settings.clerk_web_port) not in text
    monkeypatch.setenv("DOCKET_METRICS_HOST", "0.0.0.0")
    assert f"Clerk: http://127.0.0.1:{settings.clerk_web_port}/metrics" in banner(load(), "tok", "generated", "k")


def test_compose_workers_serve_metrics_to_the_network_and_the_host(services: dict[str, dict]) -> None:
    """In compose each worker's /metrics listens on the container's interfaces
    (DOCKET_METRICS_HOST=0.0.0.0: reachable from the compose network) and is published
    on the host's loopback at the same port as under `make run`."""
    for name, var in WEB_PORTS.items():
        svc = services[name]
        assert svc["environment"]["DOCKET_METRICS_HOST"] == "0.0.0.0", name
        port = f"${{{var}:-{DEFAULTS[var]}}}"
        assert svc["ports"] == [f"127.0.0.1:{port}:{port}"], name
        assert var in svc["environment"], name


def test_docket_env_uses_real_settings_with_their_defaults(procfile: dict[str, str],
                                                           services: dict[str, dict]) -> None:
    for name, svc in docket_services(services).items():
        env = svc["environment"]
        assert isinstance(env, dict), f"{name}: environment as a mapping"
        for key, value in env.items():
            assert key in DEFAULTS, f"{name}: {key} is not a docket setting (app/settings.py)"
            if key in CONTAINER_SPECIFIC:
                continue
            for var, default in VAR.findall(str(value)):
                assert var == key, f"{name}: {key} takes the value of {var}"
                assert default == DEFAULTS[key], f"{name}: default of {key} is {default}, settings say {DEFAULTS[key]}"
            if not VAR.search(str(value)) and key != "DOCKET_API_TOKENS":
                # a fixed value: the Procfile's stack uses the same (DOCKET_INSTANCES=a,b)
                assert str(value) == DEFAULTS[key], f"{name}: {key}={value}, default {DEFAULTS[key]}"


def test_same_env_everywhere(services: dict[str, dict]) -> None:
    """Every docket service shares one environment (x-docket-env); only the
    container-specific settings and the API's own may differ."""
    envs = {name: dict(svc["environment"]) for name, svc in docket_services(services).items()}
    api_only = {"DOCKET_API_TOKENS", "DOCKET_API_TIMEOUT_MS"}
    common = {k: v for k, v in envs["instance-a"].items() if k not in CONTAINER_SPECIFIC}
    for name, env in envs.items():
        shared = {k: v for k, v in env.items() if k not in CONTAINER_SPECIFIC and k not in api_only}
        assert shared == common, name
        assert env["DOCKET_KAFKA_BOOTSTRAP"] == "kafka:19092", name
        assert env["DOCKET_DATA_ROOT"] == "/data", name
    assert envs["api"]["DOCKET_API_HOST"] == "0.0.0.0"
    assert envs["topics"]["DOCKET_API_HOST"] == "api"  # it reports when the API is ready
    assert "DOCKET_API_TOKENS" in envs["api"]


def test_procfile_variables_reach_the_containers(procfile: dict[str, str], services: dict[str, dict]) -> None:
    """A DOCKET_* variable the Procfile expands in a command has the settings' default
    there, and the compose service expands it the same way and also sets it."""
    for name, line in procfile.items():
        for var, default in VAR.findall(line):
            assert var in DEFAULTS, f"Procfile {name}: {var} is not a docket setting"
            assert default == DEFAULTS[var], f"Procfile {name}: default of {var}"
            if name != BROKER[0]:
                assert var in services[name]["environment"], f"compose {name} does not set {var}"


def test_depends_on_kafka_healthy(services: dict[str, dict]) -> None:
    for name, svc in docket_services(services).items():
        deps = svc["depends_on"]
        assert deps == {"kafka": {"condition": "service_healthy"}}, name
    # topics never exits (it idles, as in the Procfile): nothing may wait for its completion
    assert not [name for name, svc in services.items() if "topics" in svc.get("depends_on", {})]
    assert "depends_on" not in services[BROKER[1]]


def test_healthchecks(services: dict[str, dict]) -> None:
    for name, svc in services.items():
        assert "test" in svc.get("healthcheck", {}), name
    for name, svc in docket_services(services).items():
        test = svc["healthcheck"]["test"]
        assert test[:4] == ["CMD", "docket", "stack", "health"], name
        component = name.split("-")[0]
        assert test[4] == component, name
        if component == "instance":
            assert test[5] == name.split("-")[1]


def test_volumes_for_state(compose: dict, services: dict[str, dict]) -> None:
    declared = set(compose["volumes"])
    for name in ("instance-a", "instance-b"):
        mounts = dict(v.split(":", 1) for v in services[name]["volumes"])
        assert mounts.get(f"{name}-data") == "/data", name  # RocksDB under DOCKET_DATA_ROOT
        assert f"{name}-data" in declared
    kafka = services[BROKER[1]]
    mounts = dict(v.split(":", 1) for v in kafka["volumes"])
    assert mounts.get("kafka-data") == kafka["environment"]["KAFKA_LOG_DIRS"]


def test_kafka_image_and_settings_match_the_launcher(services: dict[str, dict]) -> None:
    kafka = services[BROKER[1]]
    assert kafka["image"] == f"apache/kafka:{launcher.kafka_version()}"
    env = kafka["environment"]
    # the image maps KAFKA_FOO_BAR to foo.bar
    props = {k[len("KAFKA_"):].lower().replace("_", "."): str(v) for k, v in env.items()
             if k.startswith("KAFKA_") and k != "KAFKA_HEAP_OPTS"}
    expected = launcher.broker_properties(9092, 9093, Path("/unused"))
    for key, value in expected.items():
        if key not in ADDRESS_KEYS:
            assert props.get(key) == value, f"{key}: compose {props.get(key)!r}, launcher {value!r}"
    extra = set(props) - set(expected)
    assert not extra, f"compose sets broker properties the launcher does not: {sorted(extra)}"
    assert env["KAFKA_HEAP_OPTS"] == f"-Xms{launcher.HEAP_MIN} -Xmx{launcher.HEAP_MAX} -XX:+AlwaysPreTouch"
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in env["KAFKA_LISTENERS"]
    assert all(p.startswith("127.0.0.1:") for p in kafka["ports"])  # loopback only, like the launcher


def test_docket_image_built_from_the_dockerfile(services: dict[str, dict]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.1[1-9]", dockerfile, re.MULTILINE)
    for name, svc in docket_services(services).items():
        assert svc["build"] == "." and svc["image"] == "docket:local", name
    for ignored in (".venv", "var", ".git"):
        assert ignored in (ROOT / ".dockerignore").read_text().split()
