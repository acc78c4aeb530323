# docket: `make test` is the whole check (what CI runs through .ci/run).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

# The interpreter the virtualenv is made from: the OS's own Python 3.11 when it has venv
# (Debian's and Ubuntu's /usr/bin/python3.11 are built with profile-guided and link-time
# optimisation), else python3. With an interpreter built from source without
# --enable-optimizations (pyenv's default) each of docket's processes spent 7 to 11% more
# CPU per event on this box (docs/performance.md, "The interpreter"). Another: `make PYTHON=/path/to/python3.11`;
# a .venv made earlier keeps its interpreter until it is removed (`rm -rf .venv`).
OS_PYTHON := /usr/bin/python3.11
PYTHON ?= $(or $(shell $(OS_PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1 && echo $(OS_PYTHON)),python3)
VENV := .venv
BIN := $(VENV)/bin
# Touched after a successful install; pip runs again only when pyproject.toml is newer.
STAMP := $(VENV)/.installed
# The test session's own broker lives here (not var/broker, the one `make broker-start`
# runs), so a test run never touches a developer's broker and `make test` can check that
# no test broker survived.
TEST_BROKER_DIR := var/test-broker
PYTEST_ARGS ?=

# The specs are checked with the Allium CLI (crate allium-cli), installed once into
# ~/.cargo/bin with cargo; later runs find it there.
ALLIUM_VERSION := 3.6.1
ALLIUM := $(or $(shell command -v allium 2>/dev/null),$(HOME)/.cargo/bin/allium)

# `make demo` passes these to `docket demo`, e.g. DEMO_ARGS="--events 10000 --concurrency 64".
DEMO_ARGS ?=

.PHONY: test install run demo console bench bench-smoke soak broker-fetch broker-start broker-stop spec-check clean

test: $(STAMP) spec-check broker-fetch browser
	@rc=0; DOCKET_TEST_BROKER_DIR=$(TEST_BROKER_DIR) $(BIN)/python -m pytest $(PYTEST_ARGS) || rc=$$?; \
	DOCKET_BROKER_DIR=$(TEST_BROKER_DIR) $(BIN)/docket broker stop >/dev/null 2>&1 || true; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; that is a failure" >&2; fi; \
	exit $$rc

install: $(STAMP)

# The fault console's browser test (tests/integration/test_console_browser.py) drives the
# system's headless Chromium through chromedriver: Debian's chromium and chromium-driver,
# installed once with apt-get (with sudo when not root; `apt-get update` only when the
# install fails, e.g. for want of package lists). Quick when both are there.
BROWSER_PACKAGES := chromium chromium-driver
.PHONY: browser
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then exit 0; fi; \
	how="apt-get install -y --no-install-recommends $(BROWSER_PACKAGES)"; \
	if ! command -v apt-get >/dev/null; then \
	  echo "make: the console's browser test needs chromium and chromedriver, and there is no apt-get here: install them with your package manager (Debian: $$how)" >&2; exit 2; fi; \
	if [ "$$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else \
	  echo "make: the console's browser test needs chromium and chromedriver: run as root: $$how" >&2; exit 2; fi; \
	echo "make: installing $(BROWSER_PACKAGES) for the console's browser test ($${sudo:+sudo }$$how)"; \
	export DEBIAN_FRONTEND=noninteractive; \
	$$sudo apt-get install -y -q --no-install-recommends $(BROWSER_PACKAGES) \
	  || { $$sudo apt-get update -q && $$sudo apt-get install -y -q --no-install-recommends $(BROWSER_PACKAGES); } \
	  || { echo "make: could not install $(BROWSER_PACKAGES); install them by hand ($${sudo:+sudo }$$how) and run make test again" >&2; exit 2; }; \
	command -v chromium >/dev/null && command -v chromedriver >/dev/null \
	  || { echo "make: $(BROWSER_PACKAGES) installed, yet chromium or chromedriver is not on PATH" >&2; exit 2; }

# The whole system in the foreground (Procfile, through honcho): broker, topics,
# instance-a, instance-b, clerk, api. State lives in var/; Ctrl-C (or closing the terminal) stops
# everything. With DOCKET_KAFKA_BOOTSTRAP naming your own Kafka, no broker is started (and
# its jars are not fetched): README, "Use your own Kafka".
run: $(STAMP)
	@$(BIN)/docket stack run

# A realistic workload through the REST API of the running stack, then a balance check.
demo: $(STAMP)
	@$(BIN)/docket demo $(DEMO_ARGS)

# The fault console (console/, issue 16): its own broker, instances a, b, c, the Clerk and
# a workload in $DOCKET_DATA_ROOT/console (var/console/, wiped at start); prints the page's URL with its token.
# Ctrl-C stops everything. Options: CONSOLE_ARGS="--rate 100 --open-browser".
CONSOLE_ARGS ?=
console: $(STAMP) broker-fetch
	@$(BIN)/docket console $(CONSOLE_ARGS)

# The seven benchmarks of bench/run.py on a broker of their own (about 37 minutes on 2
# cores); the report (JSON, Markdown, PNG plots, py-spy stacks) goes to bench/results/
# and its summary into the README. Options: BENCH_ARGS="--only kafka_native --native-rates 100 200".
BENCH_ARGS ?=
bench: $(STAMP) broker-fetch
	@$(BIN)/python -m bench.run $(BENCH_ARGS)

# Seconds per measurement, report in var/bench-smoke/: does the harness work?
bench-smoke: $(STAMP) broker-fetch
	@$(BIN)/python -m bench.run --smoke --out var/bench-smoke $(BENCH_ARGS)

# One rate held for 10 minutes after a 40 s warm-up (bench/soak.py, on a broker of its own;
# about 13 minutes with the Warden's memory measurement at 10,000 events/s and a 5-minute
# TTL): p99 < 100 ms, and RSS of every process, the Clerk's pending positions and the
# instances' lag flat (an instance's RSS may grow by its RocksDB memory filling up to
# its bound: README, Soak). Report and plot: bench/results/soak-<date>-<HHMM>.{json,png}
# (<HHMMSS> when that minute's report exists); exit status 1 if anything is not. Options: SOAK_ARGS="--rate 200 --duration-s 120 --no-warden".
SOAK_ARGS ?=
soak: $(STAMP) broker-fetch
	@$(BIN)/python -m bench.soak $(SOAK_ARGS)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,bench]"
	touch $@

broker-fetch: $(STAMP)
	@$(BIN)/docket broker fetch

broker-start: $(STAMP)
	$(BIN)/docket broker start

broker-stop: $(STAMP)
	$(BIN)/docket broker stop

spec-check: $(ALLIUM)
	@$(ALLIUM) check specs/ >/dev/null || { $(ALLIUM) check specs/; echo "make: allium check specs/ failed" >&2; exit 1; }

$(HOME)/.cargo/bin/allium:
	@command -v cargo >/dev/null || { echo "make: the spec check needs Rust's cargo (https://rustup.rs) to install allium-cli" >&2; exit 2; }
	cargo install --locked --quiet allium-cli --version $(ALLIUM_VERSION)

# The full resilience run (docket chaos, chaos/cli.py): every scenario with 100,000 events
# on its own broker; the JSON report and a Markdown table go to bench/results/. About 13
# minutes on 2 cores. Extra options: RESILIENCE_ARGS="--seed 7".
RESILIENCE_EVENTS ?= 100000
RESILIENCE_ARGS ?=
.PHONY: resilience
resilience: $(STAMP) broker-fetch
	@mkdir -p bench/results; day=$$(date +%F); began=$$(date +%s); rc=0; \
	$(BIN)/docket chaos --scenario all --events $(RESILIENCE_EVENTS) --rate 1000 --kills 4 \
	  --report bench/results/resilience-$$day.json --markdown bench/results/resilience-$$day.md \
	  $(RESILIENCE_ARGS) || rc=$$?; \
	wall=$$(( $$(date +%s) - began )); \
	echo "make resilience: wall time $$(( wall / 60 )) min $$(( wall % 60 )) s; report bench/results/resilience-$$day.json (.md)"; \
	exit $$rc

# `docket clean` (launcher/clean.py): refuses while `make run`'s workers hold their data
# directories; stops the brokers first, so removing var/ never leaves one running without
# its files; deletes var/, and DOCKET_DATA_ROOT and DOCKET_BROKER_DIR when set, never one
# that is or holds your home directory or this checkout, nor one holding files git tracks.
# Before `make install` (no $(BIN)/docket, so no worker or broker of this checkout) it only removes var/.
clean:
	@if [ -x $(BIN)/docket ]; then $(BIN)/docket clean; else echo "rm -rf var/"; rm -rf var/; fi
