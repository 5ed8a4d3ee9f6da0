# Two commands for a new user on Debian / Raspberry Pi OS: `make demo` and `make test`.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
SUDO    := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
DEMO_SECONDS ?= 0

.PHONY: install mosquitto demo test bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	@$(PYTHON) -c 'import venv' 2>/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	@touch $@

install: $(VENV)/.installed

# Mosquitto is only a test/demo dependency: the gateway itself talks to any MQTT 3.1.1 broker.
mosquitto:
	@if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then \
	  echo "mosquitto: $$( (command -v mosquitto || echo /usr/sbin/mosquitto) )"; \
	else \
	  echo "mosquitto not found: installing it with apt-get"; \
	  $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends mosquitto; \
	fi

demo: install mosquitto
	$(PY) -m tools.demo --seconds $(DEMO_SECONDS)

test: install mosquitto
	$(PY) -m pytest

bench: install mosquitto
	$(PY) -m tools.bench.store
	$(PY) -m tools.bench.e2e
	$(PY) -m tools.bench.rss

clean:
	rm -rf $(VENV) demo .pytest_cache .hypothesis *.egg-info
