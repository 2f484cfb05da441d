"""RtmpPublisher against a real nginx-rtmp, read back with ffprobe while publishing."""

from __future__ import annotations

import datetime
import json
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import protocol, ssl, task, threads
from twisted.internet import reactor as _reactor
from twisted.protocols.portforward import ProxyFactory
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.trial.unittest import SkipTest, TestCase

from tests.e2e.nginx import NginxRtmp, free_port
from tests.rtmp_media import av_tags
from wcsgw.model import RtmpStreamStatus
from wcsgw.rtmp.flv import FlvTag, TagType
from wcsgw.rtmp.publisher import RtmpPublisher

WAIT = RtmpStreamStatus.RTMP_STREAM_WAIT
ACTIVE = RtmpStreamStatus.RTMP_STREAM_ACTIVE
LOST = RtmpStreamStatus.RTMP_CONNECTION_LOST
FAILED = RtmpStreamStatus.RTMP_CONNECTION_FAILED

reactor: Any = _reactor  # the real reactor: this is an integration test
CLIP_SECONDS = 2
_clip: list[FlvTag] | None = None


async def clip() -> list[FlvTag]:
    """Two seconds of H.264 (320x240, keyframe every second, frames of several RTMP chunks) and AAC.

    Encoded once, off the reactor thread.
    """
    global _clip
    if _clip is None:
        _clip = await threads.deferToThread(av_tags, CLIP_SECONDS, width=320, height=240, noisy_rows=60)
    return _clip


class _Collect(protocol.ProcessProtocol):
    def __init__(self, done: Deferred[tuple[bytes, bytes, int | None]]) -> None:
        self.done = done
        self.out: list[bytes] = []
        self.err: list[bytes] = []

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Any) -> None:
        self.done.callback((b"".join(self.out), b"".join(self.err), reason.value.exitCode))


async def run_process(args: Sequence[str], timeout: float) -> tuple[bytes, bytes, int | None]:
    """Run a program without blocking the reactor; kill it after ``timeout`` seconds."""
    done: Deferred[tuple[bytes, bytes, int | None]] = Deferred()
    process = reactor.spawnProcess(_Collect(done), args[0], list(args), env=None)

    def kill() -> None:
        try:
            process.signalProcess("KILL")
        except Exception:
            pass

    killer = reactor.callLater(timeout, kill)
    try:
        return await done
    finally:
        if killer.active():
            killer.cancel()


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await sleep(0.05)


