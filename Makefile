# fleet: the two commands a newcomer needs.
#   make demo  - set everything up, start a local lab, run the main job on it, stop the lab
#   make test  - install what the tests need (incl. Debian's openssh-server), run the suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OPENCODE_VERSION := 1.18.33

.PHONY: setup system-deps opencode demo test bench clean

system-deps:
	@{ command -v /usr/sbin/sshd && command -v ssh && command -v pgrep; } >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client procps >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client procps >/dev/null; fi; }

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

setup: $(BIN)/python opencode
	$(BIN)/pip install -q --upgrade pip >/dev/null 2>&1 || true
	$(BIN)/pip install -q -e '.[test]'

opencode:
	@if [ ! -x .tools/node_modules/opencode-linux-x64/bin/opencode ] && [ ! -x .tools/node_modules/.bin/opencode ]; then \
	  mkdir -p .tools && cd .tools && npm install --no-audit --no-fund --silent opencode-ai@$(OPENCODE_VERSION); fi

demo: system-deps setup
	$(BIN)/inv lab.up --count 5 --agents 1
	-$(BIN)/inv preflight --inventory lab/inventory.yaml --all
	-$(BIN)/inv fanout --inventory lab/inventory.yaml --all 'uname -sr' --gather
	-$(BIN)/inv dispatch --inventory lab/inventory.yaml --host lab01 --repo demo --task "say hello"
	$(BIN)/inv lab.down

test: system-deps setup
	$(BIN)/python -m pytest -q

bench: system-deps setup
	$(BIN)/python bench/fanout.py

clean:
	-$(BIN)/inv lab.down
	rm -rf lab artifacts .pytest_cache
