#!/usr/bin/env bash
# make gpu-check: the real-GPU path in one go, offline, within 8 minutes (docs/gpu.md).
#
#   scripts/gpu-check.sh [OUT]          OUT defaults to gpu-check-out/ (git-ignored)
#
#   install      a venv with --system-site-packages (the machine's CUDA torch, cuda-core, nvidia-ml-py), the project
#                and dask-cuda from the wheels of `make gpu-wheels` (gpu-wheels/, --no-index); torch must see CUDA
#   gpus         altlas-dask gpus --json through real NVML; every field has a value or is listed `unknown`
#   cuda-worker  dask scheduler --preload scheduler_plugins.gpu_router + one
#                `dask cuda worker --preload altlas_dask.worker`: the worker must bind its GPU
#   up           altlas-dask up --with-api on the real GPUs (dask-cuda LocalCUDACluster)
#   selftest     altlas-dask selftest against it with seed 003's scenarios (scripts/gpu-check.yaml)
#   gateway      the shipped model served through POST /predict; every worker's model on cuda
#   router-vs-dask  router vs plain Dask on the same GPU: round-trip median and 2,000-task throughput, as ratios
#
# Everything lands in OUT: one file per step, steps.tsv, summary.json and summary.md, gpu-check.log.
# GPU_CHECK_DRY=1 runs the same script on a machine without GPU (make test does): the simulated pool, the venv
# made as on the GPU machine but no --no-index install, `dask worker` with the argv dask-cuda gives its preloads
# in place of `dask cuda worker`, the model on the CPU, small benchmark sizes. Each such step says so in its note.
# Knobs (environment): VENV (default .venv-gpu; dry: .venv), PYTHON, WHEELS (gpu-wheels), PORT (8786; the
# check uses PORT..PORT+21), BUDGET_S (480). Exit code: non-zero if any step failed.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT=${1:-gpu-check-out}
DRY=${GPU_CHECK_DRY:-0}
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-gpu-wheels}
PORT=${PORT:-8786}
BUDGET_S=${BUDGET_S:-480}
if [ "$DRY" = 1 ]; then VENV=${VENV:-.venv}; else VENV=${VENV:-.venv-gpu}; fi
BIN=$VENV/bin
HOME_DIR=$OUT/home
SCHEDULER=tcp://127.0.0.1:$PORT
API_PORT=$((PORT + 10))
WORKER_SCHEDULER=127.0.0.1:$((PORT + 20))

rm -rf "$OUT" && mkdir -p "$OUT" "$HOME_DIR"
export DASK_TEMPORARY_DIRECTORY=$OUT/dask-scratch  # workers' scratch space: not the working tree
exec > >(tee "$OUT/gpu-check.log") 2>&1
began=$(date +%s)
failed=0
export ALTLAS_HOME=$HOME_DIR
if [ "$DRY" = 1 ]; then
    export ALTLAS_CONFIG=scripts/gpu-check.yaml
    SIMULATE=(--simulate 1)
    SELFTEST_CONFIG=scripts/gpu-check-dry.yaml
    DEVICE=cpu
    echo "== DRY RUN (GPU_CHECK_DRY=1): simulated pool, CUDA steps faked or skipped, each says so"
else
    export ALTLAS_CONFIG=scripts/gpu-check.yaml
    SIMULATE=()
    SELFTEST_CONFIG=scripts/gpu-check.yaml
    DEVICE=cuda
fi

# step NAME LIMIT NOTE CMD...: run CMD (output to OUT/NAME.txt) within LIMIT seconds and what is left of the budget
step() {
    local name=$1 limit=$2 note=$3
    shift 3
    local start rc left
    start=$(date +%s)
    left=$((began + BUDGET_S - start))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -le 0 ]; then
        rc=124
        note="not run: the ${BUDGET_S}s budget is spent; $note"
    else
        echo "== $name (limit ${limit}s): $*"
        timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.txt" 2>&1
        rc=$?
    fi
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - start))" "$note" >>"$OUT/steps.tsv"
    printf '   %-16s rc=%-3s %4ss  %s\n' "$name" "$rc" "$(($(date +%s) - start))" "$note"
    [ "$rc" -eq 0 ] || { failed=1; tail -n 20 "$OUT/$name.txt" 2>/dev/null; }
    return "$rc"
}

# background NAME CMD...: start CMD in its own process group, output to OUT/NAME.txt; its pid in $!
background() {
    local name=$1
    shift
    setsid "$@" >"$OUT/$name.txt" 2>&1 &
}
PIDS=()
# stop PID...: SIGINT to each one's process group, then SIGKILL to what is left after 20 s
stop() {
    for pid in "$@"; do kill -INT -- "-$pid" 2>/dev/null; done
    for pid in "$@"; do
        for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL -- "-$pid" 2>/dev/null
    done
}
stop_all() { stop "${PIDS[@]}"; }
trap stop_all EXIT

step machine 30 "" bash -c "date -u; uname -a; (nvidia-smi && nvidia-smi -L) || echo 'no nvidia-smi'; $PYTHON --version; \
    git log -1 --oneline"

