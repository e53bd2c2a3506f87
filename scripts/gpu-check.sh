#!/usr/bin/env bash
# make gpu-check: the real-GPU path, checked in one go on a machine with NVIDIA GPUs (under 8 minutes).
#
#   1. machine: nvidia-smi, driver, Python
#   2. install: the `gpu` extra (dask-cuda[cu12]) and a CUDA build of torch into $VENV; check torch sees CUDA
#   3. NVML detection: altlas-dask gpus --json (every field; `unknown_fields` lists what the board does not report)
#   4. altlas-dask up on the real GPUs (dask-cuda LocalCUDACluster, one worker per GPU or MIG slice)
#   5. altlas-dask selftest against it (scripts/gpu-check.yaml: seed 003's scenarios), table + JSON
#   6. bench/scaling.py and a short bench/strategies.py (router benchmarks on the simulated pool, on this machine)
#
# Everything lands in $OUT (default gpu-check-out/, gitignored): one file per step, summary.txt with each step's
# exit code and seconds, gpu-check.log with the whole run. bench/RESULTS.md and the bench plots are restored
# afterwards (their new versions are kept in $OUT). Exit code: non-zero if any step failed.
#
# Knobs (environment): OUT, VENV, PYTHON, CONFIG, PORT (scheduler; dashboard on PORT+1), GPU_TORCH_SPEC (e.g.
# "torch --index-url https://download.pytorch.org/whl/cu126" for an older driver), SKIP_INSTALL=1 (venv ready),
# SKIP_BENCH=1, ALLOW_SIMULATED=1 (a dry run of the script's plumbing on a machine without GPU).
set -uo pipefail

cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check-out}
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
GPU_TORCH_SPEC=${GPU_TORCH_SPEC:-torch}           # PyPI's Linux torch wheels are CUDA builds
CONFIG=${CONFIG:-scripts/gpu-check.yaml}
PORT=${PORT:-8786}
SCHEDULER=tcp://127.0.0.1:$PORT
BIN=$VENV/bin

rm -rf "$OUT" && mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-check.log") 2>&1
failed=0
began=$(date +%s)

# step NAME SECONDS CMD...: run CMD with a time limit, output to $OUT/NAME.txt, record exit code and duration
step() {
    local name=$1 limit=$2
    shift 2
    local start rc
    start=$(date +%s)
    echo "== $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.txt" 2>&1
    rc=$?
    printf '%-22s rc=%-3s %4ss\n' "$name" "$rc" "$(($(date +%s) - start))" | tee -a "$OUT/summary.txt"
    [ "$rc" -eq 0 ] || failed=1
    return "$rc"
}

step machine 30 bash -c 'date -u; uname -a; nvidia-smi; nvidia-smi -L; '"$PYTHON"' --version; git log -1 --oneline'

[ "${SKIP_INSTALL:-0}" = 1 ] || step install 300 bash -c "
    set -e
    test -x $BIN/python || $PYTHON -m venv $VENV
    $BIN/python -m pip install --quiet --upgrade pip
    # a CPU build of torch (make venv on a machine without GPU) is replaced by a CUDA one
    $BIN/python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null || {
        $BIN/python -m pip uninstall --quiet -y torch 2>/dev/null || true
        $BIN/python -m pip install --quiet $GPU_TORCH_SPEC
    }
    $BIN/python -m pip install --quiet -e '.[gpu]'
    $BIN/python -m pip freeze
    $BIN/python -c 'import torch; assert torch.cuda.is_available(), \"torch \" + torch.__version__ + \" sees no CUDA device\"; print(torch.__version__, torch.version.cuda, [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])'
    $BIN/python -c 'import dask_cuda; print(\"dask-cuda\", dask_cuda.__version__)'
" || { echo "install failed: see $OUT/install.txt"; exit 1; }

step nvml 60 "$BIN/altlas-dask" --config "$CONFIG" gpus --json && cp "$OUT/nvml.txt" "$OUT/gpus.json"
# without NVML altlas-dask falls back to the simulated pool: that would check nothing real
[ "${ALLOW_SIMULATED:-0}" = 1 ] || step real-gpus 10 bash -c "grep -q '\"simulated\": false' $OUT/nvml.txt && ! grep -q '\"simulated\": true' $OUT/nvml.txt"

echo "== up: $BIN/altlas-dask --config $CONFIG up (background)"
"$BIN/altlas-dask" --config "$CONFIG" -v up --scheduler-address "127.0.0.1:$PORT" \
    --dashboard-address "127.0.0.1:$((PORT + 1))" >"$OUT/up.txt" 2>&1 &
UP_PID=$!
stop_cluster() {
    if kill -0 "$UP_PID" 2>/dev/null; then
        kill -INT "$UP_PID"
        for _ in $(seq 60); do kill -0 "$UP_PID" 2>/dev/null || break; sleep 1; done
        kill -0 "$UP_PID" 2>/dev/null && kill -KILL "$UP_PID"
    fi
}
trap stop_cluster EXIT
ready=0
step cluster-ready 180 bash -c "until $BIN/altlas-dask gpus --scheduler $SCHEDULER >/dev/null 2>&1; do
    kill -0 $UP_PID || { echo 'altlas-dask up exited'; exit 1; }; sleep 2; done
    $BIN/altlas-dask gpus --scheduler $SCHEDULER" && ready=1
if [ "$ready" = 1 ]; then
    COLUMNS=200 step selftest 300 "$BIN/altlas-dask" selftest --scheduler "$SCHEDULER" --config "$CONFIG" \
        --json-file "$OUT/selftest.json"
fi
stop_cluster
trap - EXIT

# The benchmarks rewrite bench/RESULTS.md and their plots: keep their versions in $OUT, restore the tracked ones.
if [ "${SKIP_BENCH:-0}" != 1 ]; then
    mkdir -p "$OUT/bench-before" "$OUT/bench"
    cp bench/RESULTS.md bench/*.png "$OUT/bench-before/"
    step scaling 150 "$BIN/python" bench/scaling.py --reps 1 --tasks 128 --no-diagnosis
    step strategies 120 "$BIN/python" bench/strategies.py --duration 4 --reps 1 --no-diagnosis
    cp bench/RESULTS.md bench/*.png "$OUT/bench/"
    cp "$OUT/bench-before/"* bench/
fi

echo "== total $(($(date +%s) - began))s; results in $OUT/ (summary.txt, selftest.txt, selftest.json, gpus.json, ...)"
cat "$OUT/summary.txt"
exit "$failed"
