#!/usr/bin/env bash
# One GPU check, <= 8 minutes on one GPU (H100 or H200): the CUDA tests, then training speed at
# GPT-2-small size (bench/gpu_bench.py: tokens/s, step time, MFU), bf16: plain, token-routed
# (the default routing) and sequence-routed, then plain and token-routed under torch.compile.
# Every part has its own time limit, and the whole run a deadline of 480 s (a part is cut to
# what is left of it); a part that fails or runs out of time is reported and the next one
# runs. No network needed (synthetic tokens).
#
#   bench/gpu_wheels.sh              # here, first: the wheels the GPU image lacks, into .whl/
#   bench/gpu_check.sh               # on the GPU machine (carry .whl), from the repository
#   bench/gpu_check.sh --no-compile  # the same without the torch.compile parts (~3 minutes)
#   bench/gpu_check.sh --cpu-smoke   # on a CPU: tiny model, CUDA tests skipped: checks the script
#
# PYTHON (default: python3, else python) is the interpreter with torch.
set -u
cd "$(dirname "$0")/.." || exit 2
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
SMOKE=""
COMPILE=1
SCALE=1  # the CPU smoke run is not timed against the GPU's budget: its limits are 5x longer
for arg in "$@"; do
    case "$arg" in
        --cpu-smoke) SMOKE="--cpu-smoke"; SCALE=5 ;;
        --no-compile) COMPILE=0 ;;
        *) echo "gpu_check: unknown option $arg (--cpu-smoke, --no-compile)" >&2; exit 2 ;;
    esac
done
SITE=""
if [ -z "$SMOKE" ] && compgen -G ".whl/*.whl" >/dev/null; then  # what the GPU image lacks (bench/gpu_wheels.sh)
    SITE=$(mktemp -d)
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl \
        || { echo "gpu_check: installing .whl/ failed" >&2; exit 2; }
fi
export PYTHONPATH="$PWD${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "${OUT:-}" ]; then LOG="$OUT/gpu_check"; mkdir -p "$LOG"; else LOG=$(mktemp -d); fi  # OUT: the device tool's
SUMMARY=()
RESULTS=()
START=$(date +%s)
DEADLINE=$(( START + 480 * SCALE - 10 ))  # 10 s kept for the summary

part() {  # part NAME SECONDS COMMAND...: run with a time limit, keep its output, note the outcome
    local name=$1 limit=$(( $2 * SCALE ))
    shift 2
    local left=$(( DEADLINE - $(date +%s) ))
    if [ "$left" -lt "$limit" ]; then limit=$left; fi
    if [ "$limit" -lt 10 ]; then
        SUMMARY+=("$(printf '%-28s %-18s %4d s' "$name" "SKIPPED (no time)" 0)")
        return
    fi
    local log="$LOG/$(echo "$name" | tr ' /' '__').log" began=$(date +%s)
    echo "=== $name (limit ${limit} s)"
    timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]} took=$(( $(date +%s) - began ))
    local outcome="ok"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then outcome="TIMED OUT"; elif [ "$rc" -ne 0 ]; then outcome="FAILED (exit $rc)"; fi
    SUMMARY+=("$(printf '%-28s %-18s %4d s' "$name" "$outcome" "$took")")
    local line
    line=$(grep -E '^(plain|token|sequence) +compile=' "$log" | tail -1)
    if [ -n "$line" ]; then RESULTS+=("$line"); fi
}

echo "gpu_check: $("$PYTHON" -c 'import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA")' 2>&1)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# a config checks its fields with pydantic, imported only then: build one, not just import
if ! "$PYTHON" -c "import transformer.training.trainer as t, transformer.model.config as c; c.ModelConfig(d_vocab=8)" \
    2>"$LOG/import.log"; then
    echo "gpu_check: the package does not import: $(tail -1 "$LOG/import.log")" >&2
    echo "gpu_check: a package missing? run bench/gpu_wheels.sh where pip works and carry .whl/" >&2
    exit 2
fi

part "cuda tests" 140 "$PYTHON" -m pytest -m cuda -q -p no:randomly -p no:cacheprovider -o addopts="" \
    tests/model/test_cuda.py tests/routing/test_cuda.py tests/training/test_cuda.py
part "plain bf16" 45 "$PYTHON" bench/gpu_bench.py --model plain $SMOKE
part "token bf16" 55 "$PYTHON" bench/gpu_bench.py --model token $SMOKE
part "sequence bf16" 45 "$PYTHON" bench/gpu_bench.py --model sequence $SMOKE
if [ "$COMPILE" -eq 1 ]; then
    part "plain bf16 compile" 95 "$PYTHON" bench/gpu_bench.py --model plain --compile $SMOKE
    part "token bf16 compile" 100 "$PYTHON" bench/gpu_bench.py --model token --compile $SMOKE
fi

echo
echo "=== summary ($(( $(date +%s) - START )) s in all; logs in $LOG)"
printf '%s\n' "${SUMMARY[@]}"
printf '%s\n' "${RESULTS[@]}"
"$PYTHON" - "$LOG" <<'PY'
import json, pathlib, sys
results = {}
for log in pathlib.Path(sys.argv[1]).glob("*.log"):
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[len("RESULT "):])
            results[(r["model"], r["compile"])] = r
for compiled in (False, True):
    plain = results.get(("plain", compiled))
    for kind in ("token", "sequence"):
        routed = results.get((kind, compiled))
        if plain and routed:
            ratio = routed["step_ms"] / plain["step_ms"] * plain["batch"] / routed["batch"]
            print(f"compile={compiled}: {kind}-routed / plain time per sequence {ratio:.2f}x (goal <= 1.1x)")
    if plain and plain["mfu"] is not None:
        print(f"compile={compiled}: plain MFU {plain['mfu']:.1%} (goal >= 50%)")
PY
