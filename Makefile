# vaevq: the two commands of the README.
#   make demo  - set up, train the `tiny` preset on the built-in photos, evaluate, show results
#   make test  - set up and run the whole test suite (what .ci/run calls)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
RUN    ?= runs/tiny-demo

.PHONY: setup demo test lint bench bench-deps clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# the CPU build of torch first, so nothing below pulls a CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test,medical]"
	# the standard LPIPS v0.1 heads (lpips/weights/v0.1/vgg.pth), read as a file; --no-deps
	# because the lpips package requires torchvision, which does not work beside this torch
	$(PY) -m pip install --quiet --no-deps lpips==0.1.4
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m vaevq train tiny --out $(RUN) --resume
	$(PY) -m vaevq eval --checkpoint $(RUN)
	$(PY) -m vaevq reconstruct --checkpoint $(RUN) --out $(RUN)/reconstructions \
		$$($(PY) -c "import sklearn.datasets, pathlib; print(pathlib.Path(sklearn.datasets.__file__).parent / 'images')")
	@echo "pictures: $(RUN)/images/ (originals | continuous path | quantized path), $(RUN)/reconstructions/"

test: setup
	$(PY) -m pytest tests -q

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks tools studies

# the peer of the quantizer benchmark, into this environment only (never a vaevq dependency);
# torch pinned to the installed build so the install cannot replace it
bench-deps: setup
	$(PY) -m pip install --quiet vector-quantize-pytorch "torch==$$($(PY) -c 'import torch; print(torch.__version__)')"

bench: bench-deps
	$(PY) benchmarks/bench_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache
