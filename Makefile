# Baomi: `make demo` runs it, `make test` tests it. See README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Debian packages the tests need: PostgreSQL server (store suite), umockdev and the
# GObject build deps of PyGObject (USB tests), Chromium (console), Pango, CJK fonts and
# poppler (PDF reports), iproute2 (network namespaces), acl (setfacl/getfacl in the DAC tests),
# auditd (auditctl and ausyscall: refused writes and deletions are recorded through audit),
# debhelper and python3-venv/python3-dev (`make deb` and tests/integration/test_package.py).
DEB_PACKAGES := postgresql sqlite3 python3 \
	umockdev gir1.2-umockdev-1.0 libgirepository1.0-dev libcairo2-dev pkg-config \
	chromium fonts-noto-cjk poppler-utils libpango-1.0-0 libpangoft2-1.0-0 iproute2 acl \
	auditd haproxy debhelper python3-venv python3-dev
PROTOS := protos/baomi/v1/events.proto protos/baomi/v1/collector.proto

.PHONY: demo test bench fuzz lint protos protos-check apt deb venv clean interop usbguard-oracle

# The venv builds PyGObject, which needs the Debian GObject headers first.
$(VENV)/.installed: pyproject.toml agent/sensors/files/_answers.c agent/sensors/files/_guardian.c | apt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	# `baomi-agent run` restarts itself under -OO (agent/cli.py): its bytecode, made once.
	$(PY) -m compileall -q -o 2 -j 0 $(VENV)/lib > /dev/null
	touch $@

venv: $(VENV)/.installed

# The Debian packages above, installed with apt-get when missing.
apt:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

# Generate protobuf and gRPC code into protos/ (committed; never edited by hand).
protos: venv
	$(PY) -m grpc_tools.protoc -I protos --python_out=protos --pyi_out=protos \
	  --grpc_python_out=protos $(PROTOS)
	rm -f protos/baomi/v1/events_pb2_grpc.py

# Fail when the committed generated code differs from what the .proto files give. The
# lines naming the generator's version are not compared: a newer grpcio-tools from the
# registry writes its own version there, and the runtime check they feed only needs the
# installed grpcio/protobuf (pinned >= the versions named) to be as new.
PROTO_DIFF := diff -r -x __init__.py -x '*.proto' -x __pycache__ -x '*.pyc' \
	-I '^GRPC_GENERATED_VERSION = ' -I '^\# Protobuf Python Version: '
protos-check: venv
	@tmp=$$(mktemp -d); \
	$(PY) -m grpc_tools.protoc -I protos --python_out=$$tmp --pyi_out=$$tmp \
	  --grpc_python_out=$$tmp $(PROTOS) && rm -f $$tmp/baomi/v1/events_pb2_grpc.py; \
	if $(PROTO_DIFF) $$tmp/baomi/v1 protos/baomi/v1 >/dev/null \
	   && [ "$$(ls protos/baomi/v1 | grep -c _pb2)" = "$$(ls $$tmp/baomi/v1 | grep -c _pb2)" ]; then \
	  echo "generated protobuf code is current"; rm -rf $$tmp; \
	else \
	  echo "generated protobuf code is stale: run 'make protos' and commit"; \
	  $(PROTO_DIFF) $$tmp/baomi/v1 protos/baomi/v1 | head -20; \
	  rm -rf $$tmp; exit 1; \
	fi

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: apt venv protos-check interop usbguard-oracle
	$(PY) -m pytest

# The Node.js client of tests/integration/test_interop.py, pinned by its package-lock.json
# (Node.js and npm come with the machine; without npm the interop test is skipped).
INTEROP := tests/interop/node_modules/.package-lock.json
interop: $(INTEROP)
$(INTEROP): tests/interop/package.json tests/interop/package-lock.json
	@if command -v npm >/dev/null; then \
	  cd tests/interop && npm ci --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: the interop client test will be skipped"; fi

# USBGuard's own rule parser (Debian's usbguard 1.1.2), unpacked, not installed (no
# daemon), as the oracle of tests/unit/agent/devices/test_rules_usbguard.py.
USBGUARD_DIR := .cache/usbguard
USBGUARD_ORACLE := $(USBGUARD_DIR)/usr/bin/usbguard-rule-parser
USBGUARD_DEBS := usbguard libusbguard1 libqb100 libprotobuf32
usbguard-oracle: $(USBGUARD_ORACLE)
$(USBGUARD_ORACLE):
	@mkdir -p $(USBGUARD_DIR)/debs
	@cd $(USBGUARD_DIR)/debs && { apt-get download -q $(USBGUARD_DEBS) 2>/dev/null \
	  || { apt-get update -q >/dev/null && apt-get download -q $(USBGUARD_DEBS); }; } \
	  && for d in *.deb; do dpkg -x $$d ..; done \
	  || echo "usbguard-rule-parser unavailable: the USBGuard parity test will be skipped"

bench: apt venv
	$(PY) -m bench

# Coverage-guided fuzzing (atheris) of every parser of untrusted input: inputs in all,
# split across the targets; fails on any crash or hang (fuzz/__main__.py).
FUZZ_RUNS ?= 1000000
fuzz: venv
	$(PY) -m fuzz --runs $(FUZZ_RUNS)

# The Debian package (debian/, built by dpkg-buildpackage from a copy of the checkout)
# into dist/: /opt/baomi, /usr/bin/baomi-{agent,collector}, the units, /etc/baomi.
# DEB_VERSION=V builds it as version V (default: debian/changelog's).
deb: apt
	deploy/build-deb.sh dist $(DEB_VERSION)

demo: venv
	$(PY) -m deploy.demo

clean:
	rm -rf $(VENV) var build dist *.egg-info agent/sensors/files/_answers.*.so agent/sensors/files/_guardian.*.so tests/interop/node_modules .cache
