# The two quickstart commands: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages of the real services the integration tests start privately, and the
# browser that the page tests drive.
SERVICE_PACKAGES := mosquitto influxdb victoria-metrics chromium
SERVICE_BINARIES := /usr/sbin/mosquitto /usr/bin/influxd /usr/bin/victoria-metrics /usr/bin/chromium

.PHONY: install services lint test demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

services:
	@missing=0; for binary in $(SERVICE_BINARIES); do [ -x $$binary ] || missing=1; done; \
	if [ $$missing = 1 ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing $(SERVICE_PACKAGES) from Debian packages"; \
			DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SERVICE_PACKAGES) >/dev/null; \
		else \
			echo "the tests need Debian packages: sudo apt-get install $(SERVICE_PACKAGES)" >&2; exit 1; \
		fi; \
	fi

lint: install
	$(BIN)/ruff check gateway simulators bench tests
	$(BIN)/ruff format --check gateway simulators bench tests
	$(BIN)/mypy

test: install services lint
	$(BIN)/pytest -q -p no:cacheprovider

demo: install
	$(BIN)/community-gateway demo $(ARGS)

bench: install services
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench.mqtt_clients
	$(BIN)/python -m bench.pipeline
	$(BIN)/python -m bench.handoff
	$(BIN)/python -m bench.influx_write
	$(BIN)/python -m bench.rules
	$(BIN)/python -m bench.notify_latency
	$(BIN)/python -m bench.retention
	$(BIN)/python -m bench.registry
	$(BIN)/python -m bench.rate_windows

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache .hypothesis
