"""Status vocabulary shared by every part of the gateway (WCS names, spelled as WCS spells them)."""

from __future__ import annotations

import enum


class CallStatus(str, enum.Enum):
    """A call's status as WCS reports it in ``status``."""

    NEW = "NEW"
    PENDING = "PENDING"
    TRYING = "TRYING"
    RING = "RING"
    RING_MEDIA = "RING_MEDIA"
    SESSION_PROGRESS = "SESSION_PROGRESS"
    BUSY = "BUSY"
    HOLD = "HOLD"
    ESTABLISHED = "ESTABLISHED"
    FINISH = "FINISH"
    FAILED = "FAILED"

    @property
    def ended(self) -> bool:
        return self in _ENDED


_ENDED = frozenset({CallStatus.BUSY, CallStatus.FINISH, CallStatus.FAILED})


class RtmpStreamStatus(str, enum.Enum):
    """Status of one RTMP destination (``rtmpStreamStatus``)."""

    RTMP_STREAM_WAIT = "RTMP_STREAM_WAIT"
    RTMP_STREAM_ACTIVE = "RTMP_STREAM_ACTIVE"
    RTMP_CONNECTION_LOST = "RTMP_CONNECTION_LOST"
    RTMP_CONNECTION_FAILED = "RTMP_CONNECTION_FAILED"


class EndInfo(str, enum.Enum):
    """Why a call ended, carried in the extra field ``info`` (WCS names)."""

    NORMAL_CALL_CLEARING = "NORMAL_CALL_CLEARING"
    FAILED_BY_RTP_ACTIVITY = "FAILED_BY_RTP_ACTIVITY"
    FAILED_BY_RTMP_WRITER_ERROR = "FAILED_BY_RTMP_WRITER_ERROR"
    NO_COMMON_CODECS = "NO_COMMON_CODECS"
    FAILED_BY_REQUEST_TIMEOUT = "FAILED_BY_REQUEST_TIMEOUT"
    FAILED_BY_ERROR = "FAILED_BY_ERROR"
    BUSY_HERE = "BUSY_HERE"
    TERMINATED_BY_REQUEST = "TERMINATED_BY_REQUEST"
    GATEWAY_SHUTDOWN = "GATEWAY_SHUTDOWN"
