# Two commands on a fresh machine: `make run` and `make test`. Everything they need is
# installed here: the virtualenv in .venv/, Debian's redis-server/redis-tools, npm packages.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
NODE_DIR := tests/e2e/node

.PHONY: run test lint bench fuzz soak docs sysdeps node clean protos lock

$(STAMP): pyproject.toml constraints.txt sidecar/_spanwalk.c
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

# constraints.txt pins every package make test installs (deps are ranges in pyproject.toml);
# this re-resolves the newest versions in a scratch venv and rewrites it
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q --upgrade pip && .venv-lock/bin/pip install -q -e '.[dev]'
	{ sed -n '1,2p' constraints.txt; .venv-lock/bin/pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf .venv-lock

# Datadog's trace payload: protos/*.proto compiled into sidecar/_proto/ (generated, not in
# git; grpcio-tools from the dev extra bundles protoc)
PROTO_OUT := $(patsubst protos/%.proto,sidecar/_proto/%_pb2.py,$(wildcard protos/*.proto))
protos: $(PROTO_OUT)
sidecar/_proto/%_pb2.py: protos/%.proto $(STAMP)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=sidecar/_proto --pyi_out=sidecar/_proto $<

# redis-server is the cache's L2 in tests and the peer in benchmarks; redis-cli and
# redis-benchmark are real clients. Installed from Debian's packages when missing.
sysdeps:
	@if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null || ! command -v redis-benchmark >/dev/null; then \
	  echo "installing redis-server and redis-tools from Debian"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null; \
	fi
	@# tmux: the terminal `sidecar tail` is tested in (tests/e2e/test_tail.py)
	@if ! command -v tmux >/dev/null; then \
	  echo "installing tmux from Debian"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends tmux >/dev/null; \
	fi
	@# promtool checks and unit-tests deploy/prometheus-alerts.yaml; prometheus scrapes a
	@# running daemon in tests/deploy (both from Debian's prometheus package)
	@if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then \
	  echo "installing prometheus from Debian"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	fi
	@# systemd-analyze verifies deploy/sidecar.service (works without a running systemd)
	@if ! command -v systemd-analyze >/dev/null; then \
	  echo "installing systemd (for systemd-analyze) from Debian"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends systemd >/dev/null; \
	fi

node: $(NODE_DIR)/node_modules/.installed
$(NODE_DIR)/node_modules/.installed: $(NODE_DIR)/package.json
	cd $(NODE_DIR) && npm install --no-audit --no-fund --silent
	@mkdir -p $(@D) && touch $@

run: $(STAMP) protos
	$(VENV)/bin/sidecar run --config config/sidecar.yaml

lint: $(STAMP) protos
	$(VENV)/bin/ruff check sidecar tests $(wildcard bench)
	$(VENV)/bin/mypy sidecar

# two workers: most tests wait on real servers and daemons, so the suite takes ~2/3 of the
# time on 2 cores; each test still starts its own servers on ephemeral ports
test: $(STAMP) protos sysdeps node lint
	$(VENV)/bin/pytest -q -n 2

# docs/configuration.md from the config models (tests/unit/test_configref.py checks it)
docs: $(STAMP) protos
	$(PY) -m sidecar.configref docs/configuration.md

# coverage-guided fuzzing of every parser (tests/fuzz/targets.py), FUZZ_SECONDS each
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := otlp_protobuf otlp_json ndjson resp config spanwalk
fuzz: $(STAMP) protos
	@mkdir -p fuzz-findings
	@for t in $(FUZZ_TARGETS); do \
	  echo "fuzzing $$t for $(FUZZ_SECONDS)s (log: fuzz-findings/$$t.log)"; \
	  $(PY) -m tests.fuzz.run $$t -max_total_time=$(FUZZ_SECONDS) -timeout=10 \
	    -rss_limit_mb=2048 -artifact_prefix=fuzz-findings/$$t- > fuzz-findings/$$t.log 2>&1 \
	    || { tail -40 fuzz-findings/$$t.log; exit 1; }; \
	  grep '^Done' fuzz-findings/$$t.log; \
	done

# 10 minutes of mixed load with the exporter flapping; CSV, PNG and JSON in bench/results/
# (not part of make test). SOAK_ARGS e.g. "--minutes 3 --flap-every 60".
SOAK_ARGS ?=
soak: $(STAMP) protos
	$(PY) -m pip install -q 'matplotlib>=3.8'
	$(PY) bench/soak.py $(SOAK_ARGS)

bench: $(STAMP) protos sysdeps
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) $(NODE_DIR)/node_modules data run
