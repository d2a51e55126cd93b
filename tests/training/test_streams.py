"""Training streams: endless seeded batches through a real DataLoader with worker processes."""

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from torch.utils.data import DataLoader

from training.streams import ListSource, PatternStream, SyntheticSource
from xrd_nexus_ml.pattern import CANONICAL_GRID
from xrd_nexus_ml.physics.augment import default_pipeline


@pytest.fixture(scope="module")
def structures(rocksalt):
    rutile = Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.59, 2.96), ["Ti", "O"],
                                       [[0, 0, 0], [0.305, 0.305, 0]])
    return [rocksalt(), rutile]


def test_list_stream_yields_labelled_batches_with_workers(structures):
    source = ListSource(structures, labels={"phase": [0, 1]})
    stream = PatternStream(source, batch_size=6, augment=default_pipeline("measured"), seed=3, max_batches=2)
    loader = DataLoader(stream, batch_size=None, num_workers=2)
    batches = list(loader)
    assert len(batches) == 4  # max_batches per worker
    for batch in batches:
        assert batch["intensity"].shape == (6, CANONICAL_GRID.n_points)
        assert batch["mask"].dtype == torch.bool
        assert set(batch["phase"].tolist()) <= {0, 1}
        assert torch.isfinite(batch["intensity"]).all()
    # the two workers draw different data
    assert not torch.equal(batches[0]["intensity"], batches[1]["intensity"])


def test_stream_is_reproducible_for_a_seed(structures):
    source = ListSource(structures, labels={"phase": [0, 1]})
    first = next(iter(PatternStream(source, batch_size=4, augment=default_pipeline("measured"), seed=11)))
    again = next(iter(PatternStream(source, batch_size=4, augment=default_pipeline("measured"), seed=11)))
    other = next(iter(PatternStream(source, batch_size=4, augment=default_pipeline("measured"), seed=12)))
    torch.testing.assert_close(first["intensity"], again["intensity"])
    assert not torch.equal(first["intensity"], other["intensity"])


def test_label_count_mismatch_is_refused(structures):
    with pytest.raises(ValueError, match="phase"):
        ListSource(structures, labels={"phase": [0]})


def test_synthetic_stream_labels_match_symmetry_tables():
    from xrd_nexus_ml.physics.symmetry import crystal_system_index, extinction_group

    stream = PatternStream(SyntheticSource({"max_atoms": 40}), batch_size=8, seed=5, max_batches=1)
    batch = next(iter(stream))
    assert batch["intensity"].shape == (8, CANONICAL_GRID.n_points)
    for sg, ext, system in zip(batch["space_group"], batch["extinction_group"], batch["crystal_system"]):
        assert 1 <= sg <= 230
        assert ext == extinction_group(int(sg))
        assert system == crystal_system_index(int(sg))
    assert (batch["intensity"].amax(1) > 0).all()
    assert np.unique(batch["space_group"].numpy()).size > 1
