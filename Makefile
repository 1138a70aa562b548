# Set-up and the two jobs the README names. Everything lands in ./.venv.
SHELL := bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= ssrconv-out

.PHONY: setup browser arm64 torch-tests demo test test-fast test-runtime-only install-sizes readme-figures model-card clean

setup: $(VENV)/.installed

# pip's own output is hundreds of lines; PIP_PROGRESS keeps one line per ten packages resolved,
# then the install step (about 3 minutes on 2 cores from a warm cache, 3.3 GB: make install-sizes).
PIP_PROGRESS = awk '/^Collecting/ { n++; if (n % 10 == 0) { print "  setup: " n " packages resolved..."; fflush() } } \
  /^Installing collected/ { print "  setup: installing " n " packages (the longest step)..."; fflush() } \
  /^Successfully installed/ { print "  setup: installed" }'
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "ssrconv needs Python 3.11, got " + sys.version' 
	@echo "setup: creating $(VENV) and installing ssrconv with every converter and runtime"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	set -o pipefail; $(BIN)/pip install --progress-bar off -e '.[all,test]' | $(PIP_PROGRESS)
	$(BIN)/pip install --quiet --no-deps 'pnnx>=20261020'
	@touch $@

# What the browser engines and `--to web` need (idempotent): Debian's Chromium (no browser
# download: Playwright drives /usr/bin/chromium, or $$SSRCONV_CHROMIUM), the npm packages pinned by
# package-lock.json (Playwright for Python comes with the `all` extra of `make setup`).
CHROMIUM ?= $(or $(SSRCONV_CHROMIUM),/usr/bin/chromium)
browser: setup
	@if [ ! -x "$(CHROMIUM)" ]; then \
	  command -v apt-get >/dev/null || { echo "make browser: $(CHROMIUM) is missing; install Chromium or set SSRCONV_CHROMIUM" >&2; exit 1; }; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; fi
	@if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then \
	  npm ci --no-audit --no-fund; fi

# The arm64 root filesystem for `ssrconv parity --platform linux/arm64` on an x86 machine
# (idempotent; root): Debian's qemu-user-static, binfmt-support and debootstrap (apt-get when
# missing), binfmt_misc's qemu-aarch64, `debootstrap --arch=arm64 bookworm` (~8 minutes, once),
# the runtimes' aarch64 wheels downloaded here and installed offline in /venv inside with this
# tree's ssrconv (no extras). Cached in $$SSRCONV_ARM64_ROOT (default
# ~/.cache/ssrconv/arm64-bookworm); on an arm64 machine there is nothing to build.
arm64: setup
	HOST_PYTHON=$(BIN)/python bash tools/arm64_root.sh

# Optional: torch for tests/test_ports.py's PyTorch check (skipped without it). CPU build only:
# pip's configured index must serve a +cpu torch (it does on the project's machines); the target
# fails if any CUDA package came along.
torch-tests: setup
	$(BIN)/pip install --quiet 'torch>=2.13,<2.14'
	@! $(BIN)/pip list 2>/dev/null | grep -iE '^(nvidia-|triton )' || { echo "torch-tests: CUDA packages were installed; uninstall them and use a CPU torch" >&2; exit 1; }

# The main job on the default pretrained weights (age-wiki + gender-wiki): export every target,
# check each against the reference on real faces (fails on a broken budget), benchmark them all.
# Needs no data of one's own: without SSRCONV_FACES, int8 is calibrated data-free and parity runs
# on the 7 faces of the built-in sample photos (assets, downloaded or from SSRCONV_ASSETS).
# With SSRCONV_FACES (aligned chips or photos), both use those faces.
DEMO_STARTED := $(shell date +%s)
demo: setup
	$(BIN)/ssrconv info
	$(BIN)/ssrconv export --to all $${SSRCONV_FACES:+--calibration "$$SSRCONV_FACES"} --out $(OUT)
	$(BIN)/ssrconv parity $(OUT) --json $(OUT)/parity.json --markdown $(OUT)/parity.md --junit $(OUT)/parity.xml
	$(BIN)/ssrconv bench --all $(OUT) --json $(OUT)/bench.json --markdown $(OUT)/bench.md --plot $(OUT)/bench.png
	@$(BIN)/python tools/demo_summary.py $(OUT) --started $(DEMO_STARTED)

# The whole suite, slow tests included (CI runs exactly this). The browser tests need Chromium
# and the npm packages: `make browser` (idempotent) comes first. Two pytest-xdist workers (the
# machine's 2 cores) with work stealing: the exports are made once per run and shared by both
# (tests/conftest.py), one worker starts on them while the other runs the tests that need none.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal
test: setup browser
	$(PYTEST)

