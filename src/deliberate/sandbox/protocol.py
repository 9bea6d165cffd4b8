"""The wire between the checker and the candidate: length-prefixed JSON frames of plain data.

Both sides import this file by path (it is bind-mounted read-only into the candidate's sandbox),
so it uses the standard library only. Plain data is None, bool, int, float, str, bytes, list,
tuple, dict and set, nested; :func:`encode` refuses anything else (``NotData``) and
:func:`decode` builds exactly those types, whatever bytes arrive. ``decode`` is the trust
boundary: the checker calls it on everything the candidate sends, so no object the candidate made
(an always-equal ``__eq__``, a subclass of ``int``) can ever reach the tests.
"""

from __future__ import annotations

import json
import math
import os
import struct

MAX_FRAME = 64 * 1024 * 1024  # one message, either way
MAX_DEPTH = 200
BIG_INT_BITS = 10_000  # ~3000 decimal digits, well under int_max_str_digits (4300)


class NotData(TypeError):
    """A value that is not plain data (what the candidate returned, or an argument the tests passed)."""


class ProtocolError(Exception):
    """A frame that is not well formed: cut short, too large, bad JSON or a bad encoding."""


def encode(value, depth: int = 0):
    """JSON-ready form of ``value``: scalars as themselves, containers tagged (``{"l": [...]}``)."""
    if depth > MAX_DEPTH:
        raise NotData("nested too deeply")
    t = type(value)
    if t is int and value.bit_length() > BIG_INT_BITS:
        return {"i": format(value, "x")}  # past JSON's decimal digit limit; hex has none
    if value is None or t is bool or t is int or t is str:
        return value
    if t is float:
        # JSON has no inf/nan; a tag keeps them exact (and -0.0 survives repr round trips)
        return value if math.isfinite(value) else {"x": repr(value)}
    if t is bytes:
        return {"b": value.hex()}
    if t is list or t is tuple or t is set:
        items = sorted(value, key=repr) if t is set else value  # sets: a stable order for the wire
        return {{list: "l", tuple: "t", set: "s"}[t]: [encode(v, depth + 1) for v in items]}
    if t is dict:
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    raise NotData(f"{t.__module__}.{t.__qualname__}" if t.__module__ != "builtins" else t.__qualname__)


def decode(obj, depth: int = 0):
    """The plain value that ``obj`` (parsed JSON) encodes; ``ProtocolError`` when it encodes none."""
    if depth > MAX_DEPTH:
        raise ProtocolError("nested too deeply")
    t = type(obj)
    if obj is None or t is bool or t is int or t is str or t is float:
        return obj
    if t is not dict or len(obj) != 1:
        raise ProtocolError(f"not an encoded value: {t.__name__}")
    (tag, body), = obj.items()
    try:
        if tag == "x" and body in ("inf", "-inf", "nan"):
            return float(body)
        if tag == "i" and type(body) is str:
            return int(body, 16)
        if tag == "b" and type(body) is str:
            return bytes.fromhex(body)
        if tag in ("l", "t", "s") and type(body) is list:
            items = [decode(v, depth + 1) for v in body]
            return items if tag == "l" else tuple(items) if tag == "t" else set(items)
        if tag == "d" and type(body) is list:
            out = {}
            for pair in body:
                if type(pair) is not list or len(pair) != 2:
                    raise ProtocolError("a dict entry is not a [key, value] pair")
                out[decode(pair[0], depth + 1)] = decode(pair[1], depth + 1)
            return out
    except (TypeError, ValueError) as e:  # an unhashable key or set item, bad hex
        raise ProtocolError(f"bad {tag!r} value: {e}") from None
    raise ProtocolError(f"unknown tag {tag!r}")


def send(fd: int, message: dict) -> None:
    """Write one frame: 4-byte big-endian length, then the message as UTF-8 JSON."""
    body = json.dumps(message, allow_nan=False).encode("ascii")  # ASCII: lone surrogates survive as escapes
    if len(body) > MAX_FRAME:
        raise NotData(f"message of {len(body)} bytes is over the {MAX_FRAME}-byte limit")
    data = struct.pack(">I", len(body)) + body
    while data:
        n = os.write(fd, data)
        data = data[n:]


def read_exactly(fd: int, n: int) -> bytes | None:
    """``n`` bytes from ``fd``; None at end of file before the first byte."""
    chunks, got = [], 0
    while got < n:
        b = os.read(fd, min(n - got, 1 << 20))
        if not b:
            if got == 0:
                return None
            raise ProtocolError("frame cut short")
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def receive(fd: int) -> dict | None:
    """Read one frame; None when the other side closed before sending one."""
    head = read_exactly(fd, 4)
    if head is None:
        return None
    (size,) = struct.unpack(">I", head)
    if size > MAX_FRAME:
        raise ProtocolError(f"frame of {size} bytes is over the {MAX_FRAME}-byte limit")
    body = read_exactly(fd, size) if size else b""
    if body is None:
        raise ProtocolError("frame cut short")
    try:
        msg = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ProtocolError(f"bad JSON: {str(e)[:200]}") from None
    if type(msg) is not dict:
        raise ProtocolError("a frame is not a JSON object")
    return msg
