# Sourced by the GPU scripts: Python, the carried wheels, the project on the path, $OUT.
# On the device machine `python3` holds torch; here set PYTHON=.venv/bin/python.
PY=${PYTHON:-python3}
OUT=${OUT:?set OUT to the folder that receives the results}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null && ! "$PY" -c "import pymatgen, spglib, pyxtal" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
"$PY" - <<'PYEOF' | tee "$OUT/device.json"
import json, torch
from xrd_nexus_ml.device import cpu_name
print(json.dumps({"torch": torch.__version__, "cuda": torch.cuda.is_available(),
                  "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                  "cpu": cpu_name()}))
PYEOF
