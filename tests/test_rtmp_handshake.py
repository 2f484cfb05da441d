"""Tests for wcsgw.rtmp.handshake."""

from __future__ import annotations

import struct

from twisted.trial.unittest import SynchronousTestCase

from wcsgw.rtmp.handshake import HANDSHAKE_SIZE, ClientHandshake, HandshakeState


def fixed_random(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


S1 = struct.pack(">II", 777, 0) + bytes((i * 7 + 3) % 256 for i in range(HANDSHAKE_SIZE - 8))


class ClientHandshakeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.handshake = ClientHandshake(epoch_ms=0x1_0000_0005, random_bytes=fixed_random)
        self.c0c1 = self.handshake.start()

    def test_c0_c1(self) -> None:
        """C0 is version 3; C1 is the time (32 bits), four zero bytes and 1528 random bytes."""
        self.assertEqual(len(self.c0c1), 1 + HANDSHAKE_SIZE)
        self.assertEqual(self.c0c1[0], 3)
        self.assertEqual(self.c0c1[1:9], b"\x00\x00\x00\x05\x00\x00\x00\x00")
        self.assertEqual(self.c0c1[9:], fixed_random(HANDSHAKE_SIZE - 8))
        self.assertEqual(self.handshake.state, HandshakeState.VERSION_SENT)

    def test_c2_echoes_s1(self) -> None:
        """Once S0 and S1 are in, C2 is sent and echoes S1."""
        to_send, leftover = self.handshake.receive_data(b"\x03" + S1)
        self.assertEqual((to_send, leftover), (S1, b""))
        self.assertEqual(self.handshake.state, HandshakeState.ACK_SENT)
        self.assertFalse(self.handshake.done)

    def test_done_after_s2(self) -> None:
        """The handshake is done after S2; bytes after S2 are handed back."""
        self.handshake.receive_data(b"\x03" + S1)
        to_send, leftover = self.handshake.receive_data(self.c0c1[1:] + b"chunks")
        self.assertEqual((to_send, leftover), (b"", b"chunks"))
        self.assertTrue(self.handshake.done)
        self.assertTrue(self.handshake.s2_echoes_c1)

    def test_byte_by_byte(self) -> None:
        """The server's bytes may arrive one at a time."""
        server = b"\x03" + S1 + self.c0c1[1:]
        sent = b""
        for index in range(len(server)):
            to_send, leftover = self.handshake.receive_data(server[index : index + 1])
            sent += to_send
            self.assertEqual(leftover, b"")
        self.assertEqual(sent, S1)
        self.assertTrue(self.handshake.done)

    def test_all_at_once(self) -> None:
        """S0, S1, S2 and chunk data in one read give C2 and the left-over chunk data."""
        to_send, leftover = self.handshake.receive_data(b"\x03" + S1 + S1 + b"\x02")
        self.assertEqual((to_send, leftover), (S1, b"\x02"))
        self.assertFalse(self.handshake.s2_echoes_c1)

    def test_wrong_version(self) -> None:
        """An S0 other than 3 is a ValueError naming the version, raised at the first byte."""
        with self.assertRaises(ValueError) as caught:
            self.handshake.receive_data(b"\x06")
        self.assertEqual(str(caught.exception), "server handshake version (S0) is 6, expected 3")

    def test_after_done(self) -> None:
        """After the handshake, data passes straight through."""
        self.handshake.receive_data(b"\x03" + S1 + S1)
        self.assertEqual(self.handshake.receive_data(b"abc"), (b"", b"abc"))

    def test_misuse(self) -> None:
        """Starting twice, or receiving before starting, is a programming error."""
        with self.assertRaises(RuntimeError):
            self.handshake.start()
        with self.assertRaises(RuntimeError):
            ClientHandshake().receive_data(b"\x03")

    def test_random_size_checked(self) -> None:
        """A random source returning the wrong size is refused."""
        with self.assertRaises(ValueError):
            ClientHandshake(random_bytes=lambda n: b"x").start()
