"""The RTMP client handshake (RTMP specification 1.0, section 5.2), simple form, version 3. Sans-I/O.

The client sends C0 (version) and C1 (time, four zero bytes, 1528 random bytes), waits for
S0 and S1, answers with C2 (an echo of S1), and is done once S2 has arrived. The zero bytes
in C1 ask servers such as nginx-rtmp for the plain handshake, without the digest scheme.
"""

from __future__ import annotations

import enum
import os
import struct
from collections.abc import Callable
from typing import Final

RTMP_VERSION: Final = 3
HANDSHAKE_SIZE: Final = 1536
_RANDOM_SIZE: Final = HANDSHAKE_SIZE - 8


class HandshakeState(enum.Enum):
    UNINITIALIZED = "uninitialized"
    VERSION_SENT = "version-sent"  # C0 and C1 sent, waiting for S0 and S1
    ACK_SENT = "ack-sent"  # C2 sent, waiting for S2
    HANDSHAKE_DONE = "handshake-done"


class ClientHandshake:
    """The client side of the handshake.

    ``epoch_ms`` goes in C1's time field; ``random_bytes`` (default ``os.urandom``) fills it.
    """

    def __init__(self, epoch_ms: int = 0, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self._epoch_ms = epoch_ms & 0xFFFFFFFF
        self._random_bytes = random_bytes
        self._buffer = bytearray()
        self._c1 = b""
        self.state = HandshakeState.UNINITIALIZED
        self.server_version: int | None = None
        self.s2_echoes_c1: bool | None = None
        """Whether S2 was an exact echo of C1 (informational: many servers differ, so it is not enforced)."""

    @property
    def done(self) -> bool:
        return self.state is HandshakeState.HANDSHAKE_DONE

    def start(self) -> bytes:
        """Return C0 + C1."""
        if self.state is not HandshakeState.UNINITIALIZED:
            raise RuntimeError("handshake already started")
        random = self._random_bytes(_RANDOM_SIZE)
        if len(random) != _RANDOM_SIZE:
            raise ValueError(f"random_bytes returned {len(random)} bytes, expected {_RANDOM_SIZE}")
        self._c1 = struct.pack(">II", self._epoch_ms, 0) + random
        self.state = HandshakeState.VERSION_SENT
        return bytes([RTMP_VERSION]) + self._c1

    def receive_data(self, data: bytes) -> tuple[bytes, bytes]:
        """Consume server bytes; return (bytes to send, bytes left over after S2).

        The left-over bytes are the start of the chunk stream. Raises ``ValueError`` when S0
        names another version.
        """
        if self.state is HandshakeState.UNINITIALIZED:
            raise RuntimeError("handshake not started")
        if self.state is HandshakeState.HANDSHAKE_DONE:
            return b"", bytes(data)
        self._buffer += data
        to_send = b""
        if self.state is HandshakeState.VERSION_SENT:
            if self._buffer and self.server_version is None:
                self.server_version = self._buffer[0]
                if self.server_version != RTMP_VERSION:
                    raise ValueError(f"server handshake version (S0) is {self.server_version}, expected 3")
            if len(self._buffer) < 1 + HANDSHAKE_SIZE:
                return b"", b""
            s1 = bytes(self._buffer[1 : 1 + HANDSHAKE_SIZE])
            del self._buffer[: 1 + HANDSHAKE_SIZE]
            to_send = s1  # C2 echoes S1 (time, time2 and random echo)
            self.state = HandshakeState.ACK_SENT
        if self.state is HandshakeState.ACK_SENT:
            if len(self._buffer) < HANDSHAKE_SIZE:
                return to_send, b""
            s2 = bytes(self._buffer[:HANDSHAKE_SIZE])
            self.s2_echoes_c1 = s2[8:] == self._c1[8:]
            leftover = bytes(self._buffer[HANDSHAKE_SIZE:])
            self._buffer.clear()
            self.state = HandshakeState.HANDSHAKE_DONE
            return to_send, leftover
        return to_send, b""  # pragma: no cover - every state is handled above
