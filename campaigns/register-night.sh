#!/usr/bin/env bash
# Training campaign: the registration network (register, tard) fine-tuned with night pairs in the mix.
#
#   nohup bash campaigns/register-night.sh > runs/register-night.log 2>&1 &
#   RUN=register-cycle2 EPOCHS=6 FUSION_EPOCHS=0 LR=1e-4 nohup bash campaigns/register-night.sh > runs/register-cycle2.log 2>&1 &
#
# Starts from the shipped stages/weights/tard.safetensors (or INIT); after any stop, the same command resumes
# exactly from campaigns/RUN/tard.safetensors (RUN defaults to register-night; weights, Adam state in
# tard.optim.safetensors, epoch and random streams in register.json; rewritten every epoch; commit them
# to keep the campaign). FUSION_EPOCHS=0 trains the registration only (tard keeps the fusion head it started with).
# Data (../shared/data, training sets only; campaigns/register_pairs.py): roadscene (less the scenes of
# unaligned/roadscene), llvip, msrs_extra less its 8 validation pairs (stages.training.registration.HELD_OUT).
# No evaluation pair is read.
# Validation: python benchmarks/bench_register.py --deform runs/$RUN/val --weights ...
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
RUN=${RUN:-register-night}
OUT=campaigns/$RUN
EPOCHS=${EPOCHS:-24}
FUSION_EPOCHS=${FUSION_EPOCHS:-3}
LR=${LR:-3e-4}
SEED=${SEED:-0}
INIT=${INIT:-stages/weights/tard.safetensors}  # or stages/weights/register.safetensors (registration only)
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=${THREADS:-1}

mkdir -p "$OUT" runs/$RUN/val/ir runs/$RUN/val/vis
for id in $("$PY" -c "from stages.training.registration import HELD_OUT; print(' '.join(h.split('/')[1] for h in HELD_OUT))"); do
  ln -sfn "$(realpath "$DATA/msrs_extra/ir/$id.png")" "runs/$RUN/val/ir/$id.png"
  ln -sfn "$(realpath "$DATA/msrs_extra/vis/$id.png")" "runs/$RUN/val/vis/$id.png"
done
if [ -f "$OUT/register.json" ]; then
  start=(--resume "$OUT/tard.safetensors")
else
  start=(--init "$INIT")
fi
# The shipped run's recipe (crop 320, batch 4), a lower rate for fine-tuning; on CPU as the runs it resumes.
echo "$(date -u +%FT%TZ) fuse train -m register ${start[*]} (epochs $EPOCHS + $FUSION_EPOCHS)"
"$PY" campaigns/register_pairs.py --data "$DATA" \
  | .venv/bin/fuse train -m register -o "$OUT" "${start[@]}" --epochs "$EPOCHS" --fusion-epochs "$FUSION_EPOCHS" \
      --batch-size 4 --crop 320 --lr "$LR" --seed "$SEED" --device cpu
