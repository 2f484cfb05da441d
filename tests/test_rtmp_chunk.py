"""Tests for wcsgw.rtmp.chunk."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from wcsgw.rtmp.chunk import (
    MSG_AMF0_COMMAND,
    MSG_AUDIO,
    MSG_VIDEO,
    ChunkDecoder,
    ChunkEncoder,
    RtmpMessage,
    abort_message,
    set_chunk_size_message,
)


def msg(csid: int, type_id: int, ts: int, payload: bytes, stream_id: int = 1) -> RtmpMessage:
    return RtmpMessage(csid, type_id, ts, stream_id, payload)


def media_sequence() -> list[RtmpMessage]:
    """Audio and video on two chunk streams, sizes from tiny to several chunks, varied deltas."""
    out = []
    for index in range(40):
        out.append(msg(6, MSG_VIDEO, index * 40, bytes([index]) * (index * 997 % 9000 + 1)))
        out.append(msg(4, MSG_AUDIO, index * 23, bytes([index, 1]) * 100))
    out.append(msg(5, 18, 1000, b"script" * 10))
    out.append(msg(6, MSG_VIDEO, 10, b"backwards"))  # timestamp going back: fmt 0 again
    out.append(msg(6, MSG_VIDEO, 10, b"other stream", stream_id=2))
    return out


class EncoderTests(SynchronousTestCase):
    def test_fmt0_first(self) -> None:
        """The first message on a chunk stream has a full 11-byte header (fmt 0)."""
        encoded = ChunkEncoder().encode(RtmpMessage(3, MSG_AMF0_COMMAND, 0x010203, 0x04, b"hello"))
        self.assertEqual(encoded, b"\x03\x01\x02\x03\x00\x00\x05\x14\x04\x00\x00\x00hello")

    def test_header_compression(self) -> None:
        """fmt 1 when length or type change, fmt 2 when only the delta changes, fmt 3 when nothing does."""
        encoder = ChunkEncoder()
        encoder.encode(msg(4, MSG_AUDIO, 100, b"aaaa"))
        self.assertEqual(encoder.encode(msg(4, MSG_AUDIO, 120, b"bbbb")), b"\x84\x00\x00\x14bbbb")
        self.assertEqual(encoder.encode(msg(4, MSG_AUDIO, 140, b"cccc")), b"\xc4cccc")
        self.assertEqual(encoder.encode(msg(4, MSG_AUDIO, 150, b"dddd")), b"\x84\x00\x00\x0adddd")
        self.assertEqual(
            encoder.encode(msg(4, MSG_AUDIO, 160, b"eeeee")), b"\x44\x00\x00\x0a\x00\x00\x05\x08eeeee"
        )
        self.assertEqual(
            encoder.encode(msg(4, MSG_VIDEO, 170, b"fffff")), b"\x44\x00\x00\x0a\x00\x00\x05\x09fffff"
        )

    def test_fmt0_again_on_stream_change_or_backwards(self) -> None:
        """Another message stream id, or a timestamp going backwards, needs fmt 0."""
        encoder = ChunkEncoder()
        encoder.encode(msg(4, MSG_AUDIO, 100, b"a"))
        self.assertEqual(encoder.encode(msg(4, MSG_AUDIO, 90, b"a"))[0] >> 6, 0)
        self.assertEqual(encoder.encode(msg(4, MSG_AUDIO, 95, b"a", stream_id=2))[0] >> 6, 0)

    def test_split_into_chunks(self) -> None:
        """A message longer than the chunk size continues in fmt 3 chunks."""
        chunks = ChunkEncoder().chunks(msg(6, MSG_VIDEO, 0, bytes(300)))
        self.assertEqual([len(c) for c in chunks], [12 + 128, 1 + 128, 1 + 44])
        self.assertEqual(chunks[1][0], 0xC6)

    def test_extended_timestamp(self) -> None:
        """Timestamps >= 0xFFFFFF use the extended field, repeated in continuation chunks."""
        chunks = ChunkEncoder().chunks(msg(6, MSG_VIDEO, 0x01000000, bytes(200)))
        self.assertEqual(chunks[0][1:4], b"\xff\xff\xff")
        self.assertEqual(chunks[0][12:16], b"\x01\x00\x00\x00")
        self.assertEqual(chunks[1][:5], b"\xc6\x01\x00\x00\x00")
        self.assertEqual(len(chunks[1]), 5 + 72)

    def test_exactly_0xffffff_is_extended(self) -> None:
        """The value 0xFFFFFF itself is sent in the extended field."""
        encoded = ChunkEncoder().encode(msg(6, MSG_VIDEO, 0xFFFFFF, b"x"))
        self.assertEqual(encoded[1:4], b"\xff\xff\xff")
        self.assertEqual(encoded[12:16], b"\x00\xff\xff\xff")

    def test_extended_delta(self) -> None:
        """A delta >= 0xFFFFFF goes in the extended field of a fmt 2 header."""
        encoder = ChunkEncoder()
        encoder.encode(msg(6, MSG_VIDEO, 1, b"x"))
        self.assertEqual(
            encoder.encode(msg(6, MSG_VIDEO, 0x01000001, b"y")), b"\x86\xff\xff\xff\x01\x00\x00\x00y"
        )

    def test_chunk_stream_id_forms(self) -> None:
        """Chunk stream ids use the 1-, 2- and 3-byte basic header forms."""
        cases = {
            2: b"\x02",
            63: b"\x3f",
            64: b"\x00\x00",
            319: b"\x00\xff",
            320: b"\x01\x00\x01",
            65599: b"\x01\xff\xff",
        }
        for csid, header in cases.items():
            encoded = ChunkEncoder().encode(msg(csid, MSG_AUDIO, 0, b"z"))
            self.assertEqual(encoded[: len(header)], header, csid)

    def test_set_chunk_size(self) -> None:
        """set_chunk_size() encodes the message at the old size and switches to the new one."""
        encoder = ChunkEncoder()
        self.assertEqual(
            encoder.set_chunk_size(4096), b"\x02\x00\x00\x00\x00\x00\x04\x01\x00\x00\x00\x00\x00\x00\x10\x00"
        )
        self.assertEqual(encoder.chunk_size, 4096)
        self.assertEqual(len(encoder.chunks(msg(6, MSG_VIDEO, 0, bytes(5000)))), 2)

    def test_invalid_values(self) -> None:
        """Out-of-range chunk sizes, chunk stream ids, timestamps and lengths are refused."""
        with self.assertRaises(ValueError):
            ChunkEncoder(0)
        with self.assertRaises(ValueError):
            set_chunk_size_message(0x80000000)
        with self.assertRaises(ValueError):
            msg(1, MSG_AUDIO, 0, b"")
        with self.assertRaises(ValueError):
            msg(65600, MSG_AUDIO, 0, b"")
        with self.assertRaises(ValueError):
            msg(4, MSG_AUDIO, 1 << 32, b"")
        with self.assertRaises(ValueError):
            msg(4, MSG_AUDIO, 0, bytes(0x1000000))


class MediaChunksTests(SynchronousTestCase):
    def test_pieces_are_the_encoding_without_copying_the_payload(self) -> None:
        """``media_chunks`` gives the bytes ``encode`` gives for the same message, as chunk headers and parts of
        the payload that are the payload itself or views of it, with their size in all; below, at and above the
        chunk size, on the boundaries, with extended timestamps."""
        cases = [(1, 0), (100, 40), (4096, 80), (4097, 120), (8192, 160), (8193, 0x1000000), (20000, 0x1000028)]
        for chunk_size in (128, 4096):
            media, reference = ChunkEncoder(), ChunkEncoder()
            if chunk_size != 128:
                media.set_chunk_size(chunk_size)
                reference.set_chunk_size(chunk_size)
            for length, ts in cases:
                payload = bytes(range(256)) * (length // 256) + bytes(length % 256)
                pieces, size = media.media_chunks(6, MSG_VIDEO, ts, 1, payload)
                expected = reference.encode(msg(6, MSG_VIDEO, ts, payload))
                self.assertEqual(b"".join(pieces), expected, (chunk_size, length))
                self.assertEqual(size, len(expected), (chunk_size, length))
                for piece in pieces[1::2]:  # headers, then payload parts
                    self.assertTrue(piece is payload or (isinstance(piece, memoryview) and piece.obj is payload))

    def test_fields_are_checked(self) -> None:
        encoder = ChunkEncoder()
        for args in ((1, MSG_VIDEO, 0, 1, b"x"), (6, 256, 0, 1, b"x"), (6, MSG_VIDEO, -1, 1, b"x"),
                     (6, MSG_VIDEO, 0, 2**32, b"x")):
            self.assertRaises(ValueError, encoder.media_chunks, *args)


class RoundTripTests(SynchronousTestCase):
    def round_trip(
        self, chunk_size: int, messages: list[RtmpMessage], step: int | None = None
    ) -> list[RtmpMessage]:
        encoder = ChunkEncoder()
        decoder = ChunkDecoder()
        data = b""
        if chunk_size != 128:
            data += encoder.set_chunk_size(chunk_size)
        data += b"".join(encoder.encode(m) for m in messages)
        if step is None:
            received = decoder.feed(data)
        else:
            received = []
            for start in range(0, len(data), step):
                received += decoder.feed(data[start : start + step])
        self.assertEqual(decoder.buffered, 0)
        return [m for m in received if m.chunk_stream_id != 2]

    def test_chunk_size_128(self) -> None:
        """Messages survive encoding and decoding at the default chunk size of 128."""
        messages = media_sequence()
        self.assertEqual(self.round_trip(128, messages), messages)

    def test_chunk_size_4096(self) -> None:
        """Messages survive encoding and decoding at chunk size 4096 (applied mid-stream)."""
        messages = media_sequence()
        self.assertEqual(self.round_trip(4096, messages), messages)

    def test_chunk_size_65536(self) -> None:
        """Messages survive encoding and decoding at chunk size 65536."""
        messages = media_sequence() + [msg(6, MSG_VIDEO, 5000, bytes(200_000))]
        self.assertEqual(self.round_trip(65536, messages), messages)

    def test_fed_in_small_pieces(self) -> None:
        """Input split at arbitrary points (7 bytes at a time) decodes the same."""
        messages = media_sequence()[:20]
        self.assertEqual(self.round_trip(128, messages, step=7), messages)

    def test_extended_timestamps(self) -> None:
        """Absolute and delta timestamps at and above 0xFFFFFF survive, including fmt 3 continuations."""
        messages = [
            msg(6, MSG_VIDEO, 0xFFFFFE, bytes(300)),
            msg(6, MSG_VIDEO, 0xFFFFFF, bytes(300)),
            msg(6, MSG_VIDEO, 0x01000000, bytes(300)),
            msg(6, MSG_VIDEO, 0x02000001, bytes(300)),
            msg(6, MSG_VIDEO, 0xFFFFFFFF, bytes(300)),
            msg(4, MSG_AUDIO, 0xFFFFFFFF, bytes(10)),
        ]
        self.assertEqual(self.round_trip(128, messages), messages)

    def test_interleaved_chunk_streams(self) -> None:
        """Chunks of messages on different chunk streams may be interleaved."""
        encoder = ChunkEncoder()
        video = encoder.chunks(msg(6, MSG_VIDEO, 40, bytes(range(256)) * 3))
        audio = encoder.chunks(msg(4, MSG_AUDIO, 20, b"A" * 500))
        command = encoder.chunks(msg(3, MSG_AMF0_COMMAND, 0, b"C" * 10, stream_id=0))
        interleaved = [c for pair in itertools.zip_longest(video, audio, command) for c in pair if c]
        received = ChunkDecoder().feed(b"".join(interleaved))
        self.assertEqual(
            [(m.chunk_stream_id, len(m.payload)) for m in received], [(3, 10), (4, 500), (6, 768)]
        )
        self.assertEqual(received[2].payload, bytes(range(256)) * 3)

    def test_fmt3_new_message_reuses_delta(self) -> None:
        """A fmt 3 chunk starting a message repeats the previous delta, length and type."""
        encoder = ChunkEncoder()
        messages = [msg(4, MSG_AUDIO, ts, b"abcd") for ts in (0, 20, 40, 60, 80)]
        data = b"".join(encoder.encode(m) for m in messages)
        self.assertEqual(data.count(b"\xc4abcd"), 3)
        self.assertEqual(ChunkDecoder().feed(data), messages)

    def test_fmt3_after_fmt0_uses_timestamp_as_delta(self) -> None:
        """After a fmt 0 header, a fmt 3 message adds the fmt 0 timestamp again (FFmpeg's reading)."""
        data = b"\x04\x00\x00\x0a\x00\x00\x01\x08\x01\x00\x00\x00a" + b"\xc4b"
        self.assertEqual([m.timestamp for m in ChunkDecoder().feed(data)], [10, 20])

    @settings(max_examples=60, deadline=None)
    @given(
        st.sampled_from([1, 2, 128, 300, 4096, 65536]),
        st.lists(
            st.tuples(
                st.sampled_from([3, 4, 6, 64, 400]),
                st.sampled_from([MSG_AUDIO, MSG_VIDEO, 18]),
                st.integers(0, 0xFFFFFFFF),
                st.integers(0, 3),
                st.binary(max_size=700),
            ),
            max_size=12,
        ),
    )
    def test_any_messages(self, chunk_size: int, specs: list[tuple[int, int, int, int, bytes]]) -> None:
        """Any messages at any chunk size round-trip exactly."""
        messages = [RtmpMessage(c, t, ts, s, p) for c, t, ts, s, p in specs]
        self.assertEqual(self.round_trip(chunk_size, messages), messages)


class DecoderTests(SynchronousTestCase):
    def test_set_chunk_size_applies_immediately(self) -> None:
        """A Set Chunk Size from the peer changes how the very next chunk is read."""
        peer = ChunkEncoder()
        data = peer.set_chunk_size(1000) + peer.encode(msg(6, MSG_VIDEO, 0, bytes(900)))
        decoder = ChunkDecoder()
        received = decoder.feed(data)
        self.assertEqual(decoder.chunk_size, 1000)
        self.assertEqual([m.type_id for m in received], [1, MSG_VIDEO])

    def test_abort_discards_partial_message(self) -> None:
        """Abort Message drops the partly received message on that chunk stream."""
        peer = ChunkEncoder()
        first = peer.chunks(msg(6, MSG_VIDEO, 0, bytes(300)))
        decoder = ChunkDecoder()
        self.assertEqual(decoder.feed(first[0]), [])
        self.assertEqual([m.type_id for m in decoder.feed(peer.encode(abort_message(6)))], [2])
        # The next message on chunk stream 6 starts afresh.
        self.assertEqual(
            decoder.feed(peer.encode(msg(6, MSG_VIDEO, 0, b"new", stream_id=9)))[0].payload, b"new"
        )

    def test_first_chunk_not_fmt0(self) -> None:
        """A chunk stream must start with a fmt 0 header."""
        with self.assertRaises(ValueError) as caught:
            ChunkDecoder().feed(b"\x44\x00\x00\x00\x00\x00\x01\x08a")
        self.assertEqual(
            str(caught.exception), "chunk stream 4 starts with a fmt 1 header; the first must be fmt 0"
        )

    def test_new_header_mid_message(self) -> None:
        """A fmt 0/1/2 header while a message is incomplete is malformed."""
        partial = ChunkEncoder().chunks(msg(6, MSG_VIDEO, 0, bytes(300)))[0]
        with self.assertRaises(ValueError) as caught:
            ChunkDecoder().feed(partial + b"\x86\x00\x00\x01")
        self.assertEqual(
            str(caught.exception),
            "chunk stream 6: fmt 2 header in the middle of a message (128 of 300 bytes received)",
        )

    def test_bad_set_chunk_size(self) -> None:
        """Set Chunk Size of 0, with the top bit set, or of the wrong length is refused."""
        cases = {
            b"\x00\x00\x00\x00": "Set Chunk Size of 0 bytes",
            b"\x80\x00\x10\x00": "Set Chunk Size 0x80001000 has the reserved top bit set",
            b"\x00\x10": "Set Chunk Size payload is 2 bytes, expected 4",
        }
        for payload, message in cases.items():
            data = ChunkEncoder().encode(RtmpMessage(2, 1, 0, 0, payload))
            with self.assertRaises(ValueError) as caught:
                ChunkDecoder().feed(data)
            self.assertEqual(str(caught.exception), message)

    def test_failure_is_permanent(self) -> None:
        """After a malformed chunk every later feed fails: the stream cannot resynchronise."""
        decoder = ChunkDecoder()
        with self.assertRaises(ValueError):
            decoder.feed(b"\x44\x00\x00\x00\x00\x00\x01\x08a")
        with self.assertRaises(ValueError) as caught:
            decoder.feed(ChunkEncoder().encode(msg(4, MSG_AUDIO, 0, b"ok")))
        self.assertTrue(str(caught.exception).startswith("chunk stream already failed: "))

    def test_incomplete_input_waits(self) -> None:
        """A partial header or payload yields nothing until the rest arrives."""
        data = ChunkEncoder().encode(msg(320, MSG_AUDIO, 0x01000000, b"payload"))
        decoder = ChunkDecoder()
        for index in range(len(data) - 1):
            self.assertEqual(decoder.feed(data[index : index + 1]), [])
        self.assertEqual(decoder.feed(data[-1:])[0].payload, b"payload")

    def test_empty_message(self) -> None:
        """A zero-length message is delivered at once."""
        self.assertEqual(
            ChunkDecoder().feed(ChunkEncoder().encode(msg(4, MSG_AUDIO, 5, b""))), [msg(4, MSG_AUDIO, 5, b"")]
        )
