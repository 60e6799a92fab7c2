#!/usr/bin/env bash
# Registers, shared memory, spills and tensor-core instructions of every kernel for sm_90, from
# the real compiler's output (scripts/kernel_resources.py; --help there). Installs cuobjdump
# like scripts/cuda-env.sh installs nvcc: a pinned pip package in its own virtual environment
# (default ~/.cache/evenclass/cuobjdump-venv). NVIDIA ships cuobjdump and nvdisasm on pip only
# from 13.2 on; 13.2 reads the fatbins and cubins of nvcc 13.0.
#   scripts/kernel-resources.sh --check                 CI: fails on a spill or a tensor-core
#                                                       kernel without HMMA
#   scripts/kernel-resources.sh --trace T --table F     the table of docs/kernel-resources.md
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=/dev/null
source scripts/cuda-env.sh
# cuobjdump -sass runs nvdisasm: both pinned to the same release.
pins="nvidia-cuda-cuobjdump==13.2.86 nvidia-cuda-nvdisasm==13.2.86"
venv="${EVENCLASS_CUOBJDUMP_VENV:-$HOME/.cache/evenclass/cuobjdump-venv}"
find_bin() { ls "$venv"/lib/python3*/site-packages/nvidia/cu13/bin/"$1" 2>/dev/null | head -n 1; }
if [ -z "${CUOBJDUMP:-}" ]; then
    if [ -z "$(find_bin cuobjdump)" ] || [ -z "$(find_bin nvdisasm)" ]; then
        echo "installing cuobjdump and nvdisasm ($pins) into $venv" >&2
        python3 -m venv "$venv"
        # shellcheck disable=SC2086
        "$venv/bin/pip" install --quiet --disable-pip-version-check $pins
    fi
    CUOBJDUMP="$(find_bin cuobjdump)"
    export NVDISASM_PATH="$(dirname "$(find_bin nvdisasm)")"
fi
export CUOBJDUMP
exec python3 scripts/kernel_resources.py "$@"
