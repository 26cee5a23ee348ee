# Two commands do everything on a fresh machine (see README):
#   make demo   set up, then run the main job on the embedded default
#   make test   set up, then check the layer contract and run the tests
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test zoo setup clean

setup: $(STAMP)

# torch is pinned and installed on its own first: an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[torch,export,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

# lint-imports checks the layer contract in pyproject.toml ([tool.importlinter]) first.
test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

# The whole zoo run (every spec: check, stats at paper size, tiny forward/backward, two training
# steps, ONNX and fp16 export), then docs/zoo.md written from its report by tools/zoo_table.py.
ZOO_TESTS := tests/test_golden.py tests/test_zoo.py tests/test_compile_zoo.py \
             tests/test_export_onnx.py tests/test_fp16_compute.py
zoo: $(STAMP)
	MMGRAPH_ZOO_REPORT=build/zoo.json $(BIN)/python -m pytest -q $(ZOO_TESTS); \
	status=$$?; $(BIN)/python tools/zoo_table.py build/zoo.json && exit $$status

clean:
	rm -rf $(VENV) build
