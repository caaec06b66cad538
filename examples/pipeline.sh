#!/usr/bin/env bash
# Fuse and score a folder of IR/VIS pairs with a shell pipeline.
#   examples/pipeline.sh IR_DIR VIS_DIR OUT_DIR [METHOD]
# Writes OUT_DIR/fused/<id>.png, OUT_DIR/records.jsonl and OUT_DIR/scores.csv.
set -euo pipefail
ir=${1:?IR_DIR} vis=${2:?VIS_DIR} out=${3:?OUT_DIR} method=${4:-laplacian}
mkdir -p "$out"
fuse pairs "$ir" "$vis" \
  | fuse fuse -m "$method" -o "$out/fused" \
  | tee "$out/records.jsonl" \
  | fuse score --format csv > "$out/scores.csv"
echo "fused: $out/fused  scores: $out/scores.csv" >&2
