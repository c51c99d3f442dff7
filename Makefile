# The two commands of the README: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
PORT ?= 8000

.PHONY: run test venv lint bench mutate clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

## Set up and run the whole system on the embedded defaults (SQLite, filesystem broker, QKD network twin).
run: venv
	bash -c '. scripts/services.sh && install_debs stunnel4 openssl'  # TLS sessions' endpoints
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput -v0
	QXAAS_DEMO=1 $(PY) manage.py bootstrap_demo  # the demo operator's TOTP is pre-enrolled (demo only)
	$(PY) manage.py bootstrap_billing_demo
	QXAAS_DEMO=1 PORT=$(PORT) $(PY) -m portal.runstack

## Install what the tests need (Debian packages too), start PostgreSQL and Redis, run the suite and the
## embedded-default smoke test, stop what was started.
test:
	bash scripts/test.sh

lint: venv
	$(VENV)/bin/ruff check .

bench: venv
	bash scripts/bench.sh

## Mutation testing of the security- and money-critical modules (slow; MODULES="tenants/tokens.py ..." for some).
mutate: venv
	$(PY) -m pip install -q -e '.[test,mutate]'
	$(PY) scripts/mutate.py $(MODULES)

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
