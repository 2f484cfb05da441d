"""The inputs and outputs of a media stream session: negotiated parameters, local settings, events.

``MediaParams`` is what SDP negotiation produced for one media line; ``SessionConfig`` is our own configuration.
Events are plain frozen dataclasses; frames are ``AudioFrame``, ``h264.AccessUnit`` and ``vp8.Vp8Frame``, whose
``timestamp`` is the RTP timestamp extended past 32 bits (it starts at the stream's first RTP timestamp and keeps
growing across wrap-around; it restarts after ``StreamRestarted``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Union

from .h264 import AccessUnit
from .srtp import CryptoAttribute
from .stats import SenderReportInfo
from .vp8 import Vp8Frame

AUDIO = "audio"
VIDEO = "video"
SENDRECV = "sendrecv"
RECVONLY = "recvonly"
SENDONLY = "sendonly"
INACTIVE = "inactive"
DIRECTIONS = (SENDRECV, RECVONLY, SENDONLY, INACTIVE)
VIDEO_CODECS = ("H264", "VP8")

Address = tuple[str, int]
_OPUS_SILENCE = b"\xf8\xff\xfe"  # CELT-only, 20 ms, fullband, frame of silence (as WebRTC sends)


def _is_unspecified(host: str) -> bool:
    return ipaddress.ip_address(host).is_unspecified


_PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",  # RFC 1918
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",  # RFC 6598 carrier-grade NAT
        "127.0.0.0/8",
        "169.254.0.0/16",
        "fc00::/7",  # RFC 4193
        "fe80::/10",
        "::1/128",
    )
)


def is_private_address(host: str) -> bool:
    """Whether an SDP address is one a NAT would rewrite: RFC 1918, RFC 6598 (CGNAT), RFC 4193, loopback,
    link-local."""
    address = ipaddress.ip_address(host)
    return any(address in network for network in _PRIVATE_NETWORKS if network.version == address.version)


def silence_payload(codec: str, clock_rate: int, channels: int = 1) -> bytes | None:
    """20 ms of silence in ``codec``, or None when we cannot make it."""
    name = codec.upper()
    samples = clock_rate // 50
    if name == "PCMU":
        return b"\xff" * samples * channels
    if name == "PCMA":
        return b"\xd5" * samples * channels
    if name == "OPUS":
        return _OPUS_SILENCE
    return None


@dataclass(frozen=True)
class MediaParams:
    """One negotiated media line. ``direction`` is ours (``recvonly``: we only receive). Remote RTCP defaults to
    the RTP address and port + 1, or the RTP port itself with ``rtcp_mux``. ``local_crypto`` is the key we send
    with, ``remote_crypto`` the far end's; both or neither."""

    kind: str
    codec: str
    payload_type: int
    clock_rate: int
    remote_rtp_addr: str
    remote_rtp_port: int
    channels: int = 1
    fmtp: Mapping[str, str] = field(default_factory=dict, hash=False)
    telephone_event_pt: int | None = None
    telephone_event_clock_rate: int = 8000
    comfort_noise_pt: int | None = None
    remote_rtcp_addr: str | None = None
    remote_rtcp_port: int | None = None
    rtcp_mux: bool = False
    direction: str = SENDRECV
    remote_fir: bool = False
    remote_pli: bool = False
    remote_nack: bool = False
    local_crypto: CryptoAttribute | None = None
    remote_crypto: CryptoAttribute | None = None

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent field."""
        if self.kind not in (AUDIO, VIDEO):
            raise ValueError(f"media kind {self.kind!r} is neither audio nor video")
        if self.kind == VIDEO and self.codec.upper() not in VIDEO_CODECS:
            raise ValueError(f"video codec {self.codec!r} is not supported (H264, VP8)")
        for name in ("payload_type", "telephone_event_pt", "comfort_noise_pt"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 127:
                raise ValueError(f"{name} {value} is outside 0..127")
        if self.clock_rate <= 0 or self.telephone_event_clock_rate <= 0:
            raise ValueError("clock rates must be positive")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction {self.direction!r} is not one of {', '.join(DIRECTIONS)}")
        for name in ("remote_rtp_port", "remote_rtcp_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise ValueError(f"{name} {value} is outside 0..65535")
        for name in ("remote_rtp_addr", "remote_rtcp_addr"):
            value = getattr(self, name)
            if value is not None:
                try:
                    ipaddress.ip_address(value)
                except ValueError as exc:
                    raise ValueError(f"{name} {value!r} is not an IP address") from exc
        if (self.local_crypto is None) != (self.remote_crypto is None):
            raise ValueError("SRTP needs both local_crypto and remote_crypto")

    @property
    def remote_rtp(self) -> Address | None:
        """Where RTP goes, per SDP; None when the address is unspecified (0.0.0.0) or the port is 0."""
        if self.remote_rtp_port == 0 or _is_unspecified(self.remote_rtp_addr):
            return None
        return (self.remote_rtp_addr, self.remote_rtp_port)

    @property
    def remote_rtcp(self) -> Address | None:
        if self.rtcp_mux:
            return self.remote_rtp
        host = self.remote_rtcp_addr or self.remote_rtp_addr
        port = self.remote_rtcp_port if self.remote_rtcp_port is not None else self.remote_rtp_port + 1
        if self.remote_rtp_port == 0 or port == 0 or _is_unspecified(host):
            return None
        return (host, port)

    @property
    def receives(self) -> bool:
        return self.direction in (SENDRECV, RECVONLY)

    @property
    def sends(self) -> bool:
        return self.direction in (SENDRECV, SENDONLY)


@dataclass(frozen=True)
class SessionConfig:
    """Local settings of a media session (times in seconds unless named otherwise)."""

    cname: str = "wcsgw"
    rtp_in_buffer: bool = True
    jitter_buffer_ms: float = 150.0
    jitter_buffer_max_packets: int = 1000
    rtp_activity_timeout: float | None = 60.0
    keepalive: bool = True
    keepalive_interval: float = 1.0
    keyframe_request_min_interval: float = 0.5
    keyframe_request_retry_interval: float = 1.0
    keyframe_sip_info_after: int = 2
    drop_until_keyframe: bool = True
    rtcp_min_interval: float = 5.0
    dtmf_duration_ms: int = 160
    dtmf_volume: int = 10
    dtmf_packet_interval_ms: int = 20
    dtmf_gap_ms: int = 60


@dataclass(slots=True)
class AudioFrame:
    """One audio RTP payload, as received (codec frames, not decoded).  Made for every audio packet, so not frozen:
    a frozen dataclass costs 1.5 us to make here, this one 0.3 us."""

    timestamp: int
    payload: bytes
    payload_type: int
    arrival: float = field(default=0.0, compare=False)  # when the packet arrived


@dataclass(frozen=True)
class KeyframeNeeded:
    """We asked the far end for a keyframe (PLI, FIR if offered). With ``sip_info`` the call manager should also
    send a SIP INFO picture_fast_update (no RTCP feedback negotiated, or RTCP has not worked so far)."""

    reason: str
    attempt: int
    sip_info: bool


@dataclass(frozen=True)
class SenderReportReceived:
    """A sender report: ``extended_rtp_timestamp`` is its RTP timestamp on the frames' extended scale."""

    report: SenderReportInfo
    extended_rtp_timestamp: int


