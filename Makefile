# Set-up and the two jobs the README names. Everything lands in ./.venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= ssrconv-out

.PHONY: setup demo test test-fast test-runtime-only readme-figures clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "ssrconv needs Python 3.11, got " + sys.version' 
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[all,test]'
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

# The runtime-only install: a clean venv with `pip install .` (no extras) predicts and checks
# parity on a .tflite (exported here by the full venv) with TensorFlow not importable, and
# every converter command fails in one line naming ssrconv[export]. About 3 minutes.
test-runtime-only: setup
	FULL_BIN=$(BIN) bash tools/runtime_only_check.sh

# Regenerate the README's measured figures (sizes, parity, speed, accuracy, predict example).
FIG := $(OUT)/figures
readme-figures: setup
	@test -n "$$SSRCONV_FACES" -a -n "$$SSRCONV_IMAGES" || { echo "readme-figures: set SSRCONV_FACES and SSRCONV_IMAGES" >&2; exit 2; }
	rm -rf $(FIG) && mkdir -p $(FIG)
	$(BIN)/ssrconv export --to all --calibration "$$SSRCONV_FACES" --out $(FIG)/export
	$(BIN)/ssrconv parity $(FIG)/export --faces "$$SSRCONV_FACES" --json $(FIG)/parity.json --markdown $(FIG)/parity.md
	$(BIN)/ssrconv bench --all $(FIG)/export --threads 1 --batch 8 --json $(FIG)/bench.json --markdown $(FIG)/bench.md --plot docs/bench.png
	# int8 (issue 6): the age-only int8 file, and int8 calibrated data-free (no --calibration)
	$(BIN)/ssrconv export --to tflite --precision int8 --task age --calibration "$$SSRCONV_FACES" --out $(FIG)/age
	$(BIN)/ssrconv export --to tflite --to onnx --precision int8 --out $(FIG)/datafree
	$(BIN)/ssrconv parity $(FIG)/datafree --faces "$$SSRCONV_FACES" --json $(FIG)/parity_datafree.json
	$(BIN)/ssrconv eval "$$SSRCONV_FACES" --json $(FIG)/eval_keras.json > $(FIG)/eval.txt
	for m in export/ssrnet_age_gender_fp32.onnx export/ssrnet_age_gender_int8.tflite export/ssrnet_age_gender_int8.onnx export/ssrnet_age_gender_fp16.mlpackage datafree/ssrnet_age_gender_int8.tflite datafree/ssrnet_age_gender_int8.onnx; do \
	  $(BIN)/ssrconv eval "$$SSRCONV_FACES" --model $(FIG)/$$m --json $(FIG)/eval_$$(echo $$m | tr / _).json >> $(FIG)/eval.txt || exit 1; done
	$(BIN)/python tools/int8_report.py --bench $(FIG)/bench.json --parity "real-face=$(FIG)/parity.json" \
	  --parity "data-free=$(FIG)/parity_datafree.json" --age-int8 $(FIG)/age/ssrnet_age_int8.tflite \
	  --eval $(FIG)/eval_keras.json $(foreach m,export_ssrnet_age_gender_int8.tflite export_ssrnet_age_gender_int8.onnx datafree_ssrnet_age_gender_int8.tflite datafree_ssrnet_age_gender_int8.onnx,--eval $(FIG)/eval_$(m).json) > $(FIG)/int8.md
	$(BIN)/ssrconv predict "$$SSRCONV_IMAGES/group_t1.jpg" --model $(FIG)/export/ssrnet_age_gender_int8.tflite --format csv --out $(FIG)/predict > $(FIG)/predict.csv
	$(BIN)/python tools/splice_readme.py README.md parity $(FIG)/parity.md
	$(BIN)/python tools/splice_readme.py README.md bench $(FIG)/bench.md
	$(BIN)/python tools/splice_readme.py README.md int8 $(FIG)/int8.md
	{ echo '```'; cat $(FIG)/eval.txt; echo '```'; } > $(FIG)/eval.md && $(BIN)/python tools/splice_readme.py README.md eval $(FIG)/eval.md
	{ echo '```'; cat $(FIG)/predict.csv; echo '```'; } > $(FIG)/predict.md && $(BIN)/python tools/splice_readme.py README.md predict $(FIG)/predict.md

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache build src/*.egg-info
