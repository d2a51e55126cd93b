#!/usr/bin/env bash
# The identification scaling campaign on one GPU (issue 19): flat vs single hierarchical vs the
# mixture of experts (joint and expert-first recipes) at 10^4 classes, top-1/top-5 on fresh
# draws, JSON under $OUT. Fits one 10-minute device command: about 2 minutes to build the
# library and its peaks, 330 s of training, then the models are tested as they are
# ("complete": false, with the patterns per class they saw, when the budget was not reached);
# checkpoints under $OUT/ckpt let a later session resume. 10^5 classes (SCALING_SIZES="100000
# 20 cuda 330 512 100000") waits for a faster substituted library: it took 10 minutes on one
# core here (2026-12-06).
#   device: bash scripts/gpu/scaling.sh          (run's carry: [".whl"], from scripts/gpu/fetch_wheels.sh)
#   here:   SCALING_TINY=1 PYTHON=.venv/bin/python OUT=/tmp/o bash scripts/gpu/scaling.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/gpu/prelude.sh
if [ "${SCALING_TINY:-0}" = 1 ]; then   # classes, patterns per class, device, training seconds, batch, test patterns
    runs=("12 8 cpu 120 16 48")
else
    runs=("${SCALING_SIZES:-10000 100 cuda 330 256 10000}")
fi
for run in "${runs[@]}"; do
    read -r size ppc device seconds batch tests <<<"$run"
    "$PY" -m xrd_nexus_ml.cli evaluate scaling --sizes "$size" --patterns-per-class "$ppc" --device "$device" \
        --batch-size "$batch" --test-patterns "$tests" --checkpoint-dir "$OUT/ckpt" --stop-after "$seconds" \
        --json > "$OUT/scaling-$size.json"
    "$PY" - "$OUT/scaling-$size.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
lib = r["libraries"][0]
print(sys.argv[1], "complete" if lib["complete"] else "INCOMPLETE", f"{lib['patterns_per_class']:.0f} patterns/class",
      [(x["model"], round(x["top1"], 4), round(x["top5"], 4)) for x in r["results"]])
PYEOF
done