@dataclass(frozen=True)
class RtpInactivity:
    """No RTP for ``idle`` seconds while media was expected."""

    idle: float


@dataclass(frozen=True)
class StreamRestarted:
    """The far end changed SSRC or restarted its sequence numbers: timestamps restart too."""

    ssrc: int


@dataclass(frozen=True)
class DtmfReceived:
    """An RFC 4733 digit received (reported once, at its end)."""

    digit: str
    duration_ms: int


@dataclass(frozen=True)
class ByeReceived:
    ssrc: int
    reason: bytes | None


MediaEvent = Union[
    AudioFrame,
    AccessUnit,
    Vp8Frame,
    KeyframeNeeded,
    SenderReportReceived,
    RtpInactivity,
    StreamRestarted,
    DtmfReceived,
    ByeReceived,
]


@dataclass
class SessionCounters:
    """Everything a session dropped or did, for diagnostics."""

    rtp_datagrams: int = 0
    rtp_accepted: int = 0
    rtcp_datagrams: int = 0
    rtcp_accepted: int = 0
    dropped_unexpected_source: int = 0
    dropped_srtp: int = 0
    dropped_malformed: int = 0
    dropped_payload_type: int = 0
    dropped_not_receiving: int = 0
    dropped_late: int = 0
    dropped_duplicate: int = 0
    dropped_out_of_range: int = 0
    dropped_empty: int = 0
    comfort_noise: int = 0
    rtcp_dropped_unexpected_source: int = 0
    rtcp_dropped_srtp: int = 0
    rtcp_malformed: int = 0
    rtcp_unknown: int = 0
    depacketizer_errors: int = 0
    frames: int = 0
    keyframe_requests: int = 0
    pli_sent: int = 0
    fir_sent: int = 0
    rtcp_sent: int = 0
    keepalive_sent: int = 0
    dtmf_packets_sent: int = 0
    send_skipped_no_destination: int = 0
    feedback_received: int = 0
