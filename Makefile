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
	# TLS sessions' endpoints (stunnel) and the IPsec lab (charon with kernel-libipsec and AES-GCM, namespaces)
	bash -c '. scripts/services.sh && install_debs stunnel4 openssl strongswan-charon libcharon-extra-plugins \
	  libstrongswan-standard-plugins iproute2 iputils-ping'
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

## Mutation testing of the security- and money-critical modules (slow; MODULE=tenants/quota.py for one,
## MODULES="tenants/tokens.py ..." for some). Runs at the lowest CPU priority: the machine is shared.
mutate: venv
	$(PY) -m pip install -q -e '.[test,mutate]'
	nice -n 19 $(PY) scripts/mutate.py $(MODULE) $(MODULES)

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
