# Two commands for a new user on Debian / Raspberry Pi OS: `make demo` and `make test`.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
SUDO    := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
DEMO_SECONDS ?= 0

.PHONY: install mosquitto postgresql demo console test bench install-service clean

$(VENV)/.installed: setup.cfg pyproject.toml
	@$(PYTHON) -c 'import venv' 2>/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench,headend]'
	@touch $@

install: $(VENV)/.installed

# Mosquitto is only a test/demo dependency: the gateway itself talks to any MQTT 3.1.1 broker.
mosquitto:
	@if { command -v mosquitto || [ -x /usr/sbin/mosquitto ]; } >/dev/null 2>&1 && command -v mosquitto_sub >/dev/null 2>&1; then \
	  echo "mosquitto: $$( (command -v mosquitto || echo /usr/sbin/mosquitto) )"; \
	else \
	  echo "mosquitto (or mosquitto-clients) not found: installing with apt-get"; \
	  $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends mosquitto mosquitto-clients; \
	fi

# PostgreSQL too: the head-end tests and benchmark start their own throw-away cluster
# (initdb/pg_ctl in a temp dir on a loopback port; the machine's own server is never used).
postgresql:
	@if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "postgresql: $$(command -v initdb || ls /usr/lib/postgresql/*/bin/initdb | tail -1)"; \
	else \
	  echo "initdb not found: installing postgresql with apt-get"; \
	  $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends postgresql; \
	fi

demo: install mosquitto
	$(PY) -m tools.demo --seconds $(DEMO_SECONDS)

# The field-tech console on the running demo (in a second terminal).
console: install
	$(PY) -m gateway console -c $(or $(CONFIG),config/demo.yaml)

test: install mosquitto postgresql
	$(PY) -m pytest

bench: install mosquitto postgresql
	$(PY) -m tools.bench.store
	$(PY) -m tools.bench.e2e
	$(PY) -m tools.bench.rss
	$(PY) -m tools.bench.dlms
	$(PY) -m tools.bench.mbus
	$(PY) -m tools.bench.edge
	$(PY) -m tools.bench.headend

# Install as a systemd service (unprivileged user, hardened unit, watchdog): BOARD=raspberry-pi
install-service:
	$(SUDO) tools/install.sh --board $(or $(BOARD),generic-linux)

clean:
	rm -rf $(VENV) demo .pytest_cache .hypothesis *.egg-info