def self_signed_localhost() -> tuple[bytes, bytes]:
    """A throw-away certificate (PEM) and key (PEM) for ``localhost``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


class Feeder:
    """Writes the clip to a publisher in real time, looping it with continuous timestamps."""

    def __init__(self, publisher: RtmpPublisher, tags: list[FlvTag]) -> None:
        self._publisher = publisher
        self._headers = [t for t in tags if t.is_sequence_header or t.tag_type == TagType.SCRIPT]
        self._media = [t for t in tags if t not in self._headers]
        self._index = 0
        self._offset = 0
        self._start = reactor.seconds()
        self._loop = task.LoopingCall(self._tick)

    def start(self) -> None:
        for tag in self._headers:
            self._publisher.write(tag)
        self._loop.start(0.02)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _tick(self) -> None:
        elapsed_ms = (reactor.seconds() - self._start) * 1000
        while True:
            if self._index == len(self._media):
                self._index = 0
                self._offset += CLIP_SECONDS * 1000
            tag = self._media[self._index]
            timestamp = tag.timestamp_ms + self._offset
            if timestamp > elapsed_ms:
                return
            self._publisher.write(
                FlvTag(tag.tag_type, timestamp, tag.body, tag.is_keyframe, tag.is_sequence_header)
            )
            self._index += 1


class RtmpNginxTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        for tool in ("ffprobe",):
            if shutil.which(tool) is None:
                raise SkipTest(f"{tool} is not installed (Debian: apt-get install ffmpeg)")
        self.nginx = NginxRtmp.create(self)
        self.nginx.start()

    def publisher(self, url: str, name: str, **kwargs: Any) -> tuple[RtmpPublisher, list[RtmpStreamStatus]]:
        statuses: list[RtmpStreamStatus] = []
        publisher = RtmpPublisher(
            reactor, url, name, on_status=lambda status, reason: statuses.append(status), **kwargs
        )
        self.addCleanup(publisher.stop)
        return publisher, statuses

    async def feed(self, publisher: RtmpPublisher) -> Feeder:
        feeder = Feeder(publisher, await clip())
        self.addCleanup(feeder.stop)
        feeder.start()
        return feeder

    async def probe(self, name: str) -> dict[str, int]:
        """Read two seconds of the live stream with ffprobe; return frames decoded per stream type."""
        out, err, code = await run_process(
            [
                shutil.which("ffprobe") or "ffprobe",
                "-v",
                "error",
                "-read_intervals",
                "%+2",
                "-count_frames",
                "-show_entries",
                "stream=codec_type,codec_name,nb_read_frames",
                "-of",
                "json",
                self.nginx.play_url(name),
            ],
            timeout=30,
        )
        self.assertEqual((code, err.decode(errors="replace")), (0, ""))
        streams = json.loads(out)["streams"]
        return {f"{s['codec_type']}:{s['codec_name']}": int(s.get("nb_read_frames", 0)) for s in streams}

    def test_publish_and_read_back(self) -> Deferred[None]:
        """A published stream is readable live: H.264 and AAC present, frames decode without errors.

        A second publisher of the same name is refused (NetStream.Publish.BadName) -> FAILED.
        """

        async def run() -> None:
            publisher, statuses = self.publisher(self.nginx.rtmp_url("live"), "call1")
            publisher.start()
            await self.feed(publisher)
            await wait_for(lambda: ACTIVE in statuses, 15, "RTMP_STREAM_ACTIVE")
            frames = await self.probe("call1")
            self.assertEqual(set(frames), {"video:h264", "audio:aac"})
            self.assertGreater(frames["video:h264"], 10)
            self.assertGreater(frames["audio:aac"], 20)

            second, second_statuses = self.publisher(self.nginx.rtmp_url("live"), "call1")
            second.start()
            await wait_for(lambda: FAILED in second_statuses, 15, "the duplicate publisher to fail")
            self.assertEqual(second_statuses, [WAIT, FAILED])

            self.assertEqual(statuses, [WAIT, ACTIVE])
            await publisher.stop()
            self.assertGreater(publisher.stats.bytes_sent, 10_000)
            self.assertEqual(publisher.stats.reconnects, 0)

        return ensureDeferred(run())

    def test_server_restart(self) -> Deferred[None]:
        """nginx restarted mid-stream: LOST, then ACTIVE again, and the stream is readable again."""

        async def run() -> None:
            publisher, statuses = self.publisher(
                self.nginx.rtmp_url("live"), "call2", reconnect_delays=(0.5, 1, 1, 2, 2, 4)
            )
            publisher.start()
            await self.feed(publisher)
            await wait_for(lambda: ACTIVE in statuses, 15, "RTMP_STREAM_ACTIVE")
            await sleep(1)
            await threads.deferToThread(self.nginx.restart)
            await wait_for(lambda: statuses.count(ACTIVE) == 2, 30, "RTMP_STREAM_ACTIVE after the restart")
            self.assertEqual(statuses, [WAIT, ACTIVE, LOST, ACTIVE])
            self.assertGreaterEqual(publisher.stats.reconnects, 1)
            frames = await self.probe("call2")
            self.assertEqual(set(frames), {"video:h264", "audio:aac"})
            self.assertGreater(frames["video:h264"], 10)

        return ensureDeferred(run())

    def test_publish_refused(self) -> Deferred[None]:
        """An application that refuses publishing (on_publish answered 403) gives FAILED, no retry."""

        async def run() -> None:
            publisher, statuses = self.publisher(self.nginx.rtmp_url("refuse"), "call3")
            publisher.start()
            await wait_for(lambda: FAILED in statuses, 15, "RTMP_CONNECTION_FAILED")
            self.assertEqual(statuses, [WAIT, FAILED])
            self.assertEqual(publisher.stats.reconnects, 0)

        return ensureDeferred(run())

    def test_unreachable(self) -> Deferred[None]:
        """A port nobody listens on gives FAILED once the retries are used up."""

        async def run() -> None:
            url = f"rtmp://127.0.0.1:{free_port()}/live"
            publisher, statuses = self.publisher(url, "call4", reconnect_delays=(0.1, 0.2, 0.3))
            publisher.start()
            await wait_for(lambda: FAILED in statuses, 15, "RTMP_CONNECTION_FAILED")
            self.assertEqual(statuses, [WAIT, FAILED])
            self.assertEqual(publisher.stats.reconnects, 3)

        return ensureDeferred(run())

    def test_rtmps(self) -> Deferred[None]:
        """rtmps:// publishes over TLS (a TLS-terminating proxy in front of nginx), certificate checked."""

        async def run() -> None:
            certificate_pem, key_pem = self_signed_localhost()
            server_options = ssl.PrivateCertificate.loadPEM(certificate_pem + key_pem).options()
            proxy = reactor.listenSSL(
                0, ProxyFactory("127.0.0.1", self.nginx.rtmp_port), server_options, interface="127.0.0.1"
            )
            self.addCleanup(proxy.stopListening)
            client_options = ssl.optionsForClientTLS(
                "localhost", trustRoot=ssl.Certificate.loadPEM(certificate_pem)
            )
            url = f"rtmps://localhost:{proxy.getHost().port}/live"
            publisher, statuses = self.publisher(url, "call5", tls_options=client_options)
            publisher.start()
            await self.feed(publisher)
            await wait_for(lambda: ACTIVE in statuses, 15, "RTMP_STREAM_ACTIVE over TLS")
            frames = await self.probe("call5")
            self.assertEqual(set(frames), {"video:h264", "audio:aac"})
            started = time.monotonic()
            await publisher.stop()
            self.assertLess(time.monotonic() - started, 2.0, "TLS close waited for the stop timeout")

        return ensureDeferred(run())
