#!/usr/bin/env bash
# The runtime-only install, proven: a clean venv with `pip install .` (no extras) must predict
# and check parity on a .tflite without TensorFlow (the numpy reference stands in for Keras),
# and every command that needs a converter must fail with one line naming ssrconv[export].
#
# Usage: tools/runtime_only_check.sh   (SSRCONV_ASSETS, SSRCONV_FACES, SSRCONV_IMAGES set;
# FULL_BIN = bin directory of a full install, default .venv/bin, exports the .tflite first).
set -euo pipefail
cd "$(dirname "$0")/.."
SRC="$(pwd)"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
FULL_BIN="$(cd "${FULL_BIN:-.venv/bin}" && pwd)"
: "${SSRCONV_ASSETS:?set SSRCONV_ASSETS}" "${SSRCONV_FACES:?set SSRCONV_FACES}" "${SSRCONV_IMAGES:?set SSRCONV_IMAGES}"
unset PYTHONPATH  # nothing but the installed package may be imported

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
fail() { echo "runtime-only: FAIL: $*" >&2; exit 1; }
t0=$(date +%s)

# 1. The artifact, exported by the full install (or RUNTIME_ONLY_MODEL, an existing export).
if [ -n "${RUNTIME_ONLY_MODEL:-}" ]; then
    mkdir "$WORK/export" && cp "$RUNTIME_ONLY_MODEL" "$RUNTIME_ONLY_MODEL.json" "$WORK/export/"
else
    "$FULL_BIN/ssrconv" export --to tflite --precision fp32 --out "$WORK/export" >/dev/null 2>&1 \
        || fail "export in the full install ($FULL_BIN) failed"
fi
MODEL="$WORK/export/ssrnet_age_gender_fp32.tflite"
t1=$(date +%s)

# 2. A clean venv with the base package only.
"$PYTHON" -m venv "$WORK/venv"
RO="$WORK/venv/bin"
"$RO/pip" install --quiet --disable-pip-version-check "$SRC" \
    || fail "pip install . (no extras) failed"
t2=$(date +%s)
cd "$WORK"  # away from the source tree
for module in tensorflow keras tf2onnx coremltools; do
    if "$RO/python" -c "import $module" 2>/dev/null; then
        fail "$module is importable in the runtime-only venv: the base dependencies pull it in"
    fi
done

# 3. What a device does: predict and parity on the .tflite, the reference computed by numpy.
"$RO/ssrconv" predict "$SSRCONV_IMAGES/group_t1.jpg" --model "$MODEL" --format csv > predict.csv \
    || fail "ssrconv predict --model X.tflite failed"
faces=$(($(wc -l < predict.csv) - 1))
[ "$faces" -ge 1 ] || fail "predict found no faces in group_t1.jpg"
"$RO/ssrconv" parity --model "$MODEL" --faces "$SSRCONV_FACES" --json parity.json > parity.md \
    || fail "ssrconv parity --model X.tflite failed (see $WORK/parity.md)"
engine=$("$RO/python" -c "import json; print(json.load(open('parity.json'))['reference_engine'])")
[ "$engine" = "numpy-float32" ] || fail "parity ran on reference engine '$engine', expected numpy-float32"
grep -q "reference (numpy-float32)" parity.md || fail "the parity table does not name the reference engine"
"$RO/ssrconv" predict "$SSRCONV_IMAGES/astronaut.png" > reference.json \
    || fail "ssrconv predict without --model (the numpy reference) failed"
"$RO/ssrconv" info | grep -q "reference engine numpy-float32" \
    || fail "ssrconv info does not report the numpy reference"
# bench --all plans the reference rows: the numpy engine here (it planned Keras rows, whose
# workers died importing TensorFlow); every worker without TensorFlow; the end-to-end rows
# (YuNet + crop + model on the sample photos) on the base install's OpenCV.
"$RO/ssrconv" bench --all "$WORK/export" --runs 20 --warmup 2 --rounds 2 --pipeline-runs 2 \
    --json bench.json > bench.txt 2> bench.err \
    || fail "ssrconv bench --all (a .tflite) failed: $(tail -3 bench.err)"
"$RO/python" - bench.json <<'PY' || fail "bench --all did not time the numpy reference and the pipeline without TensorFlow"
import json, sys
report = json.load(open(sys.argv[1]))
rows = {r["backend"]: r for r in report["results"]}
assert report["reference_engine"] == "numpy-float32", report["reference_engine"]
assert set(rows) == {"reference", "tflite"}, sorted(rows)
assert rows["reference"]["engine"] == "numpy-float32" and rows["reference"]["status"] == "ok"
assert all(r["status"] == "ok" and r["tensorflow_imported"] is False for r in rows.values())
assert rows["tflite"]["pipeline"]["t1.jpg"]["faces"] == 6, rows["tflite"]["pipeline"]
PY
grep -q "numpy-float32 engine of the rebuilt SSR-Net" bench.txt || fail "the bench table does not say the reference is the numpy engine"
t3=$(date +%s)

# 4. What needs a converter fails in one line naming the extra, not with a traceback.
one_line_error() {  # command... : exit 1, exactly one stderr line, naming ssrconv[export]
    local status=0
    "$@" > /dev/null 2> err.txt || status=$?
    [ "$status" -eq 1 ] || fail "'$*' exited $status, expected 1: $(head -c 300 err.txt)"
    [ "$(wc -l < err.txt)" -eq 1 ] || fail "'$*' printed $(wc -l < err.txt) lines on stderr, expected one"
    grep -q "pip install 'ssrconv\[export\]'" err.txt || fail "'$*' does not name ssrconv[export]: $(cat err.txt)"
    echo "  $* -> $(cat err.txt)"
}
echo "runtime-only: commands that need the converters:"
one_line_error "$RO/ssrconv" export --to tflite --out "$WORK/x"
one_line_error "$RO/ssrconv" export --to onnx --out "$WORK/x"
one_line_error "$RO/ssrconv" parity --model "$MODEL" --faces "$SSRCONV_FACES" --reference-engine keras
one_line_error "$RO/ssrconv" eval "$SSRCONV_FACES" --backend keras
one_line_error "$RO/ssrconv" predict "$SSRCONV_IMAGES/astronaut.png" --backend keras

site_mb() { du -sm "$("$1/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" | cut -f1; }
echo "runtime-only: ok: predict ($faces faces in group_t1.jpg), parity and bench (numpy reference," \
     "end-to-end rows) on $(basename "$MODEL") without TensorFlow, reference engine $engine"
echo "runtime-only: installed size: $(site_mb "$RO") MB (runtime-only) vs $(site_mb "$FULL_BIN") MB (full)"
echo "runtime-only: largest: $(du -sm "$("$RO/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"/* \
    | sort -rn | head -6 | awk '{n=split($2,p,"/"); printf "%s %s MB, ", p[n], $1}')"
echo "runtime-only: seconds: export $((t1 - t0)), pip install $((t2 - t1)), predict+parity+bench $((t3 - t2)), total $(($(date +%s) - t0))"
