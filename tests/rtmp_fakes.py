"""A scripted RTMP server for unit tests, built from our own chunk codec and AMF0."""

from __future__ import annotations

from typing import Any

from wcsgw.rtmp import amf0
from wcsgw.rtmp.chunk import (
    LIMIT_TYPE_DYNAMIC,
    MSG_AMF0_COMMAND,
    ChunkDecoder,
    ChunkEncoder,
    RtmpMessage,
    set_peer_bandwidth_message,
    window_acknowledgement_size_message,
)
from wcsgw.rtmp.handshake import HANDSHAKE_SIZE

SERVER_S1 = bytes(8) + bytes(range(256)) * 5 + bytes(range(248))


class FakeRtmpServer:
    """The server side of one connection.

    ``receive(client_bytes)`` returns the server's answer. With ``auto`` it answers connect,
    createStream and publish like nginx-rtmp; ``publish_code`` and ``connect_error`` script
    refusals; ``answer_publish=False`` leaves publish unanswered.
    """

    def __init__(
        self,
        *,
        auto: bool = True,
        stream_id: float = 1.0,
        publish_code: str = "NetStream.Publish.Start",
        connect_error: bool = False,
        answer_publish: bool = True,
        chunk_size: int = 128,
    ) -> None:
        self.auto = auto
        self.stream_id = stream_id
        self.publish_code = publish_code
        self.connect_error = connect_error
        self.answer_publish = answer_publish
        self.encoder = ChunkEncoder()
        self.decoder = ChunkDecoder()
        self.messages: list[RtmpMessage] = []
        self.commands: list[list[Any]] = []
        self.c0c1 = b""
        self.c2 = b""
        self._buffer = bytearray()
        self._stage = "c0c1"
        self._chunk_size = chunk_size

    def receive(self, data: bytes) -> bytes:
        self._buffer += data
        out = bytearray()
        if self._stage == "c0c1":
            if len(self._buffer) < 1 + HANDSHAKE_SIZE:
                return b""
            self.c0c1 = bytes(self._buffer[: 1 + HANDSHAKE_SIZE])
            del self._buffer[: 1 + HANDSHAKE_SIZE]
            out += b"\x03" + SERVER_S1 + self.c0c1[1:]
            self._stage = "c2"
        if self._stage == "c2":
            if len(self._buffer) < HANDSHAKE_SIZE:
                return bytes(out)
            self.c2 = bytes(self._buffer[:HANDSHAKE_SIZE])
            del self._buffer[:HANDSHAKE_SIZE]
            self._stage = "chunks"
            if self._chunk_size != 128:
                out += self.encoder.set_chunk_size(self._chunk_size)
        if self._buffer:
            data, self._buffer = bytes(self._buffer), bytearray()
            for message in self.decoder.feed(data):
                self.messages.append(message)
                if message.type_id == MSG_AMF0_COMMAND:
                    values = amf0.decode(message.payload)
                    self.commands.append(values)
                    if self.auto:
                        out += self._answer(values)
        return bytes(out)

    def command(self, name: str, transaction: float, *args: Any, csid: int = 3, stream_id: int = 0) -> bytes:
        payload = amf0.encode(name, transaction, *args)
        return self.encoder.encode(RtmpMessage(csid, MSG_AMF0_COMMAND, 0, stream_id, payload))

    def send(self, message: RtmpMessage) -> bytes:
        return self.encoder.encode(message)

    def on_status(self, code: str, level: str = "status", description: str = "") -> bytes:
        info = {"level": level, "code": code, "description": description}
        return self.command("onStatus", 0.0, None, info, csid=5, stream_id=int(self.stream_id))

    def command_names(self) -> list[str]:
        return [values[0] for values in self.commands]

    def media(self) -> list[RtmpMessage]:
        return [m for m in self.messages if m.type_id in (8, 9, 18)]

    def _answer(self, values: list[Any]) -> bytes:
        name, transaction = values[0], values[1]
        if name == "connect":
            if self.connect_error:
                info = {"level": "error", "code": "NetConnection.Connect.Rejected", "description": "go away"}
                return self.command("_error", transaction, None, info)
            return (
                self.send(window_acknowledgement_size_message(5_000_000))
                + self.send(set_peer_bandwidth_message(5_000_000, LIMIT_TYPE_DYNAMIC))
                + self.command(
                    "_result",
                    transaction,
                    {"fmsVer": "FMS/3,0,1,123", "capabilities": 31.0},
                    {"level": "status", "code": "NetConnection.Connect.Success", "description": "ok"},
                )
            )
        if name == "createStream":
            return self.command("_result", transaction, None, self.stream_id)
        if name == "publish" and self.answer_publish:
            level = "status" if self.publish_code.endswith(".Start") else "error"
            return self.on_status(self.publish_code, level, f"{values[3]} answered {self.publish_code}")
        return b""


def pump(session: Any, server: FakeRtmpServer, rounds: int = 10) -> None:
    """Move bytes between a session and a fake server until both are quiet."""
    for _ in range(rounds):
        data = session.data_to_send()
        if not data:
            return
        reply = server.receive(data)
        if reply:
            session.receive_data(reply)


def drain_events(session: Any) -> list[Any]:
    events = []
    while (event := session.next_event()) is not None:
        events.append(event)
    return events
