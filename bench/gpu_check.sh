#!/usr/bin/env bash
# One GPU check, <= 8 minutes on one GPU (H100 or H200): the CUDA tests, then training speed at
# GPT-2-small size (bench/gpu_bench.py: tokens/s, step time, MFU), bf16: plain, token-routed
# (the default routing) and sequence-routed, then plain and token-routed under torch.compile.
# Every part has its own time limit (480 s in all); a part that fails or runs out of time is
# reported and the next one runs. No network needed (synthetic tokens).
#
#   bench/gpu_check.sh               # on the GPU machine, from anywhere in the repository
#   bench/gpu_check.sh --cpu-smoke   # on a CPU: tiny model, CUDA tests skipped: checks the script
#
# PYTHON (default: python) is the interpreter with torch and this package importable.
set -u
cd "$(dirname "$0")/.." || exit 2
PYTHON=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SMOKE=""
SCALE=1  # the CPU smoke run is not timed against the GPU's budget: its limits are 5x longer
if [ "${1:-}" = "--cpu-smoke" ]; then SMOKE="--cpu-smoke"; SCALE=5; fi
LOG=$(mktemp -d)
SUMMARY=()
RESULTS=()
START=$(date +%s)

part() {  # part NAME SECONDS COMMAND...: run with a time limit, keep its output, note the outcome
    local name=$1 limit=$(( $2 * SCALE ))
    shift 2
    local log="$LOG/$(echo "$name" | tr ' /' '__').log" began=$(date +%s)
    echo "=== $name (limit ${limit} s)"
    timeout --kill-after=15 "$limit" "$@" 2>&1 | tee "$log"
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

part "cuda tests" 140 "$PYTHON" -m pytest -m cuda -q -p no:randomly -p no:cacheprovider -o addopts="" \
    tests/model/test_cuda.py tests/routing/test_cuda.py tests/training/test_cuda.py
part "plain bf16" 45 "$PYTHON" bench/gpu_bench.py --model plain $SMOKE
part "token bf16" 55 "$PYTHON" bench/gpu_bench.py --model token $SMOKE
part "sequence bf16" 45 "$PYTHON" bench/gpu_bench.py --model sequence $SMOKE
part "plain bf16 compile" 95 "$PYTHON" bench/gpu_bench.py --model plain --compile $SMOKE
part "token bf16 compile" 100 "$PYTHON" bench/gpu_bench.py --model token --compile $SMOKE

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
