#!/usr/bin/env bash
# Build a TensorRT engine on the board with trtexec. An engine only runs on the TensorRT version and
# GPU that built it, so it is built here, never copied from the host.
#   edgeyolo-build-engine MODEL.onnx OUT.engine [fp32|fp16|int8] [CALIB_CACHE] [-- TRTEXEC_ARGS...]
# int8 without a calibration cache is for Q/DQ ONNX (explicit quantization); fp16 is the default.
set -euo pipefail

usage() {
    echo "usage: $(basename "$0") MODEL.onnx OUT.engine [fp32|fp16|int8] [CALIB_CACHE] [-- TRTEXEC_ARGS...]" >&2
    exit 2
}

[ $# -ge 2 ] || usage
onnx=$1
engine=$2
shift 2
precision=fp16
calib=
if [ $# -gt 0 ] && [ "$1" != "--" ]; then precision=$1; shift; fi
if [ $# -gt 0 ] && [ "$1" != "--" ]; then calib=$1; shift; fi
if [ $# -gt 0 ] && [ "$1" = "--" ]; then shift; fi

if [ ! -f "$onnx" ]; then
    echo "error: $onnx: no such ONNX file" >&2
    exit 2
fi
if [ -n "$calib" ] && [ ! -f "$calib" ]; then
    echo "error: $calib: no such calibration cache" >&2
    exit 2
fi

trtexec=${TRTEXEC:-$(command -v trtexec || true)}
if [ -z "$trtexec" ]; then
    echo "error: trtexec not found; mount the board's JetPack copy" \
        "(docker run -v /usr/src/tensorrt/bin:/usr/src/tensorrt/bin:ro ...) or set TRTEXEC=/path/to/trtexec" >&2
    exit 3
fi

args=("--onnx=$onnx" "--saveEngine=$engine")
case $precision in
    fp32) ;;
    fp16) args+=(--fp16) ;;
    int8)
        args+=(--int8 --fp16)  # fp16 lets layers without int8 kernels fall back to half, not float
        if [ -n "$calib" ]; then args+=("--calib=$calib"); fi
        ;;
    *)
        echo "error: precision '$precision': expected fp32, fp16 or int8" >&2
        usage
        ;;
esac
if [ "$precision" != int8 ] && [ -n "$calib" ]; then
    echo "error: a calibration cache only applies to int8" >&2
    exit 2
fi

exec "$trtexec" "${args[@]}" "$@"
