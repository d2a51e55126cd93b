"""What travels on the 0MQ wire between RunEngines, the proxy and `xrd-nexus-ml serve`.

bluesky's `Publisher`/`RemoteDispatcher` default to pickle, and unpickling runs whatever code the
sender chose: on a beamline network, shared by many hosts, anyone who can reach the proxy's input
port could run code on the classification server. These documents travel as msgpack instead, with
numpy arrays as (dtype, shape, raw bytes): decoding builds dicts, lists, strings, numbers and
plain numpy arrays, and nothing else. `deserialize` refuses, with a `WireError` naming what was
wrong, a message over `MAX_MESSAGE_BYTES`, anything that is not one document (a map with string
keys), and object arrays (msgpack-numpy would unpickle those).

Publish to `serve` with ``Publisher(address, serializer=serialize)``; listen to its derived runs with
``RemoteDispatcher(address, deserializer=deserialize)``.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import msgpack_numpy
import numpy as np

__all__ = ["MAX_MESSAGE_BYTES", "WireError", "deserialize", "serialize"]

#: the largest document body `deserialize` accepts (bytes)
MAX_MESSAGE_BYTES = 64 * 2**20


class WireError(ValueError):
    """A message that is not a bluesky document in this wire format."""


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        return obj.tolist()  # msgpack-numpy would pickle it; its elements are packed one by one instead
    encoded = msgpack_numpy.encode(obj)
    if encoded is obj:
        raise TypeError(f"cannot put a {type(obj).__name__} on the wire (msgpack + numpy arrays only)")
    return encoded


def serialize(obj: Any) -> bytes:
    """A document -> msgpack bytes (numpy arrays and scalars included). Object arrays go as lists."""
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def _dtype(descr: Any) -> np.dtype:
    if isinstance(descr, list):  # a structured dtype: [[name, descr, (shape)], ...]
        descr = [(str(field[0]), _dtype(field[1]), *field[2:]) for field in descr]
    elif not isinstance(descr, str):
        raise WireError(f"a numpy dtype must be a string or a field list, got {type(descr).__name__}")
    dtype = np.dtype(descr)
    if dtype.hasobject:
        raise WireError("object arrays are refused (msgpack-numpy sends them pickled)")
    return dtype


def _decode(obj: dict) -> Any:
    """msgpack object hook: msgpack-numpy's array, scalar and complex maps (its bytes keys), safely."""
    if b"nd" in obj:
        if obj.get(b"kind") == b"O":
            raise WireError("object arrays are refused (msgpack-numpy sends them pickled)")
        data = obj.get(b"data")
        if not isinstance(data, bytes):
            raise WireError("a numpy array's data must be bytes")
        dtype = _dtype(obj.get(b"type"))
        if obj[b"nd"] is False:  # a numpy scalar
            if len(data) != dtype.itemsize:
                raise WireError(f"a {dtype} scalar needs {dtype.itemsize} bytes, got {len(data)}")
            return np.frombuffer(data, dtype=dtype)[0]
        if obj[b"nd"] is not True:
            raise WireError("a numpy map's 'nd' must be true or false")
        shape = obj.get(b"shape")
        if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
            raise WireError(f"a numpy array's shape must be a list of non-negative integers, got {shape!r:.80}")
        n = math.prod(shape)
        if n * dtype.itemsize != len(data) or (n and not dtype.itemsize):  # no huge arrays of 0-byte items
            raise WireError(f"a {dtype} array of shape {tuple(shape)} does not match its {len(data)} bytes")
        return np.ndarray(buffer=data, dtype=dtype, shape=shape).copy()  # writable, as pickle gave them
    if b"complex" in obj:
        text = obj.get(b"data")
        if not isinstance(text, str | bytes) or len(text) > 128:
            raise WireError("a complex number must be a short string")
        return complex(text.decode() if isinstance(text, bytes) else text)
    return obj


def deserialize(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> dict:
    """The body of one 0MQ message (what `RemoteDispatcher` passes after the prefix and name) -> the
    document. Raises `WireError` for an oversize body, bytes that are not exactly one msgpack value,
    a malformed numpy array, an object array, or a value that is not a map with string keys."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireError(f"expected the message body as bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise WireError(f"message body of {len(data)} bytes is over the {max_bytes}-byte limit")
    try:
        doc = msgpack.unpackb(data, object_hook=_decode, raw=False, strict_map_key=False)
    except WireError:
        raise
    except msgpack.StackError:
        raise WireError("not a msgpack document: nested too deeply") from None
    except Exception as e:  # msgpack's ExtraData/FormatError, bad UTF-8, numpy's dtype/shape errors
        raise WireError(f"not a msgpack document: {type(e).__name__}: {str(e) or 'malformed':.200}") from None
    if not isinstance(doc, dict):
        raise WireError(f"expected a document (a map), got {type(doc).__name__}")
    bad = next((k for k in doc if not isinstance(k, str)), None)
    if bad is not None:
        raise WireError(f"a document's keys must be strings, got {type(bad).__name__} {bad!r:.40}")
    return doc
