"""The checker/candidate wire (deliberate.sandbox.protocol): plain data round-trips exactly, anything
else is refused on the way out, and whatever bytes arrive decode to plain data or a ProtocolError."""

from __future__ import annotations

import math
import os

import pytest

from deliberate.sandbox import protocol


@pytest.mark.parametrize("value", [
    None, True, 0, -7, 2 ** 70000, -(3 ** 20000), 1.5, -0.0, "héllo \udcff", b"\x00\xff", [], (), set(),
    [1, (2, "3"), {4, 5}, {"k": [None], 6: b"x", (7, 8): 1.0}], {i: 1 for i in range(3)},
], ids=lambda v: type(v).__name__)
def test_plain_data_round_trips(value):
    r, w = os.pipe()
    try:
        protocol.send(w, {"v": protocol.encode(value)})
        got = protocol.decode(protocol.receive(r)["v"])
    finally:
        os.close(r)
        os.close(w)
    assert got == value and type(got) is type(value)
    if isinstance(value, float):
        assert math.copysign(1, got) == math.copysign(1, value)


def test_non_finite_floats_are_exact():
    got = protocol.decode(protocol.encode([float("inf"), float("-inf"), float("nan")]))
    assert got[0] == math.inf and got[1] == -math.inf and math.isnan(got[2])


class Sneaky(int):
    def __eq__(self, other):
        return True


@pytest.mark.parametrize("value", [Sneaky(1), [object()], {"k": frozenset()}, lambda: 1, iter([]), 1j])
def test_anything_else_is_not_data(value):
    with pytest.raises(protocol.NotData):
        protocol.encode(value)


@pytest.mark.parametrize("wire", [
    [1], {"l": 3}, {"s": [{"l": []}]}, {"d": [[{"l": []}, 1]]}, {"d": [[1]]}, {"q": 1}, {"l": [], "t": []},
    {"b": "zz"}, {"x": "1e9"},
])
def test_malformed_encodings_are_protocol_errors(wire):
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(wire)


def test_garbled_frames_are_protocol_errors():
    for raw in (b"PASS 0000\n", b"\x00\x00\x00\x05{\"a\"", b"\x00\x00\x00\x02[]", b"\x00\x00\x00\x03\xff\xfe\xfd"):
        r, w = os.pipe()
        os.write(w, raw)
        os.close(w)
        try:
            with pytest.raises(protocol.ProtocolError):
                protocol.receive(r)
        finally:
            os.close(r)