# The venv sees the interpreter's packages (the machine's CUDA torch): --system-site-packages for a system
# Python, plus a .pth naming the interpreter's own site-packages, for a Python that is itself a venv (the GPU
# image's python3 is /opt/torch/.venv; a venv made from it would otherwise see only the base Python's). The
# parent's pip comes through the same .pth.
make_venv() {
    set -e
    rm -rf "$GPU_VENV"
    "$PYTHON" -m venv --system-site-packages --without-pip "$GPU_VENV"
    "$PYTHON" -c 'import site; print("\n".join(site.getsitepackages()))' \
        >"$("$GPU_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/parent-site-packages.pth"
    "$GPU_VENV/bin/python" -c 'import sys, pip, distributed; print(sys.prefix, "sees pip", pip.__version__, "and the parent packages")'
}
install_offline() {
    make_venv
    set -e
    "$GPU_VENV/bin/python" -m pip install --quiet --no-index --find-links "$WHEELS" -e . 'dask-cuda>=26.10'
    "$GPU_VENV/bin/python" -c 'import torch; assert torch.cuda.is_available(), "torch " + torch.__version__ + " sees no CUDA"; print("torch", torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))'
    "$GPU_VENV/bin/python" -c 'import dask_cuda, pynvml; print("dask-cuda", dask_cuda.__version__, "nvidia-ml-py", pynvml.__file__)'
    "$GPU_VENV/bin/python" -m pip list --format=freeze
}
export -f make_venv install_offline
export PYTHON WHEELS
if [ "$DRY" = 1 ]; then
    # the venv mechanism, from this Python (a venv too); the offline install itself needs gpu-wheels/ and 3.12
    PYTHON=$BIN/python GPU_VENV=$OUT/venv-probe step install 60 \
        "dry run: venv + .pth from $VENV checked; the --no-index install of $WHEELS/ skipped; $VENV used" \
        bash -c make_venv
else
    GPU_VENV=$VENV step install 240 "venv (interpreter's packages via .pth) + $WHEELS/ offline" \
        bash -c install_offline || { echo "install failed: see $OUT/install.txt"; exit 1; }
fi

note=$([ "$DRY" = 1 ] && echo "simulated pool (no NVML here): --simulate 1" || echo "real NVML")
step gpus 60 "$note" "$BIN/altlas-dask" gpus --json "${SIMULATE[@]}" && cp "$OUT/gpus.txt" "$OUT/gpus.json"
step fields 30 "every field a value or unknown" "$BIN/python" scripts/gpu_check.py fields "$OUT/gpus.json" \
    $([ "$DRY" = 1 ] && echo --simulated)

# One command-line worker against a scheduler started as the deployment starts it, and `up`, started together.
background scheduler "$BIN/dask" scheduler --host 127.0.0.1 --port "${WORKER_SCHEDULER##*:}" \
    --dashboard-address "127.0.0.1:$((PORT + 21))" --preload scheduler_plugins.gpu_router
CLI_PIDS=($!)
if [ "$DRY" = 1 ]; then
    worker_note="faked: dask worker with dask-cuda's preload argv (--create-cuda-context), simulated GPU 1"
    ALTLAS_GPU_INDEX=1 background cuda-worker-process "$BIN/dask" worker "tcp://$WORKER_SCHEDULER" --nthreads 2 \
        --preload altlas_dask.worker --create-cuda-context
else
    worker_note="dask cuda worker --preload altlas_dask.worker"
    background cuda-worker-process "$BIN/dask" cuda worker "tcp://$WORKER_SCHEDULER" --preload altlas_dask.worker
fi
CLI_PIDS+=($!)
background up-process "$BIN/altlas-dask" -v up "${SIMULATE[@]}" --scheduler-address "127.0.0.1:$PORT" \
    --dashboard-address "127.0.0.1:$((PORT + 1))" --with-api --api-port "$API_PORT"
PIDS=("${CLI_PIDS[@]}" $!)

step cuda-worker 120 "$worker_note" "$BIN/python" scripts/gpu_check.py workers "tcp://$WORKER_SCHEDULER" 1 \
    --timeout 100
stop "${CLI_PIDS[@]}"
note=$([ "$DRY" = 1 ] && echo "simulated pool (LocalCluster)" || echo "dask-cuda LocalCUDACluster")
if step up 180 "$note" "$BIN/python" scripts/gpu_check.py workers "$SCHEDULER" 1 --timeout 170; then
    step selftest 240 "$SELFTEST_CONFIG" "$BIN/altlas-dask" selftest --scheduler "$SCHEDULER" \
        --config "$SELFTEST_CONFIG" --json-file "$OUT/selftest.json"
    note=$([ "$DRY" = 1 ] && echo "model on the CPU (simulated GPU)" || echo "model on CUDA")
    step gateway 150 "$note" bash -c "key=\$($BIN/altlas-dask keys create --user gpu-check --admin) && \
        $BIN/python scripts/gpu_check.py gateway http://127.0.0.1:$API_PORT/api/v1 \"\$key\" $SCHEDULER $DEVICE"
fi
stop_all
PIDS=()

if [ "$DRY" = 1 ]; then
    step router-vs-dask 120 "dry: 200 tasks, 1 rep, 10 round trips on a simulated GPU; no figure to keep" \
        "$BIN/python" scripts/gpu_check.py router-vs-dask --simulate 1 --tasks 200 --reps 1 --roundtrips 10 \
        --json-file "$OUT/router-vs-dask.json"
else
    step router-vs-dask 150 "2,000 no-op tasks x3, 100 round trips, same GPU" \
        "$BIN/python" scripts/gpu_check.py router-vs-dask --config scripts/gpu-check.yaml \
        --tasks 2000 --reps 3 --roundtrips 100 --json-file "$OUT/router-vs-dask.json"
fi

echo "== total $(($(date +%s) - began))s; results in $OUT/"
"$BIN/python" scripts/gpu_check.py summary "$OUT" $([ "$DRY" = 1 ] && echo --dry) || failed=1
exit "$failed"
