# Source me: makes nvcc available and exports CUDA_HOME and NVCC.
# Uses an existing CUDA_HOME/NVCC when it has nvcc; otherwise installs NVIDIA's pip packages of
# CUDA 13.0, pinned together (an unpinned dependency pulls a newer release whose PTX a CUDA 13.0
# driver rejects), into a virtual environment (default ~/.cache/evenclass/cuda13-venv).
# nvcc needs a host compiler: gcc must be on PATH.
_ec_pins="nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85"
if [ -n "${NVCC:-}" ] && [ -x "$NVCC" ]; then
    :
elif [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then
    export NVCC="$CUDA_HOME/bin/nvcc"
else
    _ec_venv="${EVENCLASS_CUDA_VENV:-$HOME/.cache/evenclass/cuda13-venv}"
    _ec_home() { ls -d "$_ec_venv"/lib/python3*/site-packages/nvidia/cu13 2>/dev/null | head -n 1; }
    if [ -z "$(_ec_home)" ] || [ ! -x "$(_ec_home)/bin/nvcc" ]; then
        echo "installing nvcc 13.0 into $_ec_venv" >&2
        python3 -m venv "$_ec_venv"
        # shellcheck disable=SC2086
        "$_ec_venv/bin/pip" install --quiet --disable-pip-version-check $_ec_pins
    fi
    CUDA_HOME="$(_ec_home)"
    export CUDA_HOME NVCC="$CUDA_HOME/bin/nvcc"
    unset -f _ec_home
fi
command -v gcc >/dev/null || { echo "nvcc needs gcc on PATH" >&2; return 1 2>/dev/null || exit 1; }
