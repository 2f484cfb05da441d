"""AMF0 encoding and decoding (Adobe "Action Message Format -- AMF 0", December 2007).

Python values map to AMF0 types as follows:

============================  ===========================================
Python                        AMF0
============================  ===========================================
``float`` / ``int``           number (IEEE 754 double)
``bool``                      boolean
``str``                       string, or long string above 65535 bytes
``dict`` (str keys)           anonymous object
:class:`EcmaArray`            ECMA array (a ``dict`` subclass)
``list`` / ``tuple``          strict array
``None``                      null
:data:`UNDEFINED`             undefined
``datetime.datetime``         date (milliseconds since the epoch, UTC)
============================  ===========================================

Decoding is strict: truncated input, unknown or unsupported markers and malformed
structures raise ``ValueError`` with the offset of the problem.
"""

from __future__ import annotations

import datetime
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Final

# Type markers, named as in section 2.1 of the AMF0 specification.
NUMBER_MARKER: Final = 0x00
BOOLEAN_MARKER: Final = 0x01
STRING_MARKER: Final = 0x02
OBJECT_MARKER: Final = 0x03
MOVIECLIP_MARKER: Final = 0x04
NULL_MARKER: Final = 0x05
UNDEFINED_MARKER: Final = 0x06
REFERENCE_MARKER: Final = 0x07
ECMA_ARRAY_MARKER: Final = 0x08
OBJECT_END_MARKER: Final = 0x09
STRICT_ARRAY_MARKER: Final = 0x0A
DATE_MARKER: Final = 0x0B
LONG_STRING_MARKER: Final = 0x0C
UNSUPPORTED_MARKER: Final = 0x0D
RECORDSET_MARKER: Final = 0x0E
XML_DOCUMENT_MARKER: Final = 0x0F
TYPED_OBJECT_MARKER: Final = 0x10
AVMPLUS_OBJECT_MARKER: Final = 0x11

_UNSUPPORTED_NAMES: Final = {
    MOVIECLIP_MARKER: "movieclip",
    REFERENCE_MARKER: "reference",
    UNSUPPORTED_MARKER: "unsupported",
    RECORDSET_MARKER: "recordset",
    XML_DOCUMENT_MARKER: "xml-document",
    TYPED_OBJECT_MARKER: "typed-object",
    AVMPLUS_OBJECT_MARKER: "avmplus-object",
}

MAX_DEPTH: Final = 64
"""Deepest nesting of objects and arrays accepted by the decoder."""

_U16_MAX: Final = 0xFFFF
_U32_MAX: Final = 0xFFFFFFFF
_EPOCH: Final = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


class _Undefined:
    """The AMF0 ``undefined`` value (distinct from ``null``/``None``)."""

    _instance: _Undefined | None = None

    def __new__(cls) -> _Undefined:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNDEFINED"

    def __bool__(self) -> bool:
        return False


UNDEFINED: Final = _Undefined()


class EcmaArray(dict[str, Any]):
    """An AMF0 ECMA array: an associative array, encoded with marker 0x08."""

    def __repr__(self) -> str:
        return f"EcmaArray({dict.__repr__(self)})"


# --------------------------------------------------------------------------- encoding


def encode(*values: Any) -> bytes:
    """Encode each value in turn and return the concatenation."""
    out = bytearray()
    for value in values:
        _encode_into(out, value, 0)
    return bytes(out)


def encode_value(value: Any) -> bytes:
    """Encode one value."""
    out = bytearray()
    _encode_into(out, value, 0)
    return bytes(out)


def _encode_utf8(out: bytearray, text: str) -> None:
    """Append a UTF-8 string with a 16-bit length (no marker), as used for object keys."""
    raw = text.encode("utf-8")
    if len(raw) > _U16_MAX:
        raise ValueError(f"AMF0 object key of {len(raw)} bytes exceeds 65535 bytes")
    out += struct.pack(">H", len(raw))
    out += raw


def _encode_properties(out: bytearray, mapping: Mapping[Any, Any], depth: int) -> None:
    for key, item in mapping.items():
        if not isinstance(key, str):
            raise ValueError(f"AMF0 object keys must be str, not {type(key).__name__}")
        if key == "":
            raise ValueError("AMF0 object key must not be empty (it would read as the object end)")
        _encode_utf8(out, key)
        _encode_into(out, item, depth + 1)
    out += b"\x00\x00"
    out.append(OBJECT_END_MARKER)


def _encode_into(out: bytearray, value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"AMF0 value nests deeper than {MAX_DEPTH} levels")
    if value is None:
        out.append(NULL_MARKER)
    elif value is UNDEFINED:
        out.append(UNDEFINED_MARKER)
    elif isinstance(value, bool):
        out.append(BOOLEAN_MARKER)
        out.append(1 if value else 0)
    elif isinstance(value, (int, float)):
        out.append(NUMBER_MARKER)
        out += struct.pack(">d", float(value))
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        if len(raw) <= _U16_MAX:
            out.append(STRING_MARKER)
            out += struct.pack(">H", len(raw))
        elif len(raw) <= _U32_MAX:
            out.append(LONG_STRING_MARKER)
            out += struct.pack(">I", len(raw))
        else:  # pragma: no cover - needs 4 GiB of text
            raise ValueError("AMF0 string longer than 4294967295 bytes")
        out += raw
    elif isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            raise ValueError("AMF0 date must be timezone-aware (AMF0 dates are UTC)")
        millis = (value - _EPOCH) / datetime.timedelta(milliseconds=1)
        out.append(DATE_MARKER)
        out += struct.pack(">dh", millis, 0)
    elif isinstance(value, EcmaArray):
        out.append(ECMA_ARRAY_MARKER)
        out += struct.pack(">I", len(value))
        _encode_properties(out, value, depth)
    elif isinstance(value, Mapping):
        out.append(OBJECT_MARKER)
        _encode_properties(out, value, depth)
    elif isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        out.append(STRICT_ARRAY_MARKER)
        out += struct.pack(">I", len(value))
        for item in value:
            _encode_into(out, item, depth + 1)
    else:
        raise ValueError(f"cannot encode {type(value).__name__} as AMF0")


