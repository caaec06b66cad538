#!/usr/bin/env bash
# Training campaign: the registration network (register, tard) fine-tuned with night pairs in the mix.
#
#   nohup bash campaigns/register-night.sh > runs/register-night.log 2>&1 &
#
# Starts from the shipped stages/weights/tard.safetensors; after any stop, the same command resumes
# exactly from campaigns/register-night/tard.safetensors (weights; Adam state in tard.optim.safetensors,
# epoch and random streams in register.json; rewritten every epoch; commit them to keep the campaign).
# Data (../shared/data, training sets only; campaigns/register_pairs.py): roadscene (less the scenes of
# unaligned/roadscene), llvip, msrs_extra less its 8 validation pairs (stages.training.registration.HELD_OUT).
# No evaluation pair is read.
# Validation: python benchmarks/bench_register.py --deform runs/register-night/val --weights ...
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
OUT=campaigns/register-night
EPOCHS=${EPOCHS:-24}
FUSION_EPOCHS=${FUSION_EPOCHS:-3}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=${THREADS:-1}

mkdir -p "$OUT" runs/register-night/val/ir runs/register-night/val/vis
for id in $("$PY" -c "from stages.training.registration import HELD_OUT; print(' '.join(h.split('/')[1] for h in HELD_OUT))"); do
  ln -sfn "$(realpath "$DATA/msrs_extra/ir/$id.png")" "runs/register-night/val/ir/$id.png"
  ln -sfn "$(realpath "$DATA/msrs_extra/vis/$id.png")" "runs/register-night/val/vis/$id.png"
done
if [ -f "$OUT/register.json" ]; then
  start=(--resume "$OUT/tard.safetensors")
else
  start=(--init stages/weights/tard.safetensors)
fi
# The shipped run's recipe (crop 320, batch 4), a lower rate for fine-tuning; on CPU as the runs it resumes.
echo "$(date -u +%FT%TZ) fuse train -m register ${start[*]} (epochs $EPOCHS + $FUSION_EPOCHS)"
"$PY" campaigns/register_pairs.py --data "$DATA" \
  | .venv/bin/fuse train -m register -o "$OUT" "${start[@]}" --epochs "$EPOCHS" --fusion-epochs "$FUSION_EPOCHS" \
      --batch-size 4 --crop 320 --lr 3e-4 --seed 0 --device cpu