test-fast: setup
	$(PYTEST) -m "not slow"

# The runtime-only install: a clean venv with `pip install .` (no extras) predicts, checks
# parity and benchmarks (numpy reference rows, end-to-end rows) a .tflite (exported here by the
# full venv) with TensorFlow not importable, and
# every converter command fails in one line naming ssrconv[export]. About 3 minutes.
test-runtime-only: setup
	FULL_BIN=$(BIN) bash tools/runtime_only_check.sh

# The README's install sizes, measured: du -sh of this venv and of a fresh runtime-only one.
install-sizes: setup
	bash tools/install_sizes.sh $(VENV)

# Regenerate the measured figures: the README's headline table and every full table of
# docs/RESULTS.md (sizes, parity, speed, accuracy, int8, predict example).
FIG := $(OUT)/figures
RESULTS := docs/RESULTS.md
readme-figures: setup browser
	@test -n "$$SSRCONV_FACES" -a -n "$$SSRCONV_IMAGES" || { echo "readme-figures: set SSRCONV_FACES and SSRCONV_IMAGES" >&2; exit 2; }
	rm -rf $(FIG) && mkdir -p $(FIG)
	$(BIN)/ssrconv export --to all --calibration "$$SSRCONV_FACES" --out $(FIG)/export
	$(BIN)/ssrconv parity $(FIG)/export --engines all --faces "$$SSRCONV_FACES" --json $(FIG)/parity.json --markdown $(FIG)/parity.md
	# The original-graph fp32 and onnx int8 exports beside, for bench's "vs original fp32" and
	# "vs original same target" columns (issue 13); tflite int8 is integer-only, made from the
	# fast graph only (its merge does not divide): no original-graph twin.
	$(BIN)/ssrconv export --to tflite --to onnx --precision fp32 --graph original --out $(FIG)/original
	$(BIN)/ssrconv export --to onnx --precision int8 --graph original \
	  --calibration "$$SSRCONV_FACES" --out $(FIG)/original
	$(BIN)/ssrconv bench --all $(FIG)/export --all $(FIG)/original --threads 1 --batch 8 --json $(FIG)/bench.json --markdown $(FIG)/bench.md --plot docs/bench.png
	# int8 (issues 6, 23): the age-only int8 file, and int8 calibrated data-free (no --calibration)
	$(BIN)/ssrconv export --to tflite --precision int8 --task age --calibration "$$SSRCONV_FACES" --out $(FIG)/age
	$(BIN)/ssrconv export --to tflite --to onnx --precision int8 --out $(FIG)/datafree
	# A data-free file outside its budget is a "not met" row of the int8 table, not a stop.
	$(BIN)/ssrconv parity $(FIG)/datafree --faces "$$SSRCONV_FACES" --json $(FIG)/parity_datafree.json \
	  || echo "readme-figures: a data-free int8 file is outside its budget (see the int8 table)" >&2
	$(BIN)/ssrconv eval "$$SSRCONV_FACES" --json $(FIG)/eval_keras.json > $(FIG)/eval.txt
	for m in export/ssrnet_age_gender_fp32.onnx export/ssrnet_age_gender_int8.tflite export/ssrnet_age_gender_int8.onnx export/ssrnet_age_gender_fp16.mlpackage datafree/ssrnet_age_gender_int8.tflite datafree/ssrnet_age_gender_int8.onnx; do \
	  $(BIN)/ssrconv eval "$$SSRCONV_FACES" --model $(FIG)/$$m --json $(FIG)/eval_$$(echo $$m | tr / _).json >> $(FIG)/eval.txt || exit 1; done
	$(BIN)/python tools/int8_report.py --bench $(FIG)/bench.json --parity "real-face=$(FIG)/parity.json" \
	  --parity "data-free=$(FIG)/parity_datafree.json" --age-int8 $(FIG)/age/ssrnet_age_int8.tflite \
	  --eval $(FIG)/eval_keras.json $(foreach m,export_ssrnet_age_gender_int8.tflite export_ssrnet_age_gender_int8.onnx datafree_ssrnet_age_gender_int8.tflite datafree_ssrnet_age_gender_int8.onnx,--eval $(FIG)/eval_$(m).json) > $(FIG)/int8.md
	$(BIN)/ssrconv predict "$$SSRCONV_IMAGES/group_t1.jpg" --model $(FIG)/export/ssrnet_age_gender_int8.tflite --out $(FIG)/predict > $(FIG)/predict.json
	$(BIN)/python -c "import json, datetime; from ssrconv.benchmarks.fingerprint import one_line; \
	  print('Last regenerated on', datetime.date.today().isoformat(), 'on:', one_line(json.load(open('$(FIG)/bench.json'))['fingerprint']) + '.')" > $(FIG)/stamp.md
	$(BIN)/python tools/headline_table.py --parity $(FIG)/parity.json --bench $(FIG)/bench.json > $(FIG)/headline.md
	$(BIN)/python tools/splice_readme.py README.md headline $(FIG)/headline.md
	$(BIN)/python tools/splice_readme.py $(RESULTS) stamp $(FIG)/stamp.md
	$(BIN)/python tools/splice_readme.py $(RESULTS) parity $(FIG)/parity.md
	$(BIN)/python tools/splice_readme.py $(RESULTS) bench $(FIG)/bench.md
	$(BIN)/python tools/splice_readme.py $(RESULTS) int8 $(FIG)/int8.md
	{ echo '```'; cat $(FIG)/eval.txt; echo '```'; } > $(FIG)/eval.md && $(BIN)/python tools/splice_readme.py $(RESULTS) eval $(FIG)/eval.md
	{ echo '```json'; cat $(FIG)/predict.json; echo '```'; } > $(FIG)/predict.md && $(BIN)/python tools/splice_readme.py $(RESULTS) predict $(FIG)/predict.md

