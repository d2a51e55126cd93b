#!/usr/bin/env bash
# The space-group classifier at the throughput one GPU allows (issue 20): synthetic crystals
# generated and simulated by DataLoader workers on the machine's CPU cores, the network on the
# GPU in bf16, for a fixed time (the learning rate follows the clock: `max_seconds`), then
# calibrated, saved and scored on the 358 real structures. Writes $OUT/spacegroup/ (the bundle),
# $OUT/spacegroup-train.json and $OUT/spacegroup-eval.json. Fits one 10-minute device command.
#   device: bash scripts/gpu/spacegroup.sh       (run's carry: [".whl"], from scripts/gpu/fetch_wheels.sh)
#   here:   SPACEGROUP_TINY=1 PYTHON=.venv/bin/python OUT=/tmp/o bash scripts/gpu/spacegroup.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/gpu/prelude.sh
if [ "${SPACEGROUP_TINY:-0}" = 1 ]; then
    device=cpu workers=0
    config='{"max_seconds": 15, "steps": 100000, "batch_size": 8, "replay": 0, "size": "resnet10",
             "widths": [8, 8, 8, 8], "max_atoms": 12, "calibration_patterns": 32, "evaluate_real": false}'
else  # 6 minutes of training; the rest of the 10 goes to start-up, calibration and the evaluation
    cores=$(nproc)
    device=cuda workers=$((cores > 2 ? cores - 2 : 1))
    config='{"max_seconds": 360, "steps": 1000000, "batch_size": 256, "replay": 0, "checkpoint_every": 1000,
             "evaluate_real": false}'
fi
echo "$config" > "$OUT/spacegroup-config.json"
"$PY" -m xrd_nexus_ml.cli train spacegroup --config "$OUT/spacegroup-config.json" --out "$OUT/spacegroup" \
    --device "$device" --workers "$workers" --no-resume --json > "$OUT/spacegroup-train.json"
"$PY" -m xrd_nexus_ml.cli evaluate spacegroup --model "$OUT/spacegroup" --device "$device" --json \
    > "$OUT/spacegroup-eval.json"
"$PY" - "$OUT" <<'PYEOF'
import json, sys
train = json.load(open(f"{sys.argv[1]}/spacegroup-train.json"))
ev = json.load(open(f"{sys.argv[1]}/spacegroup-eval.json"))
print("trained on", train["device"], train["seconds"], "-> real structures (imperfect): top-1",
      round(ev["top1"], 4), "top-5", round(ev["top5"], 4), "crystal system", round(ev["crystal_system_top1"], 4))
PYEOF
