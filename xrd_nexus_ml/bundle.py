"""Model bundles on disk: `<dir>/weights.safetensors` (tensors only) and `<dir>/card.json`.

Every model of the package is stored this way, so loading one reads JSON and tensors and never
unpickles an object; a missing, corrupt or foreign file raises `ModelBundleError` naming it. The
card records the SHA-256 of the weights file (`weights_sha256`) and loading checks it: weights that
were altered, or swapped for another model's, do not load silently and answer differently.
"""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Collection
from pathlib import Path

import numpy as np
import torch

from xrd_nexus_ml.errors import ModelBundleError

log = logging.getLogger(__name__)

CARD_FILE = "card.json"
WEIGHTS_FILE = "weights.safetensors"
#: The bundles shipped inside the package, by task: `<task>/<name>/` (see `shipped_models`).
SHIPPED_MODELS_DIR = Path(__file__).resolve().parent / "data" / "models"
#: A task's shipped model when a command or function is given "default" or nothing.
DEFAULT_NAMES = {"identification": "default", "spacegroup": "default", "transition": "end_to_end"}


def shipped_models() -> list[str]:
    """The registry names of the shipped bundles, e.g. "identification/default"."""
    return sorted(f"{card.parent.parent.name}/{card.parent.name}"
                  for card in SHIPPED_MODELS_DIR.glob(f"*/*/{CARD_FILE}"))


def resolve_bundle(name_or_path: str | Path | None, task: str | None = None) -> Path:
    """The folder of a model bundle: a folder holding a card, a registry name ("spacegroup/default"),
    or, with `task`, a shipped name of that task ("default", "end_to_end"; None means the task's
    default). The one resolver of model names in the package; ModelBundleError lists what is shipped."""
    if name_or_path is None or str(name_or_path) == "":
        if task is None:
            raise ModelBundleError("no model given and no task to take the default of")
        name_or_path = DEFAULT_NAMES[task]
    path = Path(name_or_path)
    if (path / CARD_FILE).is_file():
        return path
    text = str(name_or_path)
    candidates = [SHIPPED_MODELS_DIR / text] + ([SHIPPED_MODELS_DIR / task / text] if task else [])
    for folder in candidates:
        if (folder / CARD_FILE).is_file():
            return folder
    names = [n for n in shipped_models() if task is None or n.startswith(f"{task}/")]
    raise ModelBundleError(f"{name_or_path}: neither a model bundle folder ({CARD_FILE} + {WEIGHTS_FILE}) nor a "
                           f"shipped model name (shipped: {', '.join(names) or 'none'})")


def software_versions() -> dict:
    """The versions a card records next to the weights."""
    import safetensors

    return {"torch": torch.__version__, "numpy": np.__version__, "safetensors": safetensors.__version__,
            "python": platform.python_version()}


def file_sha256(path) -> str:
    """Hex SHA-256 of a file, read in blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_digest(directory) -> str:
    """First 12 hex digits of the SHA-256 of a bundle's weights file ("unsaved" when it has none):
    the `@...` of every model id, so one model has one id wherever it is reported."""
    import hashlib

    weights = Path(directory) / WEIGHTS_FILE
    return hashlib.sha256(weights.read_bytes()).hexdigest()[:12] if weights.is_file() else "unsaved"


def write_bundle(directory, tensors: dict[str, torch.Tensor], card: dict, indent: int = 1) -> Path:
    """Write the tensors and the card (which must hold `kind`); returns the folder."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"kind": str(card["kind"])})
    card = {**card, "weights_sha256": file_sha256(directory / WEIGHTS_FILE)}
    (directory / CARD_FILE).write_text(json.dumps(card, indent=indent, default=float))
    return directory


def read_bundle(directory, kinds: Collection[str], card_version: int) -> tuple[dict, dict[str, torch.Tensor]]:
    """(card, tensors) of a bundle whose card is of one of `kinds` and of `card_version`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    card_path, weights_path = directory / CARD_FILE, directory / WEIGHTS_FILE
    for path in (card_path, weights_path):
        if not path.is_file():
            raise ModelBundleError(f"{path}: model bundle file is missing (a bundle is {CARD_FILE} + {WEIGHTS_FILE})")
    try:
        card = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelBundleError(f"{card_path}: the model card is not valid JSON ({err})") from None
    kind = card.get("kind") if isinstance(card, dict) else None
    if kind not in kinds:
        raise ModelBundleError(f"{card_path}: holds a {kind!r} model, expected {' or '.join(map(repr, kinds))}")
    if card.get("card_version") != card_version:
        raise ModelBundleError(f"{card_path}: card_version {card.get('card_version')!r}, this code reads "
                               f"{card_version}")
    recorded = card.get("weights_sha256")
    if recorded is None:
        log.warning("%s: the card records no weights_sha256; the weights cannot be checked", card_path)
    elif file_sha256(weights_path) != recorded:
        raise ModelBundleError(f"{weights_path}: SHA-256 {file_sha256(weights_path)[:12]}... is not the "
                               f"{str(recorded)[:12]}... its card records: the weights were altered or belong to "
                               "another model; rebuild the bundle or restore its files")
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ModelBundleError(f"{weights_path}: cannot read the weights ({err})") from None
    return card, tensors


def load_state(module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str, source) -> None:
    """Load `prefix.*` tensors into `module`; a missing or extra tensor names the weights file."""
    state = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatch
        raise ModelBundleError(f"{Path(source) / WEIGHTS_FILE}: weights do not fit the card's architecture "
                               f"({str(err).splitlines()[0]} ...)") from None
    if missing or unexpected:
        raise ModelBundleError(f"{Path(source) / WEIGHTS_FILE}: weights do not match the card's architecture "
                               f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
