#!/usr/bin/env bash
# Quantize and compile an edgeyolo Vitis AI bundle inside the Vitis AI PyTorch image (nothing to build).
#   docker/vitis-ai/run.sh BUNDLE_DIR [--vai 3.0|2.5] [--image IMAGE] [--only quantize|compile]
# The bundle (written by the Vitis exporter) holds quantize.sh and compile.sh; both run inside the
# image's `vitis-ai-pytorch` conda env with the bundle as working directory, as the calling user, so
# the xmodel and logs they write land in BUNDLE_DIR owned by you. Logs: BUNDLE_DIR/logs/<step>.log.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
    echo "usage: $(basename "$0") BUNDLE_DIR [--vai 3.0|2.5] [--image IMAGE] [--only quantize|compile]" >&2
    exit 2
}

[ $# -ge 1 ] || usage
bundle=$1
shift
vai=3.0
image=
steps="quantize compile"
while [ $# -gt 0 ]; do
    case $1 in
        --vai) [ $# -ge 2 ] || usage; vai=$2; shift 2 ;;
        --image) [ $# -ge 2 ] || usage; image=$2; shift 2 ;;
        --only) [ $# -ge 2 ] || usage; steps=$2; shift 2 ;;
        -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown option $1" >&2; usage ;;
    esac
done

if [ -z "$image" ]; then
    case $vai in
        3.0) image=xilinx/vitis-ai-pytorch-cpu:ubuntu2004-3.0.0.106 ;;
        2.5) image=xilinx/vitis-ai-cpu:2.5 ;;
        *) echo "error: --vai $vai: expected 3.0 or 2.5 (or give --image)" >&2; exit 2 ;;
    esac
fi
case $steps in
    "quantize compile"|quantize|compile) ;;
    *) echo "error: --only $steps: expected quantize or compile" >&2; exit 2 ;;
esac

if [ ! -d "$bundle" ]; then
    echo "error: $bundle: no such bundle directory" >&2
    exit 2
fi
bundle=$(cd "$bundle" && pwd)
for step in $steps; do
    if [ ! -f "$bundle/$step.sh" ]; then
        echo "error: $bundle/$step.sh is missing: is this a Vitis AI bundle from edgeyolo's exporter?" >&2
        exit 2
    fi
done
command -v docker >/dev/null || { echo "error: docker not found on PATH" >&2; exit 3; }

exec docker run --rm \
    --user "$(id -u):$(id -g)" \
    -e HOME=/tmp \
    -e "EDGEYOLO_STEPS=$steps" \
    -e "EDGEYOLO_VAI=$vai" \
    -v "$bundle:/workspace/bundle" \
    -v "$here/in-container.sh:/opt/edgeyolo/in-container.sh:ro" \
    -w /workspace/bundle \
    --entrypoint /bin/bash \
    "$image" /opt/edgeyolo/in-container.sh
