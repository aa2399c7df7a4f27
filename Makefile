# fleet: the two commands a newcomer needs.
#   make demo  - set everything up, start a local lab, show the product on it (the lab stays up)
#   make test  - install what the tests need (incl. Debian's openssh-server), lint and type-check, run the suite
# Set-up repeats offline: it re-installs only when pyproject.toml or the OpenCode pin changed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OPENCODE_VERSION := 1.18.33
SETUP_STAMP := $(VENV)/.fleet-setup
OPENCODE_STAMP := .tools/.opencode-$(OPENCODE_VERSION)
INSPECTOR_VERSION := 2.12.0
INSPECTOR_NODE := 22.23.3
INSPECTOR_STAMP := .tools/.mcp-inspector-$(INSPECTOR_VERSION)-node-$(INSPECTOR_NODE)
LAB ?= lab

.PHONY: setup system-deps demo demo-down test lint bench clean

system-deps:
	@{ command -v /usr/sbin/sshd && command -v ssh && command -v pgrep && command -v dash; } >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client procps dash >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client procps dash >/dev/null; fi; }

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(SETUP_STAMP): pyproject.toml | $(BIN)/python
	@echo "setup: installing fleet and its test tools into $(VENV) (once; again only if pyproject.toml changes)"
	@$(BIN)/pip install -q --upgrade pip >$(VENV)/pip.log 2>&1 || true
	@# editable_mode=compat: a plain path entry, not setuptools' import hook (which costs every start 20 ms)
	@$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=compat >>$(VENV)/pip.log 2>&1 || { cat $(VENV)/pip.log; exit 1; }
	@touch $@

$(OPENCODE_STAMP):
	@echo "setup: installing opencode-ai@$(OPENCODE_VERSION) into .tools (once)"
	@mkdir -p .tools && cd .tools && npm install --no-audit --no-fund --silent opencode-ai@$(OPENCODE_VERSION) >/dev/null
	@touch $@

$(INSPECTOR_STAMP):
	@echo "setup: installing the MCP Inspector $(INSPECTOR_VERSION) and Node $(INSPECTOR_NODE) into .tools/mcp-inspector (once)"
	@mkdir -p .tools/mcp-inspector && npm install --prefix .tools/mcp-inspector --no-audit --no-fund --silent \
	  node@$(INSPECTOR_NODE) @modelcontextprotocol/inspector@$(INSPECTOR_VERSION) >/dev/null
	@touch $@

setup: $(SETUP_STAMP) $(OPENCODE_STAMP) $(INSPECTOR_STAMP)
	@# the package's bytecode, as pip writes it for an installed one (where PYTHONDONTWRITEBYTECODE
	@# is set, every fleet run would compile its ~150 modules again: 0.1 s of each start)
	@$(BIN)/python -m compileall -q fleet tasks.py >/dev/null

demo: system-deps setup
	@$(BIN)/python -m fleet.lab.demo --dir $(LAB)

demo-down:
	@$(BIN)/fleet lab.down --dir $(LAB)

lint: setup
	$(BIN)/ruff check fleet tests bench tasks.py
	$(BIN)/mypy

test: system-deps setup lint
	$(BIN)/python -m pytest -q

bench: system-deps setup
	$(BIN)/python bench/e2e_ssh.py
	$(BIN)/python bench/e2e_ssh.py --sizes 10,50 --rtt 40
	$(BIN)/python bench/serve.py --sizes 10,50
	$(BIN)/python bench/serve.py --sizes 10,50 --rtt 40
	$(BIN)/python bench/fanout.py

clean:
	-$(BIN)/fleet lab.down --dir $(LAB)
	rm -rf lab artifacts .pytest_cache
