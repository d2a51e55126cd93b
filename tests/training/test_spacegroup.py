"""Training the space-group classifier: the loss, the config, checkpoint and resume, the bundle, DDP, Ray.

The network lives in tests/xrd_nexus_ml/models/test_resnet1d.py, its inputs and non-crystal
patterns in tests/xrd_nexus_ml/spacegroup/test_spacegroup.py.

Training runs are real but tiny (a few steps of a narrow ResNet on real synthetic crystals);
what they check is the machinery (checkpoint, resume, DDP, Ray), not accuracy: that lives in
`xrd-nexus-ml evaluate spacegroup` and in the shipped model's tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from training.spacegroup import (
    TrainConfig,
    TrainingConfigError,
    load_config,
    symmetry_loss,
    train_model,
)
from xrd_nexus_ml.errors import ModelBundleError
from xrd_nexus_ml.pattern import CANONICAL_GRID
from xrd_nexus_ml.physics import symmetry
from xrd_nexus_ml.spacegroup.model import SpaceGroupModel, head_sizes, model_input
from xrd_nexus_ml.spacegroup.negatives import non_crystal_patterns

ROOT = Path(__file__).resolve().parents[2]  # the repository: tests/training/ is two below
TINY = {"steps": 4, "batch_size": 8, "replay": 16, "non_crystal_fraction": 0.25, "calibration_patterns": 16,
        "checkpoint_every": 2, "evaluate_real": False, "widths": [8, 8, 16, 16], "workers": 0, "max_atoms": 16,
        "device": "cpu"}


# -- loss ------------------------------------------------------------------------------------
def test_loss_pulls_non_crystal_rows_to_uniform():
    n_sg, n_ext = 230, symmetry.N_EXTINCTION_GROUPS
    zeros = {"space_group": torch.zeros(1, n_sg), "extinction_group": torch.zeros(1, n_ext),
             "crystal_system": torch.zeros(1, 7)}
    weights = {"space_group": 1.0, "extinction_group": 1.0, "crystal_system": 1.0}
    negative = torch.full((1, 3), -1)
    # uniform logits on a non-crystal row: the loss is the entropy bound log(C) per head
    expected = np.log(n_sg) + np.log(n_ext) + np.log(7)
    assert float(symmetry_loss(zeros, negative, weights)) == pytest.approx(expected, rel=1e-5)
    peaked = {k: v.clone() for k, v in zeros.items()}
    peaked["space_group"][0, 5] = 10.0
    assert float(symmetry_loss(peaked, negative, weights)) > expected  # confidence on a non-crystal costs
    crystal = torch.tensor([[5, 0, 0]])
    assert float(symmetry_loss(peaked, crystal, weights)) < float(symmetry_loss(zeros, crystal, weights))


# -- configuration ---------------------------------------------------------------------------
def test_config_files_json_and_toml(tmp_path):
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"steps": 7, "size": "resnet18"}))
    t = tmp_path / "c.toml"
    t.write_text('steps = 9\nwidths = [16, 32, 64, 128]\n')
    assert load_config(j).steps == 7 and load_config(j).resnet().depths == (2, 2, 2, 2)
    assert load_config(t, seed=3).widths == [16, 32, 64, 128] and load_config(t, seed=3).seed == 3
    assert load_config(t, steps=None).steps == 9  # None overrides nothing


def test_config_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"steps": 5, "learning_rate": 1}))
    with pytest.raises(TrainingConfigError, match=r"bad\.json.*learning_rate"):
        load_config(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("steps = = 3")
    with pytest.raises(TrainingConfigError, match=r"broken\.toml.*TOML"):
        load_config(broken)
    with pytest.raises(TrainingConfigError, match="not found"):
        load_config(tmp_path / "missing.json")
    with pytest.raises(TrainingConfigError, match="non_crystal_fraction"):
        TrainConfig(non_crystal_fraction=1.5)
    with pytest.raises(TrainingConfigError, match="unknown ResNet size"):
        TrainConfig(size="resnet5").resnet()


# -- training, checkpoint, resume, bundle ----------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> tuple[SpaceGroupModel, Path]:
    out = tmp_path_factory.mktemp("sg_tiny")
    model = train_model(out, TrainConfig(**TINY), progress=False)
    return model, out


def test_training_writes_a_loadable_calibrated_bundle(tiny_model):
    model, out = tiny_model
    assert (out / "card.json").is_file() and (out / "weights.safetensors").is_file()
    assert not (out / "checkpoint.pt").exists()  # removed once the bundle is written
    card = json.loads((out / "card.json").read_text())
    assert card["kind"] == "spacegroup-resnet" and card["training"]["recipe"]["steps"] == 4
    assert set(card["calibration"]["temperatures"]) == set(head_sizes())
    assert card["training"]["fresh_crystals_seen"] == 4 * 8
    loaded = SpaceGroupModel.load(out)
    rng = np.random.default_rng(0)
    intensity, mask = non_crystal_patterns(3, CANONICAL_GRID, rng)
    a = loaded.probabilities(model_input(intensity, mask))
    b = model.probabilities(model_input(intensity, mask))
    for head in head_sizes():
        np.testing.assert_allclose(a[head], b[head], atol=1e-6)
        np.testing.assert_allclose(a[head].sum(axis=1), 1.0, atol=1e-5)
    assert loaded.model_id == model.model_id and loaded.model_id.startswith("space_group/spacegroup-resnet@")
    predictions = loaded.predict(intensity, mask, top_k=5)
    assert len(predictions) == 3 and len(predictions[0].space_groups) == 5
    assert all(1 <= n <= 230 for n, _, _ in predictions[0].space_groups)


def test_interrupted_training_resumes_from_its_checkpoint(tmp_path):
    config = TrainConfig(**TINY)
    assert train_model(tmp_path, config, progress=False, stop_after=2) is None
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 2
    model = train_model(tmp_path, config, progress=False)
    assert model.training["resumed_from_step"] == 2
    assert not (tmp_path / "checkpoint.pt").exists()
    # another recipe does not pick up a foreign checkpoint
    other = tmp_path / "other"
    train_model(other, config, progress=False, stop_after=2)
    changed = TrainConfig(**{**TINY, "lr": 1e-4})
    assert train_model(other, changed, progress=False).training["resumed_from_step"] == 0


def test_bundle_errors_name_the_file(tiny_model, tmp_path):
    _, out = tiny_model
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "card.json").write_text("{not json")
    with pytest.raises(ModelBundleError, match=r"broken/card\.json.*not valid JSON"):
        SpaceGroupModel.load(broken)
    card = json.loads((out / "card.json").read_text())
    (broken / "card.json").write_text(json.dumps({**card, "kind": "identification-moe"}))
    with pytest.raises(ModelBundleError, match="identification-moe"):
        SpaceGroupModel.load(broken)
    wider = {**card, "architecture": {**card["architecture"], "widths": [16, 16, 32, 32]}}
    (broken / "card.json").write_text(json.dumps(wider))
    with pytest.raises(ModelBundleError, match=r"weights\.safetensors.*architecture"):
        SpaceGroupModel.load(broken)
    (broken / "card.json").write_text(json.dumps(card))
    (broken / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelBundleError, match=r"weights\.safetensors"):
        SpaceGroupModel.load(broken)
    with pytest.raises(ModelBundleError, match="missing"):
        SpaceGroupModel.load(tmp_path / "nowhere")


def test_ddp_under_torchrun_trains_one_model_from_two_ranks(tmp_path):
    """Two CPU processes (gloo backend), each with its own stream; rank 0 writes the bundle."""
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({**TINY, "steps": 2}))
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "xrd_nexus_ml.cli", "train", "spacegroup", "--config", str(config), "--out", str(out), "--json"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["world_size"] == 2
    assert card["training"]["fresh_crystals_seen"] == 2 * 8 * 2
    SpaceGroupModel.load(out)


def test_ray_actors_feed_the_training(tmp_path):
    """A small local Ray instance generates the crystals (the cluster path, run on this machine)."""
    pytest.importorskip("ray")
    model = train_model(tmp_path, TrainConfig(**{**TINY, "steps": 2, "ray_address": "local", "ray_actors": 1}),
                        progress=False)
    assert model.training["recipe"]["ray_address"] == "local"
    assert model.training["fresh_crystals_seen"] == 2 * 8
    import ray

    assert not ray.is_initialized()  # the feed shut down the Ray it started
