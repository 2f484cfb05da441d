"""
Settings: one table of every setting, read from a ``.properties`` file and overridden by the command line.

The table (``SETTINGS``) is the single source of truth: the embedded defaults, the parser of each value, the
comment printed in ``etc/wcsgw.properties`` and the command-line option that overrides it.  Names follow
Flashphoner WCS's ``flashphoner.properties`` where WCS has the setting (``media_port_from``, ``rtp_in_buffer``,
``disable_streaming_proxy``, ``ip``, ``ip_local``, ``codecs``, ...).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """A setting could not be read; the message names the setting (and the file and line when there is one)."""


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _parse_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip(), 10)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise ValueError(f"expected an integer from {low} to {high}, got {value}")
        return value

    return parse


def _parse_float(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
        if not low <= value <= high:
            raise ValueError(f"expected a number from {low:g} to {high:g}, got {value:g}")
        return value

    return parse


def _parse_choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
        return value

    return parse


def _parse_address(text: str) -> str:
    """An IPv4/IPv6 literal or an empty string (meaning: choose automatically)."""
    value = text.strip()
    if value:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"expected an IP address, got {text!r}") from None
    return value


_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")


def _parse_host(text: str) -> str:
    """An IP literal or a DNS host name, or empty (meaning: choose automatically)."""
    value = text.strip()
    if value:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if not _HOST_RE.match(value) or len(value) > 253:
                raise ValueError(f"expected an IP address or host name, got {text!r}") from None
    return value


def _parse_http_url(text: str) -> str:
    value = text.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL, got {text!r}")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"bad port in URL {text!r}") from None
    return value.rstrip("/")


def _parse_text(text: str) -> str:
    return text.strip()


def _parse_delays(text: str) -> tuple[float, ...]:
    """A comma-separated list of delays in seconds (an empty list disables retries)."""
    value = text.strip()
    if not value:
        return ()
    delays = []
    for item in value.split(","):
        try:
            delay = float(item)
        except ValueError:
            raise ValueError(f"expected comma-separated seconds, got {text!r}") from None
        if not 0 < delay <= 3600:
            raise ValueError(f"each delay must be above 0 and at most 3600 seconds, got {item.strip()!r}")
        delays.append(delay)
    return tuple(delays)


#: Codec names of WCS's ``codecs`` setting that the gateway knows, in offer order.
KNOWN_CODECS = ("alaw", "ulaw", "opus", "speex16", "speex", "telephone-event", "h264", "vp8")


def _parse_codecs(text: str) -> tuple[str, ...]:
    names = tuple(item.strip().lower() for item in text.split(",") if item.strip())
    for name in names:
        if name not in KNOWN_CODECS:
            raise ValueError(f"unknown codec {name!r} (known: {', '.join(KNOWN_CODECS)})")
    if len(set(names)) != len(names):
        raise ValueError("a codec is listed twice")
    return names


def _parse_activity(text: str) -> tuple[bool, int]:
    """WCS's ``rtp_activity_detecting``: ``true,60`` (detect, seconds) or ``false``."""
    head, _, tail = text.strip().partition(",")
    enabled = _parse_bool(head)
    seconds = _parse_int(1, 86400)(tail) if tail.strip() else 60
    return (enabled, seconds)


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], bool):
        return f"{_format(value[0])},{value[1]}"
    if isinstance(value, tuple):
        return ",".join(f"{item:g}" if isinstance(item, float) else str(item) for item in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting: its name in the properties file, parser, default, one-line comment, and CLI option if any."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    comment: str
    option: str | None = None

    def default_text(self) -> str:
        return _format(self.default)


SETTINGS: tuple[Setting, ...] = (
    Setting("profile", _parse_choice("dev", "production"), "dev",
            "dev: HTTP REST without auth; production: adds HTTPS and HTTP Basic auth on every REST request",
            "profile"),
    Setting("rest_address", _parse_address, "",
            "REST bind address; empty: 127.0.0.1 in the dev profile, 0.0.0.0 (all) in production"),
    Setting("rest_port", _parse_int(0, 65535), 8081, "REST over HTTP (both profiles)", "rest-port"),
    Setting("https_port", _parse_int(0, 65535), 8444, "REST over HTTPS (production profile)", "https-port"),
    Setting("tls_cert_file", _parse_text, "",
            "PEM certificate for HTTPS; empty: a self-signed one generated into state_dir on first start"),
    Setting("tls_key_file", _parse_text, "", "PEM private key for tls_cert_file"),
    Setting("state_dir", _parse_text, "var",
            "where the generated certificate and the REST credentials live (relative to the working directory)",
            "state-dir"),
    Setting("callapp_url", _parse_http_url, "http://localhost:9091/CallApp",
            "CallApp: status events are POSTed to <callapp_url>/CallStatusEvent", "callapp-url"),
    Setting("callapp_retry_delays", _parse_delays, (0.5, 1.0, 2.0, 4.0),
            "seconds between retries of an event the CallApp receiver did not take (empty: no retries)"),
    Setting("callapp_queue_limit", _parse_int(1, 10000), 64,
            "events waiting per call; beyond it the oldest waiting one is dropped (counted, logged)"),
    Setting("ended_call_ttl", _parse_float(0, 86400), 60.0,
            "seconds an ended call stays visible to call/find with its final status"),
    Setting("ip_local", _parse_address, "0.0.0.0", "SIP and media (RTP) bind address", "sip-address"),
    Setting("ip", _parse_host, "",
            "public address written into SDP and Contact; empty: the local address that routes to the far end",
            "public-address"),
    Setting("sip_port", _parse_int(0, 65535), 5060, "UDP port of the SIP user agent", "sip-port"),
    Setting("user_agent", _parse_text, "wcsgw/0.1", "User-Agent header of SIP requests"),
    Setting("media_port_from", _parse_int(1024, 65534), 31001, "first UDP port of the RTP/RTCP range"),
    Setting("media_port_to", _parse_int(1025, 65535), 32000, "last UDP port of the RTP/RTCP range"),
    Setting("codecs", _parse_codecs, KNOWN_CODECS,
            "codecs offered to the SIP side, in order of preference (WCS names)"),
    Setting("dtmf", _parse_choice("rfc2833", "info"), "rfc2833",
            "DTMF method of call/send_dtmf when the request names no type"),
    Setting("rtp_in_buffer", _parse_bool, True,
            "jitter buffer on incoming RTP (reorders, keeps audio and video in step)"),
    Setting("rtp_activity_detecting", _parse_activity, (True, 60),
            "end a call FAILED_BY_RTP_ACTIVITY after this many seconds without incoming RTP"),
    Setting("disable_streaming_proxy", _parse_bool, False,
            "true: re-encode H.264 video instead of passing it through (WCS's fix for Wowza freezes)"),
    Setting("rtp_in_buffer_ms", _parse_int(10, 2000), 150,
            "jitter buffer depth: how long a missing RTP packet is waited for, in milliseconds"),
    Setting("media_read_interval_ms", _parse_int(0, 100), 40,
            "read the media sockets every this many ms, all at once (0: whenever one is readable): a packet waits "
            "up to this long, and batches cost less CPU per packet (bench, alternate runs against 10 ms: 17 % less "
            "CPU in all at 50 calls and 10 % at 100, for an RTMP p99 latency of 46-58 ms instead of 22-65)",
            "media-read-interval-ms"),
    Setting("media_read_interval_light_ms", _parse_int(0, 100), 60,
            "while the reads take little of the reactor's time (under 18 %, measured each second; back above 16 % "
            "measured at this interval, about 19 % at the other), read the media sockets this many ms apart instead "
            "(0, or not longer than media_read_interval_ms: never): with few calls a read costs much the same "
            "whether it finds little or much (10 calls of the bench: 24-34 % less CPU than reads 10 and 20 ms "
            "apart, for an RTMP p99 latency of about 60 ms)",
            "media-read-interval-light-ms"),
    Setting("media_read_interval_quiet_ms", _parse_int(0, 100), 80,
            "while the reads at media_read_interval_light_ms take very little of the reactor's time (under 4.5 %, "
            "about 15 calls of the bench; back above 6 % measured at this interval, about 22 calls), read the media "
            "sockets this many ms apart instead (0, or not longer than media_read_interval_light_ms: never): 80 "
            "against 60 (the gateway alone, seven runs each, taking turns) measured 10 % less CPU at 10 calls and 17 % "
            "at one, for an RTMP p99 latency of 48-85 ms instead of 49-61, set by where the reads fall among the "
            "frames (with more calls a read takes longer itself: 80 ms at 30 and 50 calls reached 85-99 ms)",
            "media-read-interval-quiet-ms"),
    Setting("media_audio_batch_ms", _parse_int(0, 100), 40,
            "a call's audio RTP socket is read only once this many ms and half of media_read_interval_ms have passed "
            "since the last read (its packets wait in the kernel meanwhile, up to this plus media_read_interval_ms: "
            "with 40 and 40, every other read; 0: at every read; nothing with media_read_interval_ms 0): half or a "
            "third as many reads and hand-overs, each of which costs as much as the packets in it; audio waits for "
            "128 ms AAC frames anyway. A G.711 call transcoded to AAC has its audio socket read instead when the AAC "
            "job being gathered can be complete (at most 0.5 s apart): a job's packets in one hand-over, its last "
            "one at most a read interval after it came",
            "media-audio-batch-ms"),
    Setting("media_kernel_timestamps", _parse_choice("false", "audio", "audio-each", "true"), "audio",
            "whose RTP and RTCP packets arrive at the kernel's receive time (jitter, RTCP round trips, RTP-to-RTMP "
            "latency) rather than the time of the read that found them, up to media_read_interval_ms later: "
            "true, every call's, each packet; audio-each, its audio's, each packet; audio, its audio's, the first "
            "RTP packet of each read (a G.711 call's audio is read about every 256 ms, 13 packets at a time) and "
            "the others' taken from it by their RTP timestamps, the interarrival jitter from the stamped packets "
            "only (the bench's PCMU jitter 0.9 ms, not 26 with reads 60 ms apart); false, none; each stamped "
            "packet costs 2-4 us more reactor CPU (the bench: true about 6 % more CPU in all at 100 calls; "
            "audio-each about 3 % more than audio at 50)"),
    Setting("rtp_keepalive", _parse_bool, True,
            "in sendrecv mode send silence RTP so that softphones with RTP inactivity timers keep the call"),
    Setting("sip_t1", _parse_float(0.05, 10), 0.5, "SIP timer T1 (RTT estimate) in seconds"),
    Setting("sip_t2", _parse_float(0.5, 60), 4.0, "SIP timer T2 (longest non-INVITE retransmit interval), seconds"),
    Setting("sip_t4", _parse_float(0.5, 60), 5.0, "SIP timer T4 (longest a message stays in the network), seconds"),
    Setting("rtmp_audio", _parse_choice("aac", "passthrough"), "aac",
            "RTMP audio: aac (transcode everything) or passthrough (G.711 and 16 kHz Speex as they are, others AAC)"),
    Setting("aac_sample_rate", _parse_choice("source", "8000", "16000", "22050", "32000", "44100", "48000"), "44100",
            "sample rate of the AAC audio sent to RTMP; source: the SIP codec's own (8000 for G.711: no resampling, "
            "the least CPU)", "aac-sample-rate"),
    Setting("aac_bitrate", _parse_int(0, 320_000), 0,
            "bits per second of the AAC audio; 0: by its sample rate (24000 at 8 kHz, 32000 at 16 kHz, 48000 up to "
            "32 kHz, 64000 at 44.1 and 48 kHz)"),
    Setting("aac_coder", _parse_choice("fast", "twoloop"), "fast",
            "FFmpeg's AAC coder: fast, or twoloop (FFmpeg's default: about twice the CPU; on speech-like audio at "
            "8 kHz and 24 kbit/s the bench measured 17.1 dB SNR for twoloop and 16.8 dB for fast)", "aac-coder"),
    Setting("aac_narrowband_cutoff_hz", _parse_int(0, 4000), 3400,
            "low-pass of the AAC encoder, in Hz, for 8 kHz sources (G.711, 8 kHz Speex), which carry the telephone "
            "band (300-3400 Hz); fewer bands to code: the encoder takes about 10 % less CPU at 8 kHz and 30 % less "
            "at 44.1 kHz, at the same bit rate; 0: FFmpeg's own (half the sample rate, up to 4 kHz)",
            "aac-narrowband-cutoff-hz"),
    Setting("aac_frames_per_job", _parse_int(1, 4), 2,
            "G.711 calls: AAC frames of audio (1024 samples each) gathered into one transcoding job; the encoder codes "
            "them back to back while its state is in the caches (100 calls of the bench, aac_sample_rate source: "
            "2 took 6 % less CPU in all than 1, the transcoding thread 11 % less), and a frame waits up to that many "
            "frames' time less one for the rest of its job (at 8 kHz, 128 ms per frame)", "aac-frames-per-job"),
    Setting("video_bitrate", _parse_int(100_000, 20_000_000), 1_500_000,
            "bits per second of re-encoded H.264 (VP8 calls, or disable_streaming_proxy=true)"),
    Setting("rtmp_reconnect_delays", _parse_delays, (1.0, 2.0, 4.0, 8.0, 15.0),
            "seconds between RTMP reconnect attempts; when all fail the destination is RTMP_CONNECTION_FAILED"),
    Setting("rtmp_chunk_size", _parse_int(128, 65536), 65536,
            "the RTMP chunk size we send with (Set Chunk Size, 128-65536): a tag up to this size goes as one chunk "
            "(720p H.264 frames at 1.5 Mbit/s: 7.5 KB, keyframes tens of KB); 65536 is the largest that servers "
            "such as SRS take; chunking a 7 KB frame took 0.75 us instead of 1.6 with 4096 (OBS's and FFmpeg's)",
            "rtmp-chunk-size"),
    Setting("transcode_threads", _parse_int(0, 64), 0,
            "threads shared by every call's transcoding (AAC, VP8 to H.264); 0: one per CPU core but one (the "
            "reactor's), at least one; many VP8 calls may want one per core"),
    Setting("transcode_batch_ms", _parse_int(0, 200), 20,
            "transcoding work waits up to this many ms and goes to the threads in batches, whose results come back "
            "together (0: each item at once); a thread's wake-up can cost as much CPU as encoding an AAC frame; "
            "work queued by a media read goes at the end of the read when this is not longer than the read interval",
            "transcode-batch-ms"),
    Setting("transcode_batch_light_ms", _parse_int(0, 200), 40,
            "while the media reads are light (media_read_interval_light_ms in force), transcoding work waits this "
            "long instead (0: transcode_batch_ms always; nothing when transcode_batch_ms is 0): with few calls a "
            "batch holds one or two AAC frames and the thread's wake-up costs as much (10 and 30 calls of the bench: "
            "5-9 % less CPU in all, the transcoding thread 13-24 % less; AAC reaches RTMP up to 20 ms later, "
            "behind the 128 ms a frame takes to fill)",
            "transcode-batch-light-ms"),
    Setting("transcode_results_with_reads", _parse_bool, True,
            "true: while the media reads are timed (media_read_interval_ms), the transcoding threads' results wait "
            "for the reactor's next read instead of waking it for a turn of their own (a wake-up costs 50-100 us of "
            "CPU on this machine; side by side in the bench: 8 % less CPU in all at 10 calls, 3 % at 50); AAC then "
            "reaches RTMP up to one read interval later. Re-encoded video (VP8 calls, disable_streaming_proxy) goes "
            "at once either way",
            "transcode-results-with-reads"),
    Setting("media_first", _parse_bool, True,
            "true: the transcoding threads start no work while the reactor reads and delivers RTP, so that they take "
            "the GIL from it less often (100 calls of the bench, alternate runs: RTMP p99 latency 160, 297, 257 ms "
            "against 337, 594, 1144 ms without)",
            "media-first"),
    Setting("realtime_priority", _parse_int(0, 99), 5,
            "the reactor thread (which reads all RTP and writes all RTMP) and the transcoding threads run at this "
            "real-time priority (SCHED_RR), ahead of the machine's normal threads; 0: normal priority. Needs "
            "CAP_SYS_NICE or LimitRTPRIO (without: a warning, normal priority). 100 calls of the bench on a busy "
            "machine held in 14 of 15 runs (RTMP p99 28-75 ms) against 3 of 13 at normal priority (45-658 ms), for "
            "the same CPU",
            "realtime-priority"),
    Setting("gc_freeze", _parse_bool, True,
            "true: once started, the garbage collector skips what start-up made (gc.freeze), so that a full "
            "collection, which stops every thread, scans only what calls made (100 calls of the bench: full "
            "collections of 46-110 ms every 5-10 s without, 22-46 ms with)", "gc-freeze"),
    Setting("gc_threshold", _parse_int(0, 10_000_000), 20_000,
            "allocations between collections of the youngest generation (0: Python's 700); higher lets the "
            "short-lived objects of media go before a collection sees them, so fewer reach the generations whose "
            "growth sets off full collections (100 calls of the bench, with gc_freeze: 17-23 ms of collections "
            "in 20 s and no full one, against 461-506 ms and two full ones with neither setting)",
            "gc-threshold"),
    Setting("srtp", _parse_bool, False,
            "offer SRTP (RTP/SAVP, SDES a=crypto) on every call; a callee written sips:NAME asks for it per call"),
    Setting("rtmp_failure_ends_call", _parse_bool, False,
            "true: a call whose own RTMP destination fails ends FAILED with info FAILED_BY_RTMP_WRITER_ERROR"),
)

_BY_NAME: dict[str, Setting] = {setting.name: setting for setting in SETTINGS}


@dataclasses.dataclass(frozen=True)
class Settings:
    """The effective settings of one gateway process (embedded defaults, then the file, then the command line)."""

    profile: str
    rest_address: str
    rest_port: int
    https_port: int
    tls_cert_file: str
    tls_key_file: str
    state_dir: str
    callapp_url: str
    callapp_retry_delays: tuple[float, ...]
    callapp_queue_limit: int
    ended_call_ttl: float
    ip_local: str
    ip: str
    sip_port: int
    user_agent: str
    media_port_from: int
    media_port_to: int
    codecs: tuple[str, ...]
    dtmf: str
    rtp_in_buffer: bool
    rtp_activity_detecting: tuple[bool, int]
    disable_streaming_proxy: bool
    rtp_in_buffer_ms: int
    media_read_interval_ms: int
    media_read_interval_light_ms: int
    media_read_interval_quiet_ms: int
    media_audio_batch_ms: int
    media_kernel_timestamps: str
    rtp_keepalive: bool
    sip_t1: float
    sip_t2: float
    sip_t4: float
    rtmp_audio: str
    aac_sample_rate: str
    aac_bitrate: int
    aac_coder: str
    aac_narrowband_cutoff_hz: int
    aac_frames_per_job: int
    video_bitrate: int
    rtmp_reconnect_delays: tuple[float, ...]
    rtmp_chunk_size: int
    transcode_threads: int
    transcode_batch_ms: int
    transcode_batch_light_ms: int
    transcode_results_with_reads: bool
    media_first: bool
    realtime_priority: int
    gc_freeze: bool
    gc_threshold: int
    srtp: bool
    rtmp_failure_ends_call: bool

    @property
    def production(self) -> bool:
        return self.profile == "production"

    @property
    def rest_bind_address(self) -> str:
        if self.rest_address:
            return self.rest_address
        return "0.0.0.0" if self.production else "127.0.0.1"


def defaults() -> dict[str, Any]:
    """The embedded defaults, by setting name."""
    return {setting.name: setting.default for setting in SETTINGS}


def parse_value(name: str, text: str) -> Any:
    """Parse one setting's text; raises ``ConfigError`` naming the setting."""
    setting = _BY_NAME.get(name)
    if setting is None:
        raise ConfigError(f"unknown setting {name!r}")
    try:
        return setting.parse(text)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def read_properties(text: str, path: str = "<string>") -> dict[str, Any]:
    """
    Read a ``.properties`` file: ``name=value`` (or ``name = value``) lines, ``#`` and ``!`` comments, blank lines.

    Every problem is reported as ``ConfigError("<path>:<line>: ...")``.
    """
    values: dict[str, Any] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"{path}:{lineno}: expected name=value, got {raw.strip()!r}")
        if name in values:
            raise ConfigError(f"{path}:{lineno}: {name} is set twice")
        try:
            values[name] = parse_value(name, value)
        except ConfigError as exc:
            raise ConfigError(f"{path}:{lineno}: {exc}") from None
    return values


def build_settings(*layers: Mapping[str, Any]) -> Settings:
    """Embedded defaults overlaid with each layer in turn (file, then command line); checks cross-field rules."""
    merged = defaults()
    for layer in layers:
        merged.update(layer)
    if merged["media_port_from"] >= merged["media_port_to"]:
        raise ConfigError(
            f"media_port_from ({merged['media_port_from']}) must be below media_port_to ({merged['media_port_to']})"
        )
    if bool(merged["tls_cert_file"]) != bool(merged["tls_key_file"]):
        raise ConfigError("tls_cert_file and tls_key_file must be given together")
    return Settings(**merged)


def render_properties(settings: Iterable[Setting] = SETTINGS) -> str:
    """The text of ``etc/wcsgw.properties``: every setting with its default and a one-line comment."""
    lines = [
        "# wcsgw settings: every setting with its embedded default.",
        "# Command-line options (twistd wcsgw --help) override this file.",
        "",
    ]
    for setting in settings:
        option = f" (--{setting.option})" if setting.option else ""
        lines.append(f"# {setting.comment}{option}")
        lines.append(f"{setting.name}={setting.default_text()}")
        lines.append("")
    return "\n".join(lines)
