# Set-up and the two jobs the README names. Everything lands in ./.venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= ssrconv-out

.PHONY: setup demo test test-fast clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "ssrconv needs Python 3.11, got " + sys.version' 
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

# The main job on the default pretrained weights (age-wiki + gender-wiki): export every target,
# check each against the reference on real faces (fails on a broken budget), benchmark them all.
# Needs a directory of labelled face chips in SSRCONV_FACES (int8 calibration and parity).
demo: setup
	@test -n "$$SSRCONV_FACES" || { echo "make demo: set SSRCONV_FACES to a directory of face chips (see README)" >&2; exit 2; }
	$(BIN)/ssrconv info
	$(BIN)/ssrconv export --to all --calibration "$$SSRCONV_FACES" --out $(OUT)
	$(BIN)/ssrconv parity $(OUT) --faces "$$SSRCONV_FACES" --json $(OUT)/parity.json --markdown $(OUT)/parity.md --junit $(OUT)/parity.xml
	$(BIN)/ssrconv bench --all $(OUT) --json $(OUT)/bench.json --markdown $(OUT)/bench.md --plot $(OUT)/bench.png

# The whole suite, slow tests included (CI runs exactly this).
test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache build src/*.egg-info