# --------------------------------------------------------------------------- decoding


def decode(data: bytes) -> list[Any]:
    """Decode every value in ``data`` (a command or data message body)."""
    values: list[Any] = []
    offset = 0
    while offset < len(data):
        value, offset = decode_value(data, offset)
        values.append(value)
    return values


def decode_value(data: bytes, offset: int = 0) -> tuple[Any, int]:
    """Decode one value at ``offset``; return it and the offset just after it."""
    return _Decoder(data).value(offset, 0)


class _Decoder:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def _need(self, offset: int, size: int, what: str) -> None:
        have = len(self._data) - offset
        if have < size:
            raise ValueError(
                f"AMF0 truncated: {what} at offset {offset} needs {size} bytes, {max(have, 0)} left"
            )

    def _utf8(self, offset: int, size: int, what: str) -> str:
        self._need(offset, size, what)
        raw = self._data[offset : offset + size]
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"AMF0 {what} at offset {offset} is not valid UTF-8: {exc.reason}") from None

    def _short_string(self, offset: int, what: str) -> tuple[str, int]:
        self._need(offset, 2, f"{what} length")
        (size,) = struct.unpack_from(">H", self._data, offset)
        return self._utf8(offset + 2, size, what), offset + 2 + size

    def value(self, offset: int, depth: int) -> tuple[Any, int]:
        if depth > MAX_DEPTH:
            raise ValueError(f"AMF0 nesting deeper than {MAX_DEPTH} levels at offset {offset}")
        self._need(offset, 1, "type marker")
        marker = self._data[offset]
        start = offset
        offset += 1
        if marker == NUMBER_MARKER:
            self._need(offset, 8, "number")
            (number,) = struct.unpack_from(">d", self._data, offset)
            return number, offset + 8
        if marker == BOOLEAN_MARKER:
            self._need(offset, 1, "boolean")
            return self._data[offset] != 0, offset + 1
        if marker == STRING_MARKER:
            return self._short_string(offset, "string")
        if marker == LONG_STRING_MARKER:
            self._need(offset, 4, "long string length")
            (size,) = struct.unpack_from(">I", self._data, offset)
            return self._utf8(offset + 4, size, "long string"), offset + 4 + size
        if marker == NULL_MARKER:
            return None, offset
        if marker == UNDEFINED_MARKER:
            return UNDEFINED, offset
        if marker == OBJECT_MARKER:
            obj: dict[str, Any] = {}
            return obj, self._properties(obj, offset, depth)
        if marker == ECMA_ARRAY_MARKER:
            self._need(offset, 4, "ECMA array count")
            array = EcmaArray()
            return array, self._properties(array, offset + 4, depth)
        if marker == STRICT_ARRAY_MARKER:
            self._need(offset, 4, "strict array count")
            (count,) = struct.unpack_from(">I", self._data, offset)
            offset += 4
            if count > len(self._data) - offset:
                raise ValueError(
                    f"AMF0 truncated: strict array at offset {start} declares {count} items,"
                    f" only {len(self._data) - offset} bytes left"
                )
            items = []
            for _ in range(count):
                item, offset = self.value(offset, depth + 1)
                items.append(item)
            return items, offset
        if marker == DATE_MARKER:
            self._need(offset, 10, "date")
            millis, _timezone = struct.unpack_from(">dh", self._data, offset)
            if not math.isfinite(millis):
                raise ValueError(f"AMF0 date at offset {start} is not a finite number")
            try:
                when = _EPOCH + datetime.timedelta(milliseconds=millis)
            except OverflowError:
                raise ValueError(f"AMF0 date at offset {start} is out of range: {millis} ms") from None
            return when, offset + 10
        if marker == OBJECT_END_MARKER:
            raise ValueError(f"AMF0 object-end marker outside an object at offset {start}")
        if marker in _UNSUPPORTED_NAMES:
            raise ValueError(
                f"unsupported AMF0 marker 0x{marker:02x} ({_UNSUPPORTED_NAMES[marker]}) at offset {start}"
            )
        raise ValueError(f"unknown AMF0 marker 0x{marker:02x} at offset {start}")

    def _properties(self, target: dict[str, Any], offset: int, depth: int) -> int:
        """Read key/value pairs up to the empty key + object-end marker; return the offset after it."""
        while True:
            key, after_key = self._short_string(offset, "property name")
            if key == "":
                self._need(after_key, 1, "object-end marker")
                if self._data[after_key] != OBJECT_END_MARKER:
                    raise ValueError(
                        f"AMF0 empty property name at offset {offset} not followed by the"
                        f" object-end marker (found 0x{self._data[after_key]:02x})"
                    )
                return after_key + 1
            value, offset = self.value(after_key, depth + 1)
            target[key] = value
