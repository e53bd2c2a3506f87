#!/usr/bin/env bash
# make gpu-wheels: the wheels scripts/gpu-check.sh installs offline (--no-index) on the GPU machine, into one
# git-ignored folder (default gpu-wheels/), at most 48 MiB. Run where the package index is reachable.
#
#   1. resolve the project and dask-cuda for Linux x86-64 / CPython 3.12 against the machine's pinned versions
#      (scripts/gpu-machine.txt: torch 2.11, numpy ...), from metadata only (uv pip compile). dask-cuda without
#      its cu13 extra: the machine's image holds its CUDA 13 cuda-core/cuda-bindings already, and the extra would
#      add nvidia-nvvm (60 MB, numba's compiler, unused by dask-cuda); the `gpu` extra is resolved by
#      tests/test_gpu_extras.py
#   2. download, as cp312 manylinux x86-64 wheels, every package of that resolution the machine lacks,
#      plus setuptools (pip builds the editable install in an isolated environment, offline too)
#   3. print the list and the folder's size; fail over the limit
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-gpu-wheels}
PY=${PYTHON:-.venv/bin/python}
LIMIT_MIB=${LIMIT_MIB:-48}
UV=$("$PY" -c 'from uv import find_uv_bin; print(find_uv_bin())')

rm -rf "$DEST" && mkdir -p "$DEST"
grep -E '^[A-Za-z0-9_.-]+==' scripts/gpu-machine.txt >"$DEST/machine-pins.txt"
echo "dask-cuda>=26.10" >"$DEST/gpu-check.in"
"$UV" pip compile pyproject.toml "$DEST/gpu-check.in" --python-platform x86_64-manylinux_2_28 --python-version 3.12 \
    --no-config --no-header --no-annotate --quiet -c "$DEST/machine-pins.txt" -o "$DEST/resolved.txt"
present=$(grep -v '^#' scripts/gpu-machine.txt | sed -E 's/[=<>].*//' | tr 'A-Z_' 'a-z-' | sort -u)
grep -E '^[A-Za-z0-9_.-]+==' "$DEST/resolved.txt" | sed 's/ .*//' | while read -r pin; do
    name=$(echo "${pin%%==*}" | tr 'A-Z_' 'a-z-')
    grep -qx "$name" <<<"$present" || echo "$pin"
done >"$DEST/needed.txt"
echo "setuptools>=77" >>"$DEST/needed.txt"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
    --dest "$DEST" -r "$DEST/needed.txt"

echo "$DEST/: $(ls "$DEST"/*.whl | wc -l) wheels"
(cd "$DEST" && ls -1s --block-size=K ./*.whl | sed 's#\./##')
size_kib=$(du -sk "$DEST" | cut -f1)
echo "total: $((size_kib / 1024)) MiB ($size_kib KiB), limit $LIMIT_MIB MiB"
[ "$size_kib" -le $((LIMIT_MIB * 1024)) ] || { echo "error: $DEST/ is over $LIMIT_MIB MiB" >&2; exit 1; }
