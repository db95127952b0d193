#!/usr/bin/env bash
# The trees scene (one aerial image, 574 tree boxes) as a tiled YOLO dataset, split by region:
# rows y >= 1854 px are val, the 64-px band above them is left out, and each region is tiled on
# its own at 416 px with 64 px of overlap (more than a crown is wide). The whole val region is also
# written as one image (split val_region) for sliced inference:
#   edgeyolo test --data trees-416/data.yaml --split val_region --tile 416 ...
# Usage: examples/trees/prepare.sh [OUT] [SIZE]   (SIZE 208 gives 208-px tiles)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
shared="${EDGEYOLO_SHARED:-$here/../../../shared}"
size="${2:-416}"
out="${1:-trees-$size}"
edgeyolo data tile --src "$shared/datasets/trees" --out "$out" \
    --size "$size" --overlap 64 --val-below 1854 --gap 64 --min-visible 0.5
