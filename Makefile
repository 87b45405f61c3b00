# The two commands of the README. Each creates .venv when missing, installs the project into it
# (again only when pyproject.toml changed) and runs. Needs only Python 3.11+ on the machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test fuzz bench bench-peers soak report-check hotset clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "hybridserve needs Python 3.11+, found " + sys.version.split()[0] + " (set PYTHON=python3.x)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/hybridserve demo

# Every test, slow ones included; the ten slowest are listed at the end so growth shows in CI logs.
test: $(STAMP)
	$(BIN)/python -m pytest --durations=10

# schemathesis with all checks against a server of each mode, FUZZ_EXAMPLES per operation and phase
# (CI runs the same test with 25). About 2-3 minutes on 2 cores.
FUZZ_EXAMPLES ?= 300
fuzz: $(STAMP)
	HYBRIDSERVE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_bad_input.py -k schemathesis

# Uses wrk when it is on PATH (apt-get install wrk), else the Python generator; results.md says which.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py

# MLServer, LitServe and BentoML, each in its own venv under benchmarks/.peers/ (pinned versions from
# benchmarks/peers/*.txt, created on first use), against hybridserve on the same pinned core; writes
# benchmarks/peers.md. Not part of `make test`.
bench-peers: $(STAMP)
	$(BIN)/python benchmarks/bench_peers.py

# Hybrid under a fixed rate for SOAK_SECONDS (default 10 min): errors, latency percentiles per
# window, server RSS at start and end. `make soak SOAK_SECONDS=60 SOAK_RATE=50`.
SOAK_SECONDS ?= 600
SOAK_RATE ?= 100
SOAK_WINDOW ?= 30
soak: $(STAMP)
	$(BIN)/python benchmarks/soak.py --seconds $(SOAK_SECONDS) --rate $(SOAK_RATE) --window $(SOAK_WINDOW)

# The hot-set load tests (loadtests/hot_set_runs.py): a drifting hot set with and without head refresh, a
# version switch with and without warm start; HOTSET_SECONDS per run (four runs, plus training when the
# registry lacks a profile). Writes out/hotset/results.json and report.html.
HOTSET_SECONDS ?= 40
HOTSET_RATE ?= 200
hotset: $(STAMP)
	$(BIN)/python -m loadtests.hot_set_runs --registry registry --out out/hotset --seconds $(HOTSET_SECONDS) --rate $(HOTSET_RATE)

# Render a report from a small results.json fixture and look at it in headless Chromium at 1280 px:
# no broken image, no horizontal overflow; the screenshot lands in out/report-check/report.png.
report-check: $(STAMP)
	$(BIN)/python -m loadtests.report_check tests/data/results_small.json out/report-check

clean:
	rm -rf $(VENV) registry out
