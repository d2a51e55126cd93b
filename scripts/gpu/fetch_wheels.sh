#!/usr/bin/env bash
# Fetch, here, the wheels the GPU machine lacks (it has torch, numpy, scipy, h5py, msgpack, tqdm,
# matplotlib, but no pymatgen, spglib, pyxtal or ase, and it cannot reach a package registry). They land in
# .whl/ (git-ignored); a device run names `.whl` in carry and the GPU scripts install them.
#   bash scripts/gpu/fetch_wheels.sh            # Python 3.12 on x86-64, as on the device image
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
pins=$(".venv/bin/python" -m pip list --format=freeze 2>/dev/null |
       grep -i -E '^(pymatgen|monty|orjson|ruamel\.yaml|ruamel\.yaml\.clib|spglib|uncertainties|palettable|pyxtal|ase)==' || true)
[ -n "$pins" ] || pins="pymatgen monty orjson ruamel.yaml ruamel.yaml.clib spglib uncertainties palettable pyxtal ase"
# bibtexparser (read lazily by pymatgen) has no wheel after 1.3.0, the last of the same API
pins="$pins bibtexparser==1.3.0"
mkdir -p .whl
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "${WHEEL_PYTHON:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $pins
du -sh .whl
