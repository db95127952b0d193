#!/usr/bin/env bash
# Runs inside the Vitis AI image (see run.sh): activate the PyTorch conda env, then run the bundle's
# steps in order, each logged to logs/<step>.log; stops at the first failing step.
set -euo pipefail

conda_root=${VAI_CONDA:-/opt/vitis_ai/conda}
if [ ! -f "$conda_root/etc/profile.d/conda.sh" ]; then
    echo "error: no conda under $conda_root: is this a Vitis AI image?" >&2
    exit 3
fi
# shellcheck source=/dev/null
source "$conda_root/etc/profile.d/conda.sh"
conda activate vitis-ai-pytorch

mkdir -p logs
for step in ${EDGEYOLO_STEPS:-quantize compile}; do
    echo "== $step (Vitis AI ${EDGEYOLO_VAI:-?})"
    if ! bash "./$step.sh" 2>&1 | tee "logs/$step.log"; then
        echo "error: $step.sh failed; see logs/$step.log in the bundle" >&2
        exit 1
    fi
done
