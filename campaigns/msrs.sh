#!/usr/bin/env bash
# Training campaign: one network on night + day MSRS, RoadScene and LLVIP (MSRS segmentation labels give
# RefineFuse's salient targets).
#
#   nohup bash campaigns/msrs.sh refinefuse > runs/refinefuse-msrs.log 2>&1 &
#   nohup bash campaigns/msrs.sh dfh-base   > runs/dfh-base-msrs.log 2>&1 &
#   nohup bash campaigns/msrs.sh tesg       > runs/tesg-msrs.log 2>&1 &
#   RUN=textdfh-lowlr nohup bash campaigns/msrs.sh textdfh > runs/textdfh-lowlr.log 2>&1 &
#   RUN=tesg-cosine EPOCHS=12 nohup bash campaigns/msrs.sh tesg --schedule cosine > runs/tesg-cosine.log 2>&1 &
#
# Options after the method go to fuse train after the recipe's (the last given wins): give the same ones to resume.
# Starts from the shipped weights (INIT=PATH: from those; INIT=none: a fresh network, e.g. a textdfh stage 2 on
# the shipped dfh-base: RUN=textdfh-newbase INIT=none bash campaigns/msrs.sh textdfh); after any stop, the same command resumes exactly from the last
# epoch written to campaigns/RUN/ (RUN defaults to METHOD-msrs; weights, Adam state and model card,
# written atomically after every epoch, with the best epoch by validation Qabf in campaigns/RUN/best/;
# commit them to keep a campaign across sessions).
# Data (../shared/data, training sets only): msrs_train128 (1,079), msrs_extra less the 8 validation
# pairs below (112), roadscene (221), llvip (47).
# Validation (checkpoint selection, campaigns/promote.py): the 8 held-out msrs_extra pairs. No evaluation
# pair (msrs/, tno/, m3fd/) is read here.
set -euo pipefail
cd "$(dirname "$0")/.."
METHOD=${1:?usage: campaigns/msrs.sh refinefuse|dfh-base|tesg|textdfh [fuse train options]}
shift
DATA=${DATA:-../shared/data}
RUN=${RUN:-$METHOD-msrs}
OUT=campaigns/$RUN
WORK=runs/$RUN
EPOCHS=${EPOCHS:-30}
VAL_IDS="00111D 00504D 00754N 00874N 00988N 01102N 01222N 01335N"
FUSE=${FUSE:-.venv/bin/fuse}
# One torch thread by default: on this 2-core machine a campaign shares the CPU with other work, and
# two threads competing with it spin more than they compute. THREADS=2 on an idle machine.
export OMP_NUM_THREADS=${THREADS:-1}
# The papers' optimiser settings where they fit a CPU; crops of 128 (the papers: 256) for speed.
case $METHOD in
  refinefuse) recipe=(--optimizer adam --lr 5e-4 --batch-size 8 --crop 128) ;;  # paper: SGD 1e-3, which stalls in a CPU budget
  dfh-base) recipe=(--optimizer adam --lr 1e-4 --batch-size 16 --crop 128) ;;   # paper: Adam 1e-3 from scratch; fine-tuning here
  # TeSG (paper: AdamW 1e-4, crops of 96, 140 epochs): fine-tuning the shipped weights at 2e-4 on crops of 64.
  tesg) recipe=(--lr 2e-4 --batch-size 8 --crop 64 --cache runs/text-guidance-cache) ;;
  # Text-DFH stage 2 (paper: Adam 1e-3), fine-tuning the shipped weights at 1e-4 (fusion loss: stages/nets/textdfh.py).
  textdfh) recipe=(--lr 1e-4 --batch-size 16 --crop 128 --cache runs/text-guidance-cache) ;;
  *) echo "campaigns/msrs.sh: no recipe for $METHOD" >&2; exit 2 ;;
esac

mkdir -p "$OUT" "$WORK/val/ir" "$WORK/val/vis"
for id in $VAL_IDS; do
  ln -sfn "$(realpath "$DATA/msrs_extra/ir/$id.png")" "$WORK/val/ir/$id.png"
  ln -sfn "$(realpath "$DATA/msrs_extra/vis/$id.png")" "$WORK/val/vis/$id.png"
done
{
  "$FUSE" pairs "$DATA/msrs_train128/ir" "$DATA/msrs_train128/vis"
  "$FUSE" pairs "$DATA/msrs_extra/ir" "$DATA/msrs_extra/vis" | grep -v -E "\"id\": \"($(echo $VAL_IDS | tr ' ' '|'))\""
  "$FUSE" pairs "$DATA/roadscene/ir" "$DATA/roadscene/vis"
  "$FUSE" pairs "$DATA/llvip/ir" "$DATA/llvip/vis"
} > "$WORK/train.jsonl"
echo "training pairs: $(wc -l < "$WORK/train.jsonl")"

if [ -f "$OUT/$METHOD.safetensors" ]; then
  start=(--resume "$OUT/$METHOD.safetensors")
elif [ "${INIT:-}" = none ]; then
  start=()  # a fresh network (textdfh: a new stage 2 on the shipped dfh-base)
else
  start=(--init "${INIT:-stages/weights/$METHOD.safetensors}")
fi
echo "$(date -u +%FT%TZ) fuse train -m $METHOD ${start[*]} ${recipe[*]} $* (epochs $EPOCHS)"
exec "$FUSE" train -m "$METHOD" -r "$WORK/train.jsonl" -o "$OUT" "${start[@]}" \
  --val-ir "$WORK/val/ir" --val-vis "$WORK/val/vis" "${recipe[@]}" --epochs "$EPOCHS" --seed 0 "$@"