# docs/MODEL_CARD.md: `ssrconv eval` of every published weight set on SSRCONV_FACES (the seven
# sets in four age+gender pairs; megaage-asian has no gender head, it is paired with gender-wiki).
CARD := $(OUT)/model-card
CARD_PAIRS := imdb__imdb wiki__wiki morph2__morph2 megaage-asian__wiki
# The SSR-Net family's other published weights (SSRCONV_PORTS = shared/ports): the MegaAge-Asian
# .h5 of b02901145, the PyTorch port (age only: paired with gender-wiki, same margin crop) and
# the MXNet port's age + gender pair (5-point aligned crops). Each is evaluated with its own
# preprocessing contract (ssrconv.reference.family).
PORTS_DIR = $${SSRCONV_PORTS}
CARD_PORTS := megaage-b02901145__wiki oukohou-pytorch__wiki wayen820-mxnet__wayen820-mxnet
weights_megaage-b02901145 := b02901145-megaage/ssrnet_3_3_3_64_1.0_1.0.h5
weights_oukohou-pytorch := oukohou-pytorch/model_Adam_MSELoss_LRDecay_weightDecay0.0001_batch50_lr0.0005_epoch90_64x64.pth
age_wayen820-mxnet := wayen820-mxnet/ssr2_megaage_1_1/model-0000.params
gender_wayen820-mxnet := wayen820-mxnet/ssr2_imdb_gender_1_1/model-0000.params
model-card: setup
	@test -n "$$SSRCONV_FACES" || { echo "model-card: set SSRCONV_FACES to labelled faces" >&2; exit 2; }
	@test -n "$$SSRCONV_PORTS" || { echo "model-card: set SSRCONV_PORTS to the ports' weights (shared/ports)" >&2; exit 2; }
	rm -rf $(CARD) && mkdir -p $(CARD)
	for pair in $(CARD_PAIRS); do \
	  $(BIN)/ssrconv eval "$$SSRCONV_FACES" --age-weights age-$${pair%__*} --gender-weights gender-$${pair#*__} \
	    --json $(CARD)/eval_$$pair.json || exit 1; done
	$(BIN)/ssrconv eval "$$SSRCONV_FACES" --age-weights $(PORTS_DIR)/$(weights_megaage-b02901145) \
	  --gender-weights gender-wiki --json $(CARD)/eval_megaage-b02901145__wiki.json
	$(BIN)/ssrconv eval "$$SSRCONV_FACES" --age-weights $(PORTS_DIR)/$(weights_oukohou-pytorch) \
	  --gender-weights gender-wiki --json $(CARD)/eval_oukohou-pytorch__wiki.json
	$(BIN)/ssrconv eval "$$SSRCONV_FACES" --age-weights $(PORTS_DIR)/$(age_wayen820-mxnet) \
	  --gender-weights $(PORTS_DIR)/$(gender_wayen820-mxnet) --json $(CARD)/eval_wayen820-mxnet__wayen820-mxnet.json
	$(BIN)/python tools/model_card.py --faces-label "the 300 UTKFace dev chips (SSRCONV_FACES)" \
	  $(foreach p,$(CARD_PAIRS) $(CARD_PORTS),$(CARD)/eval_$(p).json) > docs/MODEL_CARD.md

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache build src/*.egg-info
