"""Tests for wcsgw.rtmp.amf0."""

from __future__ import annotations

import datetime
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from wcsgw.rtmp import amf0
from wcsgw.rtmp.amf0 import UNDEFINED, EcmaArray, decode, decode_value, encode, encode_value

UTC = datetime.timezone.utc


class EncodeTests(SynchronousTestCase):
    def test_number(self) -> None:
        """Numbers (int or float) are marker 0x00 and a big-endian IEEE 754 double."""
        self.assertEqual(encode_value(1), b"\x00\x3f\xf0\x00\x00\x00\x00\x00\x00")
        self.assertEqual(encode_value(-2.5), b"\x00" + struct.pack(">d", -2.5))

    def test_boolean(self) -> None:
        """Booleans are marker 0x01 and one byte, not numbers (bool is an int subclass)."""
        self.assertEqual(encode_value(True), b"\x01\x01")
        self.assertEqual(encode_value(False), b"\x01\x00")

    def test_string(self) -> None:
        """Strings are marker 0x02, a 16-bit byte length and UTF-8."""
        self.assertEqual(encode_value("connect"), b"\x02\x00\x07connect")
        self.assertEqual(encode_value("é"), b"\x02\x00\x02\xc3\xa9")

    def test_long_string(self) -> None:
        """Strings over 65535 UTF-8 bytes use the long string marker 0x0C and a 32-bit length."""
        text = "x" * 65536
        self.assertEqual(encode_value(text)[:5], b"\x0c\x00\x01\x00\x00")
        self.assertEqual(encode_value("x" * 65535)[:3], b"\x02\xff\xff")

    def test_null_and_undefined(self) -> None:
        """None is null (0x05); UNDEFINED is undefined (0x06)."""
        self.assertEqual(encode(None, UNDEFINED), b"\x05\x06")

    def test_object(self) -> None:
        """A dict is an anonymous object: keys without markers, then empty key and 0x09."""
        self.assertEqual(
            encode_value({"a": 1.0}),
            b"\x03\x00\x01a\x00" + struct.pack(">d", 1.0) + b"\x00\x00\x09",
        )

    def test_ecma_array(self) -> None:
        """An EcmaArray is marker 0x08, a 32-bit count, properties and the object end."""
        self.assertEqual(
            encode_value(EcmaArray(b=False)),
            b"\x08\x00\x00\x00\x01\x00\x01b\x01\x00\x00\x00\x09",
        )

    def test_strict_array(self) -> None:
        """Lists and tuples are strict arrays: 0x0A, a 32-bit count and the values."""
        self.assertEqual(encode_value([None, "a"]), b"\x0a\x00\x00\x00\x02\x05\x02\x00\x01a")
        self.assertEqual(encode_value(()), b"\x0a\x00\x00\x00\x00")

    def test_date(self) -> None:
        """Dates are 0x0B, milliseconds since the epoch as a double, and a zero time zone."""
        when = datetime.datetime(2020, 1, 2, 3, 4, 5, 6000, tzinfo=UTC)
        millis = (when - datetime.datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1000
        self.assertEqual(encode_value(when), b"\x0b" + struct.pack(">d", millis) + b"\x00\x00")

    def test_naive_date_refused(self) -> None:
        """A naive datetime cannot be encoded: AMF0 dates are UTC."""
        with self.assertRaises(ValueError) as caught:
            encode_value(datetime.datetime(2020, 1, 1))
        self.assertEqual(str(caught.exception), "AMF0 date must be timezone-aware (AMF0 dates are UTC)")

    def test_unsupported_type(self) -> None:
        """Values with no AMF0 form raise ValueError naming the type."""
        with self.assertRaises(ValueError) as caught:
            encode_value(b"bytes")
        self.assertEqual(str(caught.exception), "cannot encode bytes as AMF0")

    def test_non_string_key(self) -> None:
        """Object keys must be strings."""
        with self.assertRaises(ValueError) as caught:
            encode_value({1: 2})
        self.assertEqual(str(caught.exception), "AMF0 object keys must be str, not int")

    def test_empty_key(self) -> None:
        """An empty key would read as the object end, so it is refused."""
        with self.assertRaises(ValueError):
            encode_value({"": 1})

    def test_too_deep(self) -> None:
        """Nesting beyond MAX_DEPTH is refused instead of recursing without bound."""
        value: list[object] = []
        for _ in range(amf0.MAX_DEPTH + 2):
            value = [value]
        with self.assertRaises(ValueError):
            encode_value(value)


class DecodeTests(SynchronousTestCase):
    def test_sequence(self) -> None:
        """decode() returns every value of a command body in order."""
        body = encode("_result", 1.0, {"fmsVer": "FMS/3"}, {"code": "NetConnection.Connect.Success"})
        self.assertEqual(
            decode(body), ["_result", 1.0, {"fmsVer": "FMS/3"}, {"code": "NetConnection.Connect.Success"}]
        )

    def test_decode_value_offset(self) -> None:
        """decode_value() returns the value and the offset after it."""
        self.assertEqual(decode_value(b"\x05\x01\x01", 1), (True, 3))

    def test_ecma_array_type_kept(self) -> None:
        """An ECMA array decodes to an EcmaArray, so it re-encodes the same way."""
        data = encode_value(EcmaArray(duration=1.5, encoder="x"))
        value = decode(data)[0]
        self.assertIsInstance(value, EcmaArray)
        self.assertEqual(encode_value(value), data)

    def test_date(self) -> None:
        """A date decodes to an aware UTC datetime."""
        when = datetime.datetime(2021, 6, 1, 12, 0, tzinfo=UTC)
        self.assertEqual(decode(encode_value(when)), [when])

    def test_undefined(self) -> None:
        """Undefined decodes to the UNDEFINED singleton."""
        self.assertIs(decode(b"\x06")[0], UNDEFINED)

    def test_truncated_number(self) -> None:
        """A number with fewer than 8 bytes is reported with its offset."""
        with self.assertRaises(ValueError) as caught:
            decode(b"\x05\x00\x3f\xf0")
        self.assertEqual(str(caught.exception), "AMF0 truncated: number at offset 2 needs 8 bytes, 2 left")

    def test_truncated_string(self) -> None:
        """A string shorter than its length prefix is reported."""
        with self.assertRaises(ValueError) as caught:
            decode(b"\x02\x00\x05abc")
        self.assertEqual(str(caught.exception), "AMF0 truncated: string at offset 3 needs 5 bytes, 3 left")

    def test_truncated_object(self) -> None:
        """An object without its end marker is truncated."""
        with self.assertRaises(ValueError) as caught:
            decode(b"\x03\x00\x01a\x05")
        self.assertEqual(
            str(caught.exception), "AMF0 truncated: property name length at offset 5 needs 2 bytes, 0 left"
        )

    def test_unknown_marker(self) -> None:
        """A marker outside the specification is reported in hex with its offset."""
        with self.assertRaises(ValueError) as caught:
            decode(b"\x05\x42")
        self.assertEqual(str(caught.exception), "unknown AMF0 marker 0x42 at offset 1")

    def test_unsupported_marker(self) -> None:
        """Known but unsupported markers (reference, typed object, AMF3 switch...) are named."""
        with self.assertRaises(ValueError) as caught:
            decode(b"\x07\x00\x01")
        self.assertEqual(str(caught.exception), "unsupported AMF0 marker 0x07 (reference) at offset 0")
        with self.assertRaises(ValueError) as caught:
            decode(b"\x11")
        self.assertEqual(str(caught.exception), "unsupported AMF0 marker 0x11 (avmplus-object) at offset 0")

    def test_object_end_outside_object(self) -> None:
        """The object-end marker on its own is an error."""
        with self.assertRaises(ValueError) as caught:
            decode(b"\x09")
        self.assertEqual(str(caught.exception), "AMF0 object-end marker outside an object at offset 0")

    def test_empty_key_without_end(self) -> None:
        """An empty property name must be followed by the object-end marker."""
        with self.assertRaises(ValueError) as caught:
            decode(b"\x03\x00\x00\x05")
        self.assertEqual(
            str(caught.exception),
            "AMF0 empty property name at offset 1 not followed by the object-end marker (found 0x05)",
        )

    def test_invalid_utf8(self) -> None:
        """Strings that are not UTF-8 are refused."""
        with self.assertRaises(ValueError) as caught:
            decode(b"\x02\x00\x01\xff")
        self.assertEqual(
            str(caught.exception), "AMF0 string at offset 3 is not valid UTF-8: invalid start byte"
        )

    def test_strict_array_count_too_large(self) -> None:
        """A strict array declaring more items than bytes left fails before allocating them."""
        with self.assertRaises(ValueError) as caught:
            decode(b"\x0a\xff\xff\xff\xff\x05")
        self.assertEqual(
            str(caught.exception),
            "AMF0 truncated: strict array at offset 0 declares 4294967295 items, only 1 bytes left",
        )

    def test_nesting_limit(self) -> None:
        """Deeply nested input is refused with the offset where the limit was passed."""
        data = b"\x0a\x00\x00\x00\x01" * (amf0.MAX_DEPTH + 2) + b"\x05"
        with self.assertRaises(ValueError) as caught:
            decode(data)
        self.assertIn("nesting deeper than 64 levels", str(caught.exception))

    def test_non_finite_date(self) -> None:
        """A date that is not a finite number is refused."""
        with self.assertRaises(ValueError) as caught:
            decode(b"\x0b" + struct.pack(">d", float("nan")) + b"\x00\x00")
        self.assertEqual(str(caught.exception), "AMF0 date at offset 0 is not a finite number")


_scalars = st.one_of(
    st.none(),
    st.just(UNDEFINED),
    st.booleans(),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.datetimes(
        min_value=datetime.datetime(1900, 1, 1),
        max_value=datetime.datetime(2200, 1, 1),
        timezones=st.just(UTC),
    ).map(lambda d: d.replace(microsecond=(d.microsecond // 1000) * 1000)),
)
_keys = st.text(min_size=1, max_size=8)
_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(_keys, children, max_size=4),
        st.dictionaries(_keys, children, max_size=4).map(EcmaArray),
    ),
    max_leaves=20,
)


class RoundTripTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(st.lists(_values, max_size=5))
    def test_round_trip(self, values: list[object]) -> None:
        """Any sequence of supported values decodes to what was encoded."""
        self.assertEqual(decode(encode(*values)), values)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=64))
    def test_garbage_raises_only_value_error(self, data: bytes) -> None:
        """Arbitrary bytes either decode or raise ValueError, never another exception."""
        try:
            decode(data)
        except ValueError:
            pass
