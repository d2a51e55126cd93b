"""A model bundle whose weights were altered does not load: the card's SHA-256 is checked."""

from __future__ import annotations

import json
import shutil

import pytest

from xrd_nexus_ml.bundle import CARD_FILE, SHIPPED_MODELS_DIR, WEIGHTS_FILE, file_sha256, resolve_bundle
from xrd_nexus_ml.errors import ModelBundleError
from xrd_nexus_ml.transitions.models import load_model


def _copy(tmp_path):
    folder = tmp_path / "end_to_end"
    shutil.copytree(resolve_bundle("transition/end_to_end"), folder)
    return folder


def test_every_shipped_card_records_its_weights_digest():

    cards = sorted(SHIPPED_MODELS_DIR.rglob(CARD_FILE))
    assert len(cards) >= 6
    for card in cards:
        assert json.loads(card.read_text())["weights_sha256"] == file_sha256(card.parent / WEIGHTS_FILE), card


def test_flipped_bytes_in_the_tensor_data_are_refused(tmp_path):
    folder = _copy(tmp_path)
    load_model(folder)  # intact: loads
    weights = folder / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")  # safetensors: 8-byte header length, JSON header, tensors
    start = header + (len(data) - header) // 2
    for i in range(start, start + 4096):  # 4 KB of the tensor data: still a readable file, other weights
        data[i] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelBundleError, match=r"weights\.safetensors: SHA-256 .* altered"):
        load_model(folder)


def test_a_card_without_a_digest_still_loads_with_a_warning(tmp_path, caplog):
    folder = _copy(tmp_path)
    card = json.loads((folder / CARD_FILE).read_text())
    del card["weights_sha256"]
    (folder / CARD_FILE).write_text(json.dumps(card))
    with caplog.at_level("WARNING"):
        load_model(folder)
    assert "no weights_sha256" in caplog.text
