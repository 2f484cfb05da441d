"""SDP for the gateway (RFC 4566, RFC 3264): our offer, the answer's negotiation, our answer to a re-offer.

The parser is strict where a mistake would mislead the media plane (version, origin, m= and c= syntax, rtpmap,
crypto) and tolerant of what real devices send (LF line ends, blank lines, missing t= or s=, unknown lines and
attributes, upper/lower case encoding names, ``;`` or ``; `` between fmtp parameters, static payload types without
rtpmap). Failures raise ``ValueError`` with a precise message.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import re
from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "MediaKind",
    "Direction",
    "Codec",
    "Crypto",
    "MediaOffer",
    "SessionOffer",
    "Origin",
    "MediaDescription",
    "SessionDescription",
    "NegotiatedMedia",
    "Negotiation",
    "DEFAULT_AUDIO_CODECS",
    "DEFAULT_VIDEO_CODECS",
    "DEFAULT_VIDEO_RTCP_FB",
    "STATIC_PAYLOAD_TYPES",
    "select_codecs",
    "build_offer",
    "build_answer",
    "negotiate",
    "is_hold",
]


class MediaKind(str, enum.Enum):
    AUDIO = "audio"
    VIDEO = "video"


class Direction(str, enum.Enum):
    """RFC 3264 section 5.1 direction attributes."""

    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"

    @property
    def sends(self) -> bool:
        return self in (Direction.SENDRECV, Direction.SENDONLY)

    @property
    def receives(self) -> bool:
        return self in (Direction.SENDRECV, Direction.RECVONLY)

    @classmethod
    def of(cls, sends: bool, receives: bool) -> Direction:
        if sends:
            return cls.SENDRECV if receives else cls.SENDONLY
        return cls.RECVONLY if receives else cls.INACTIVE


@dataclasses.dataclass(frozen=True)
class Codec:
    """One RTP payload format of an m-line.

    ``fmtp`` holds the ``a=fmtp`` parameters (keys in lower case, insertion order kept); a value without ``=`` (such
    as telephone-event's ``0-15``) is stored under the key ``""``. ``rtcp_fb`` holds the ``a=rtcp-fb`` values that
    apply to this payload type, wildcard ones included.
    """

    payload_type: int
    name: str
    clock_rate: int
    channels: int = 1
    fmtp: Mapping[str, str] = dataclasses.field(default_factory=dict, hash=False)
    rtcp_fb: frozenset[str] = frozenset()

    @property
    def packetization_mode(self) -> int:
        """H.264 packetization-mode (RFC 6184: 0 when absent)."""
        value = self.fmtp.get("packetization-mode", "0")
        return int(value) if value.isdigit() else 0

    def matches(self, other: Codec) -> bool:
        """The same format (name, clock rate, channels; H.264 also packetization mode)."""
        name = self.name.lower()
        if name != other.name.lower() or self.clock_rate != other.clock_rate:
            return False
        if name != "opus" and self.channels != other.channels:
            return False  # opus/48000 is always announced as 2 channels; some devices drop the /2
        if name == "h264":
            return self.packetization_mode == other.packetization_mode
        return True

    def format_fmtp(self) -> str | None:
        if not self.fmtp:
            return None
        return "; ".join(value if key == "" else f"{key}={value}" for key, value in self.fmtp.items())


#: RFC 3551 table 4 and 5: payload type -> (encoding name, clock rate, channels).
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("PCMU", 8000, 1),
    3: ("GSM", 8000, 1),
    4: ("G723", 8000, 1),
    5: ("DVI4", 8000, 1),
    6: ("DVI4", 16000, 1),
    7: ("LPC", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),
    10: ("L16", 44100, 2),
    11: ("L16", 44100, 1),
    12: ("QCELP", 8000, 1),
    13: ("CN", 8000, 1),
    14: ("MPA", 90000, 1),
    15: ("G728", 8000, 1),
    16: ("DVI4", 11025, 1),
    17: ("DVI4", 22050, 1),
    18: ("G729", 8000, 1),
    25: ("CelB", 90000, 1),
    26: ("JPEG", 90000, 1),
    28: ("nv", 90000, 1),
    31: ("H261", 90000, 1),
    32: ("MPV", 90000, 1),
    33: ("MP2T", 90000, 1),
    34: ("H263", 90000, 1),
}

#: What we offer for audio by default (WCS spells G.711 in lower case).
DEFAULT_AUDIO_CODECS: tuple[Codec, ...] = (
    Codec(8, "pcma", 8000),
    Codec(0, "pcmu", 8000),
    Codec(111, "opus", 48000, 2),
    Codec(98, "speex", 16000),
    Codec(97, "speex", 8000),
    Codec(101, "telephone-event", 8000, fmtp={"": "0-15"}),
)

#: What we offer for video by default.
DEFAULT_VIDEO_CODECS: tuple[Codec, ...] = (
    Codec(112, "H264", 90000, fmtp={"packetization-mode": "1", "profile-level-id": "42e01f"}),
    Codec(113, "H264", 90000, fmtp={"packetization-mode": "0", "profile-level-id": "42e01f"}),
    Codec(120, "VP8", 90000),
)

#: ``a=rtcp-fb:*`` values of our video offers.
DEFAULT_VIDEO_RTCP_FB: tuple[str, ...] = ("ccm fir", "nack", "nack pli")

TELEPHONE_EVENT = "telephone-event"


def select_codecs(codecs: Iterable[Codec], names: Iterable[str]) -> tuple[Codec, ...]:
    """The codecs named in ``names`` (``"opus"``, ``"speex/16000"``, case-insensitive), in the order of ``names``.

    ``ValueError`` when a name matches nothing.
    """
    available = list(codecs)
    chosen: list[Codec] = []
    for name in names:
        wanted, _slash, rate = name.lower().partition("/")
        found = [
            codec
            for codec in available
            if codec.name.lower() == wanted and (not rate or str(codec.clock_rate) == rate) and codec not in chosen
        ]
        if not found:
            raise ValueError(f"unknown codec {name!r}")
        chosen.extend(found)
    return tuple(chosen)


_CRYPTO = re.compile(r"^(\d{1,9}) +([A-Za-z0-9_]+) +(\S+)((?: +\S+)*) *$")


@dataclasses.dataclass(frozen=True)
class Crypto:
    """An SDES ``a=crypto`` attribute (RFC 4568)."""

    tag: int
    suite: str
    key_params: str
    session_params: tuple[str, ...] = ()

    @classmethod
    def parse(cls, value: str) -> Crypto:
        match = _CRYPTO.match(value.strip())
        if match is None:
            raise ValueError(f"invalid crypto attribute {value!r}")
        tag, suite, key_params, session = match.groups()
        return cls(int(tag), suite, key_params, tuple(session.split()))

    @property
    def key_salt(self) -> bytes:
        """The master key and salt of the first ``inline:`` key parameter, decoded."""
        first = self.key_params.split(";")[0]
        if not first.startswith("inline:"):
            raise ValueError(f"crypto key parameter {first!r} is not inline")
        key = first[len("inline:") :].split("|")[0]
        try:
            return base64.b64decode(key, validate=True)
        except ValueError:
            raise ValueError(f"crypto key {key!r} is not base64") from None

    def __str__(self) -> str:
        return " ".join((str(self.tag), self.suite, self.key_params, *self.session_params))


@dataclasses.dataclass(frozen=True)
class MediaOffer:
    """One m-line of our offer.

    ``send`` is hasAudio/hasVideo: ``a=sendrecv`` when true, ``a=recvonly`` otherwise. ``codecs`` defaults to
    :data:`DEFAULT_AUDIO_CODECS` / :data:`DEFAULT_VIDEO_CODECS`; ``rtcp_port`` to ``port + 1``; ``address`` (the m-line
    ``c=``) to the session address; ``rtcp_address`` to ``address``; ``ptime`` to 20 for audio; ``rtcp_fb`` to
    :data:`DEFAULT_VIDEO_RTCP_FB` for video. ``crypto`` lines make the profile RTP/SAVP.
    """

    kind: MediaKind
    port: int
    send: bool = False
    codecs: tuple[Codec, ...] | None = None
    rtcp_port: int | None = None
    address: str | None = None
    rtcp_address: str | None = None
    crypto: tuple[Crypto, ...] = ()
    ptime: int | None = None
    rtcp_fb: tuple[str, ...] | None = None
    rtcp_mux: bool = False
    ssrc: int | None = None
    cname: str | None = None

    @property
    def direction(self) -> Direction:
        return Direction.SENDRECV if self.send else Direction.RECVONLY

    @property
    def effective_codecs(self) -> tuple[Codec, ...]:
        if self.codecs is not None:
            return self.codecs
        return DEFAULT_AUDIO_CODECS if self.kind is MediaKind.AUDIO else DEFAULT_VIDEO_CODECS

    @property
    def proto(self) -> str:
        return "RTP/SAVP" if self.crypto else "RTP/AVP"


@dataclasses.dataclass(frozen=True)
class SessionOffer:
    """Our session: connection address, origin and the m-lines in order."""

    address: str
    media: tuple[MediaOffer, ...]
    session_id: int = 0
    session_version: int = 0
    origin_username: str = "wcsgw"
    session_name: str = "wcsgw"


def _addrtype(address: str) -> str:
    return "IP6" if ":" in address else "IP4"


def _media_lines(
    local: MediaOffer,
    session_address: str,
    port: int,
    proto: str,
    codecs: Sequence[Codec],
    direction: Direction,
    crypto: Sequence[Crypto],
) -> list[str]:
    address = local.address or session_address
    rtcp_address = local.rtcp_address or address
    lines = [f"m={local.kind.value} {port} {proto} {' '.join(str(c.payload_type) for c in codecs)}"]
    lines.append(f"c=IN {_addrtype(address)} {address}")
    for codec in codecs:
        channels = f"/{codec.channels}" if codec.channels != 1 else ""
        lines.append(f"a=rtpmap:{codec.payload_type} {codec.name}/{codec.clock_rate}{channels}")
        fmtp = codec.format_fmtp()
        if fmtp:
            lines.append(f"a=fmtp:{codec.payload_type} {fmtp}")
    ptime = local.ptime if local.ptime is not None else (20 if local.kind is MediaKind.AUDIO else None)
    if ptime:
        lines.append(f"a=ptime:{ptime}")
    rtcp_fb = local.rtcp_fb if local.rtcp_fb is not None else (
        DEFAULT_VIDEO_RTCP_FB if local.kind is MediaKind.VIDEO else ()
    )
    lines.extend(f"a=rtcp-fb:* {value}" for value in rtcp_fb)
    rtcp_port = local.rtcp_port if local.rtcp_port is not None else local.port + 1
    lines.append(f"a=rtcp:{rtcp_port} IN {_addrtype(rtcp_address)} {rtcp_address}")
    if local.rtcp_mux:
        lines.append("a=rtcp-mux")
    lines.extend(f"a=crypto:{item}" for item in crypto)
    lines.append(f"a={direction.value}")
    if local.ssrc is not None:
        lines.append(f"a=ssrc:{local.ssrc} cname:{local.cname or 'wcsgw'}")
    return lines


def _session_lines(local: SessionOffer, version: int) -> list[str]:
    kind = _addrtype(local.address)
    return [
        "v=0",
        f"o={local.origin_username} {local.session_id} {version} IN {kind} {local.address}",
        f"s={local.session_name}",
        f"c=IN {kind} {local.address}",
        "t=0 0",
    ]


def build_offer(offer: SessionOffer) -> str:
    """Our SDP offer (the shape WCS sends, see the spec's "SDP parameters recvonly and sendrecv")."""
    if not offer.media:
        raise ValueError("an offer needs at least one m-line")
    lines = _session_lines(offer, offer.session_version)
    for media in offer.media:
        codecs = media.effective_codecs
        if not codecs:
            raise ValueError(f"no codec to offer for {media.kind.value}")
        lines.extend(_media_lines(media, offer.address, media.port, media.proto, codecs, media.direction, media.crypto))
    return "\r\n".join(lines) + "\r\n"


# -- parsing ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Origin:
    username: str
    session_id: str
    session_version: int
    address_type: str
    address: str


@dataclasses.dataclass
class MediaDescription:
    """One parsed m-line and its lines."""

    kind: str
    port: int
    port_count: int
    proto: str
    formats: list[str]
    connection: str | None = None
    attributes: list[tuple[str, str | None]] = dataclasses.field(default_factory=list)
    bandwidths: list[str] = dataclasses.field(default_factory=list)

    def attribute(self, name: str) -> str | None:
        for key, value in self.attributes:
            if key == name:
                return value if value is not None else ""
        return None

    def attribute_values(self, name: str) -> list[str]:
        return [value or "" for key, value in self.attributes if key == name]

    def has_attribute(self, name: str) -> bool:
        return any(key == name for key, _value in self.attributes)

    def direction(self, default: Direction = Direction.SENDRECV) -> Direction:
        for key, _value in reversed(self.attributes):
            if key in Direction._value2member_map_:
                return Direction(key)
        return default

    def rtcp(self) -> tuple[int, str | None] | None:
        """``a=rtcp`` (RFC 3605): port and optional address."""
        value = self.attribute("rtcp")
        if value is None:
            return None
        bits = value.split()
        if not bits or not bits[0].isdigit() or len(bits) not in (1, 4):
            raise ValueError(f"invalid rtcp attribute {value!r}")
        return (int(bits[0]), bits[3] if len(bits) == 4 else None)

    def crypto(self) -> list[Crypto]:
        return [Crypto.parse(value) for value in self.attribute_values("crypto")]

    def codecs(self) -> list[Codec]:
        """The RTP payload formats in m-line order (formats neither static nor mapped are skipped)."""
        rtpmaps: dict[int, tuple[str, int, int]] = {}
        for value in self.attribute_values("rtpmap"):
            match = re.match(r"^(\d+) +([^/\s]+)/(\d+)(?:/(\d+))? *$", value)
            if match is None:
                raise ValueError(f"invalid rtpmap attribute {value!r}")
            pt, name, rate, channels = match.groups()
            rtpmaps[int(pt)] = (name, int(rate), int(channels) if channels else 1)
        fmtps: dict[int, dict[str, str]] = {}
        for value in self.attribute_values("fmtp"):
            pt, _space, params = value.strip().partition(" ")
            if not pt.isdigit():
                raise ValueError(f"invalid fmtp attribute {value!r}")
            parsed: dict[str, str] = {}
            for item in params.split(";"):
                item = item.strip()
                if not item:
                    continue
                key, equal, param = item.partition("=")
                if equal:
                    parsed[key.strip().lower()] = param.strip()
                else:
                    parsed[""] = item
            fmtps[int(pt)] = parsed
        feedback: dict[str, set[str]] = {}
        for value in self.attribute_values("rtcp-fb"):
            pt, _space, kind = value.strip().partition(" ")
            feedback.setdefault(pt, set()).add(" ".join(kind.split()))
        codecs: list[Codec] = []
        for fmt in self.formats:
            if not fmt.isdigit() or int(fmt) > 127:
                continue
            pt = int(fmt)
            mapping = rtpmaps.get(pt) or STATIC_PAYLOAD_TYPES.get(pt)
            if mapping is None:
                continue
            name, rate, channels = mapping
            fb = frozenset(feedback.get("*", set()) | feedback.get(fmt, set()))
            codecs.append(Codec(pt, name, rate, channels, fmtps.get(pt, {}), fb))
        return codecs


@dataclasses.dataclass
class SessionDescription:
    """A parsed SDP."""

    origin: Origin
    session_name: str
    connection: str | None
    attributes: list[tuple[str, str | None]]
    media: list[MediaDescription]

    @property
    def direction(self) -> Direction:
        for key, _value in reversed(self.attributes):
            if key in Direction._value2member_map_:
                return Direction(key)
        return Direction.SENDRECV

    def media_connection(self, media: MediaDescription) -> str | None:
        return media.connection or self.connection

    @classmethod
    def parse(cls, data: str | bytes) -> SessionDescription:
        if isinstance(data, bytes):
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError("SDP is not UTF-8") from None
        lines = [line.rstrip("\r").rstrip() for line in data.split("\n")]
        lines = [line for line in lines if line]
        if not lines or lines[0] != "v=0":
            raise ValueError("SDP must start with v=0")
        origin: Origin | None = None
        session_name = ""
        connection: str | None = None
        attributes: list[tuple[str, str | None]] = []
        media: list[MediaDescription] = []
        for line in lines[1:]:
            if len(line) < 2 or line[1] != "=" or not ("a" <= line[0] <= "z"):
                raise ValueError(f"invalid SDP line {line!r}")
            kind, value = line[0], line[2:]
            current = media[-1] if media else None
            if kind == "m":
                media.append(_parse_m_line(value))
            elif kind == "o" and current is None:
                origin = _parse_origin(value)
            elif kind == "s" and current is None:
                session_name = value
            elif kind == "c":
                address = _parse_connection(value)
                if current is None:
                    connection = address
                else:
                    current.connection = address
            elif kind == "b" and current is not None:
                current.bandwidths.append(value)
            elif kind == "a":
                name, colon, attr = value.partition(":")
                if not name:
                    raise ValueError(f"invalid SDP line {line!r}")
                item = (name.strip().lower(), attr if colon else None)
                (current.attributes if current is not None else attributes).append(item)
        if origin is None:
            raise ValueError("SDP has no o= line")
        return cls(origin, session_name, connection, attributes, media)


def _parse_origin(value: str) -> Origin:
    bits = value.split()
    if len(bits) != 6 or not bits[2].isdigit():
        raise ValueError(f"invalid o= line {value!r}")
    return Origin(bits[0], bits[1], int(bits[2]), bits[4], bits[5])


def _parse_connection(value: str) -> str:
    bits = value.split()
    if len(bits) != 3 or bits[0] != "IN" or bits[1] not in ("IP4", "IP6"):
        raise ValueError(f"invalid c= line {value!r}")
    return bits[2].split("/")[0]


def _parse_m_line(value: str) -> MediaDescription:
    bits = value.split()
    if len(bits) < 4:
        raise ValueError(f"invalid m= line {value!r}")
    port, _slash, count = bits[1].partition("/")
    if not port.isdigit() or int(port) > 65535 or (count and not count.isdigit()):
        raise ValueError(f"invalid port in m= line {value!r}")
    return MediaDescription(bits[0].lower(), int(port), int(count) if count else 1, bits[2], bits[3:])


def is_hold(sdp: SessionDescription) -> bool:
    """The far end holds the call: every active m-line is sendonly or inactive, or has a 0.0.0.0 connection."""
    active = [m for m in sdp.media if m.port != 0]
    if not active:
        return False
    for media in active:
        address = sdp.media_connection(media)
        if address in ("0.0.0.0", "::"):
            continue
        if media.direction(sdp.direction) not in (Direction.SENDONLY, Direction.INACTIVE):
            return False
    return True


# -- negotiation ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NegotiatedMedia:
    """What the media plane needs about one m-line after the offer/answer exchange.

    ``codecs`` are the formats both sides share, in the far end's order (``codec`` is the first); their payload
    types are the far end's. ``receive_payload_types`` maps every payload type the far end may send (its own and
    ours, RFC 3264 section 6.1 makes them differ rarely) to the codec. ``direction`` is the far end's attribute.
    """

    kind: str
    index: int
    port: int
    rejected: bool
    proto: str
    address: str | None
    rtcp_port: int | None
    rtcp_address: str | None
    rtcp_mux: bool
    direction: Direction
    codecs: tuple[Codec, ...]
    telephone_event: Codec | None
    crypto: tuple[Crypto, ...]
    receive_payload_types: Mapping[int, Codec] = dataclasses.field(default_factory=dict, hash=False)

    @property
    def codec(self) -> Codec | None:
        return self.codecs[0] if self.codecs else None

    @property
    def telephone_event_pt(self) -> int | None:
        return self.telephone_event.payload_type if self.telephone_event else None

    @property
    def rtcp_fb(self) -> frozenset[str]:
        return self.codecs[0].rtcp_fb if self.codecs else frozenset()

    @property
    def usable(self) -> bool:
        """Not rejected and at least one common codec."""
        return not self.rejected and bool(self.codecs)


@dataclasses.dataclass(frozen=True)
class Negotiation:
    """The negotiated session: one entry per m-line of the offer."""

    media: tuple[NegotiatedMedia, ...]
    remote: SessionDescription = dataclasses.field(compare=False, hash=False)

    @property
    def no_common_codecs(self) -> bool:
        """No m-line is usable: the call must end FAILED with NO_COMMON_CODECS."""
        return not any(m.usable for m in self.media)

    def get(self, kind: MediaKind | str) -> NegotiatedMedia | None:
        """The first usable m-line of ``kind``."""
        name = kind.value if isinstance(kind, MediaKind) else kind
        for media in self.media:
            if media.kind == name and media.usable:
                return media
        return None


def _find(codecs: Iterable[Codec], wanted: Codec) -> Codec | None:
    for codec in codecs:
        if codec.matches(wanted):
            return codec
    return None


def negotiate(offer: SessionDescription | str, answer: SessionDescription | str) -> Negotiation:
    """Match the far end's answer against our offer (RFC 3264 section 6).

    ``ValueError`` when the answer cannot answer this offer (another number of m-lines, another media type).
    """
    if isinstance(offer, str):
        offer = SessionDescription.parse(offer)
    if isinstance(answer, str):
        answer = SessionDescription.parse(answer)
    if len(answer.media) != len(offer.media):
        raise ValueError(f"answer has {len(answer.media)} m-lines, the offer had {len(offer.media)}")
    result: list[NegotiatedMedia] = []
    for index, (ours, theirs) in enumerate(zip(offer.media, answer.media)):
        if ours.kind != theirs.kind:
            raise ValueError(f"answer m-line {index} is {theirs.kind}, the offer's is {ours.kind}")
        offered = ours.codecs()
        common: list[Codec] = []
        telephone_event: Codec | None = None
        receive: dict[int, Codec] = {}
        rejected = theirs.port == 0
        if not rejected:
            for codec in theirs.codecs():
                local = _find(offered, codec)
                if local is None:
                    continue
                if codec.name.lower() == TELEPHONE_EVENT:
                    telephone_event = telephone_event or codec
                elif codec not in common:
                    common.append(codec)
                receive.setdefault(codec.payload_type, codec)
                receive.setdefault(local.payload_type, codec)
        address = answer.media_connection(theirs)
        rtcp = theirs.rtcp()
        result.append(
            NegotiatedMedia(
                kind=theirs.kind,
                index=index,
                port=theirs.port,
                rejected=rejected,
                proto=theirs.proto,
                address=address,
                rtcp_port=rtcp[0] if rtcp else (theirs.port + 1 if not rejected else None),
                rtcp_address=(rtcp[1] if rtcp and rtcp[1] else address),
                rtcp_mux=theirs.has_attribute("rtcp-mux"),
                direction=theirs.direction(answer.direction),
                codecs=tuple(common),
                telephone_event=telephone_event,
                crypto=tuple(theirs.crypto()),
                receive_payload_types=receive,
            )
        )
    return Negotiation(tuple(result), answer)


def _answer_direction(offered: Direction, send: bool) -> Direction:
    # RFC 3264 section 6.1: we receive only what they send, we send only what they receive.
    return Direction.of(sends=send and offered.receives, receives=offered.sends)


def build_answer(offer: SessionDescription | str, local: SessionOffer, *, session_version: int) -> str:
    """Our answer to the far end's (re-)offer, from our current local state.

    Per offered m-line: the first unused local m-line of the same kind answers with the shared codecs (our order,
    their payload types) and the direction that mirrors theirs (their sendonly/inactive, i.e. hold, gives
    recvonly/inactive); without a local m-line, a shared codec or, for RTP/SAVP, a shared crypto suite, the m-line is
    rejected with port 0.
    """
    if isinstance(offer, str):
        offer = SessionDescription.parse(offer)
    lines = _session_lines(local, session_version)
    used: set[int] = set()
    for theirs in offer.media:
        position = next(
            (
                i
                for i, ours in enumerate(local.media)
                if i not in used and ours.kind.value == theirs.kind and theirs.port != 0
            ),
            None,
        )
        answer = None
        if position is not None:
            answer = _answer_media(local.media[position], theirs, offer, local.address)
        if answer is None:
            lines.append(f"m={theirs.kind} 0 {theirs.proto} {theirs.formats[0]}")
            continue
        used.add(position)  # type: ignore[arg-type]
        lines.extend(answer)
    return "\r\n".join(lines) + "\r\n"


def _answer_media(
    ours: MediaOffer, theirs: MediaDescription, offer: SessionDescription, session_address: str
) -> list[str] | None:
    remote_codecs = theirs.codecs()
    chosen: list[Codec] = []
    for codec in ours.effective_codecs:
        remote = _find(remote_codecs, codec)
        if remote is not None and all(c.payload_type != remote.payload_type for c in chosen):
            chosen.append(dataclasses.replace(codec, payload_type=remote.payload_type))
    if not any(codec.name.lower() != TELEPHONE_EVENT for codec in chosen):
        return None
    crypto: list[Crypto] = []
    if "SAVP" in theirs.proto.upper():
        offered = theirs.crypto()
        for local in ours.crypto:
            match = next((c for c in offered if c.suite == local.suite), None)
            if match is not None:
                crypto = [dataclasses.replace(local, tag=match.tag)]
                break
        if not crypto:
            return None
    direction = _answer_direction(theirs.direction(offer.direction), ours.send)
    return _media_lines(ours, session_address, ours.port, theirs.proto, chosen, direction, crypto)
