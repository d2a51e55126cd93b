"""Make metadata a user typed storable in HDF5, and say what was changed.

h5py refuses some text that Python holds without complaint: a NUL character ("VLEN strings do
not support embedded NULLs"), a lone UTF-16 surrogate (it cannot be encoded as UTF-8); and a
metadata value of megabytes bloats every file. `sanitise_metadata` is the one place where run
metadata (a Bluesky start document, or the fields of `RunMetadata`) is made storable:

* NUL and the other control characters (Unicode category Cc: C0, DEL, C1) are removed, except
  tab and newline;
* a lone surrogate becomes U+FFFD (a high/low pair becomes the character it encodes); bytes
  are decoded as UTF-8, each invalid byte becoming U+FFFD;
* a string is cut to `MAX_STRING_BYTES` bytes of UTF-8 (never inside a character);
* dictionary keys get the same treatment (a cleaned key that would replace another gets
  ``_2``, ``_3``, ...); keys JSON cannot hold (tuples, ...) become text; a circular reference
  becomes text.

Each change is returned as a `Change`: the key path in the original document (control
characters in it escaped, e.g. ``custom.bad\\x00key``, ``custom.list[0]``) and what was done
(``removed 1 NUL byte``). Values that are not text (numbers, arrays, None) are kept as they are.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["MAX_STRING_BYTES", "Change", "printable", "sanitise_metadata", "sanitise_text"]

#: Longest metadata string written (bytes of UTF-8); longer ones are cut.
MAX_STRING_BYTES = 65536
#: Deepest nesting of dictionaries and lists kept; deeper values are written as text.
MAX_DEPTH = 64

_KEEP = {"\t", "\n"}
_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Change:
    """One change: where (key path in the original document, printable) and what was done."""

    path: str
    action: str

    def __str__(self) -> str:
        return f"{self.path}: {self.action}"

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "action": self.action}


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _is_control(ch: str) -> bool:
    return ch not in _KEEP and unicodedata.category(ch) == "Cc"


def sanitise_text(value: str | bytes | bytearray, max_bytes: int = MAX_STRING_BYTES) -> tuple[str, list[str]]:
    """`value` as text HDF5 can store, and what was done to it ([] when it was fine as it was)."""
    actions: list[str] = []
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value).decode("utf-8", "surrogateescape")  # each invalid byte -> one lone surrogate
        invalid = len(_SURROGATE.findall(text))
        text = _SURROGATE.sub("\ufffd", text)
        actions.append("decoded bytes as UTF-8" + (f", {_plural(invalid, 'invalid byte')} replaced with U+FFFD"
                                                   if invalid else ""))
    else:
        text = str(value)
    if _SURROGATE.search(text):
        pairs = len(_PAIR.findall(text))
        if pairs:
            text = _PAIR.sub(lambda m: m.group().encode("utf-16-le", "surrogatepass").decode("utf-16-le"), text)
            actions.append(f"joined {_plural(pairs, 'surrogate pair')} into characters")
        lone = len(_SURROGATE.findall(text))
        if lone:
            text = _SURROGATE.sub("\ufffd", text)
            actions.append(f"replaced {_plural(lone, 'lone surrogate')} with U+FFFD")
    nuls = text.count("\x00")
    if nuls:
        text = text.replace("\x00", "")
        actions.append(f"removed {_plural(nuls, 'NUL byte')}")
    controls = sum(1 for ch in text if _is_control(ch))
    if controls:
        text = "".join(ch for ch in text if not _is_control(ch))
        actions.append(f"removed {_plural(controls, 'control character')}")
    if len(text) * 4 > max_bytes or len(text.encode("utf-8")) > max_bytes:  # cheap test first
        raw = text.encode("utf-8")
        if len(raw) > max_bytes:
            text = raw[:max_bytes].decode("utf-8", "ignore")  # drops a character cut in two
            actions.append(f"cut from {len(raw)} to {len(text.encode('utf-8'))} bytes")
    return text, actions


def printable(text: str, limit: int = 200) -> str:
    """`text` for a key path or a log line: control characters and surrogates escaped, at most `limit` chars."""
    out = []
    for ch in text:
        if _is_control(ch) or ch in _KEEP or "\ud800" <= ch <= "\udfff":
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    result = "".join(out)
    return result if len(result) <= limit else result[: limit - 3] + "..."


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def sanitise_metadata(document, max_bytes: int = MAX_STRING_BYTES):
    """A copy of `document` (a start document, or any value) that HDF5 can store, and the `Change`s made.

    Dictionaries and lists are copied; other values that are not text are the same objects.
    """
    changes: list[Change] = []
    clean = _clean(document, "", changes, set(), 0, max_bytes)
    return clean, changes


def _clean(value, path: str, changes: list[Change], active: set[int], depth: int, max_bytes: int):
    if isinstance(value, (str, bytes, bytearray)):
        text, actions = sanitise_text(value, max_bytes)
        if actions:
            changes.append(Change(path or "(value)", "; ".join(actions)))
            return text
        return value
    if not isinstance(value, (Mapping, list, tuple)):
        return value
    if id(value) in active:
        changes.append(Change(path or "(value)", "circular reference replaced by text"))
        return "<circular reference>"
    if depth >= MAX_DEPTH:
        changes.append(Change(path or "(value)", f"nested deeper than {MAX_DEPTH} levels; written as text"))
        text, _ = sanitise_text(repr(value), max_bytes)
        return text
    active.add(id(value))
    try:
        if isinstance(value, Mapping):
            return _clean_mapping(value, path, changes, active, depth, max_bytes)
        items = [_clean(item, f"{path}[{i}]", changes, active, depth + 1, max_bytes) for i, item in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    finally:
        active.discard(id(value))


def _clean_mapping(value: Mapping, path: str, changes: list[Change], active: set[int], depth: int,
                   max_bytes: int) -> dict:
    # keys first: a key that needs no change keeps its name, a cleaned one must not take it
    names: list[tuple[object, object, str, str | None]] = []  # (original key, new key, key's path, action)
    for key in value:
        if isinstance(key, str) or key is None or isinstance(key, (int, float)):  # JSON can hold these
            if not isinstance(key, str):
                names.append((key, key, _join(path, printable(str(key))), None))
                continue
            text, actions = sanitise_text(key, max_bytes)
            names.append((key, text, _join(path, printable(key)), "; ".join(actions) if actions else None))
        else:
            text, actions = sanitise_text(key if isinstance(key, (bytes, bytearray)) else str(key), max_bytes)
            if isinstance(key, (bytes, bytearray)):
                action = "; ".join(actions)
            else:
                action = "; ".join([f"a {type(key).__name__}, written as text", *actions])
            names.append((key, text, _join(path, printable(str(key))), action))
    taken = {new for _, new, _, action in names if action is None}
    out: dict = {}
    for key, new, key_path, action in names:
        if action is not None:
            wanted = new
            n = 2
            while new in taken:
                new = f"{wanted}_{n}"
                n += 1
            taken.add(new)
            if isinstance(key, str) or isinstance(key, (bytes, bytearray)):
                note = f"now {new!r}" + (f": {wanted!r} is taken" if new != wanted else "")
                action = f"key: {action} ({note})"
            else:
                action = f"key: {action}" + (f" (now {new!r}: {wanted!r} is taken)" if new != wanted else "")
            changes.append(Change(key_path, action))
        out[new] = _clean(value[key], key_path, changes, active, depth + 1, max_bytes)
    return out
