# Set-up and the two jobs the README names. Everything lands in ./.venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= ssrconv-out

.PHONY: setup demo test test-fast readme-figures clean

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

# Regenerate the README's measured figures (sizes, parity, speed, accuracy, predict example).
FIG := $(OUT)/figures
readme-figures: setup
	@test -n "$$SSRCONV_FACES" -a -n "$$SSRCONV_IMAGES" || { echo "readme-figures: set SSRCONV_FACES and SSRCONV_IMAGES" >&2; exit 2; }
	rm -rf $(FIG) && mkdir -p $(FIG)
	$(BIN)/ssrconv export --to all --calibration "$$SSRCONV_FACES" --out $(FIG)/export
	$(BIN)/ssrconv parity $(FIG)/export --faces "$$SSRCONV_FACES" --markdown $(FIG)/parity.md
	$(BIN)/ssrconv bench --all $(FIG)/export --threads 1 --batch 8 --markdown $(FIG)/bench.md --plot docs/bench.png
	$(BIN)/ssrconv eval "$$SSRCONV_FACES" > $(FIG)/eval.txt
	for m in fp32.onnx int8.tflite fp16.mlpackage; do $(BIN)/ssrconv eval "$$SSRCONV_FACES" --model $(FIG)/export/ssrnet_age_gender_$$m >> $(FIG)/eval.txt; done
	$(BIN)/ssrconv predict "$$SSRCONV_IMAGES/group_t1.jpg" --model $(FIG)/export/ssrnet_age_gender_int8.tflite --format csv --out $(FIG)/predict > $(FIG)/predict.csv
	$(BIN)/python tools/splice_readme.py README.md parity $(FIG)/parity.md
	$(BIN)/python tools/splice_readme.py README.md bench $(FIG)/bench.md
	{ echo '```'; cat $(FIG)/eval.txt; echo '```'; } > $(FIG)/eval.md && $(BIN)/python tools/splice_readme.py README.md eval $(FIG)/eval.md
	{ echo '```'; cat $(FIG)/predict.csv; echo '```'; } > $(FIG)/predict.md && $(BIN)/python tools/splice_readme.py README.md predict $(FIG)/predict.md

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache build src/*.egg-info
