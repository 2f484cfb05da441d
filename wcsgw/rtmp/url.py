"""RTMP destination URLs as Flashphoner WCS takes them in ``rtmpUrl``.

Form: ``rtmp[s]://[user:pass@]host[:port]/app[/instance][?query]``. The port defaults to 1935
for ``rtmp`` and 443 for ``rtmps``. Trailing whitespace and slashes are trimmed (the WCS
documentation's own example is ``"rtmp://localhost:1935/live /"``). The application, the
instance and the query string all travel in the ``app`` and ``tcUrl`` of the connect command;
the stream name (WCS ``toStream``) is separate and may carry its own query string.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Final

DEFAULT_PORTS: Final = {"rtmp": 1935, "rtmps": 443}
_HOST_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9\-_]{0,62})?(\.[A-Za-z0-9]([A-Za-z0-9\-_]{0,62})?)*\.?$")
_IPV6 = re.compile(r"^[0-9A-Fa-f:.]+(%[A-Za-z0-9_.\-]+)?$")
_TRAILING = " \t\r\n/"


@dataclasses.dataclass(frozen=True)
class RtmpUrl:
    """A parsed destination."""

    scheme: str  # "rtmp" or "rtmps", lower case
    host: str  # as written (IPv6 without brackets)
    port: int
    app_name: str  # the first path segment
    instance: str | None  # the optional second path segment ("_definst_")
    query: str | None  # without the "?"
    username: str | None = None
    password: str | None = None
    explicit_port: bool = False

    @property
    def tls(self) -> bool:
        return self.scheme == "rtmps"

    @property
    def app(self) -> str:
        """The connect command's ``app``: application, instance and query string."""
        path = self.app_name if self.instance is None else f"{self.app_name}/{self.instance}"
        return path if self.query is None else f"{path}?{self.query}"

    @property
    def _host_port(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}" if self.explicit_port else host

    @property
    def tc_url(self) -> str:
        """The connect command's ``tcUrl`` (without credentials)."""
        return f"{self.scheme}://{self._host_port}/{self.app}"

    def __str__(self) -> str:
        return self.tc_url


def parse(url: str) -> RtmpUrl:
    """Parse an ``rtmpUrl``; raise ``ValueError`` naming what is wrong."""
    if not isinstance(url, str):
        raise ValueError(f"rtmpUrl must be a string, not {type(url).__name__}")
    text = url.strip().rstrip(_TRAILING)
    if not text:
        raise ValueError("rtmpUrl is empty")
    if any(ch.isspace() for ch in text):
        raise ValueError(f"rtmpUrl {url!r} contains whitespace")
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise ValueError(f"rtmpUrl {url!r} has no scheme (expected rtmp:// or rtmps://)")
    scheme = scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"rtmpUrl scheme {scheme!r} is not supported (expected rtmp or rtmps)")

    authority, slash, path_and_query = rest.partition("/")
    if "?" in authority:
        raise ValueError(f"rtmpUrl {url!r} has a query string but no application name")
    username = password = None
    if "@" in authority:
        userinfo, _, authority = authority.rpartition("@")
        username, colon, secret = userinfo.partition(":")
        if not username:
            raise ValueError(f"rtmpUrl {url!r} has an empty user name before '@'")
        password = secret if colon else None
    host, port, explicit = _parse_host_port(authority, scheme, url)

    path, question, query = path_and_query.partition("?")
    if not slash or not path:
        raise ValueError(f"rtmpUrl {url!r} has no application name")
    segments = path.split("/")
    if any(not segment for segment in segments):
        raise ValueError(f"rtmpUrl {url!r} has an empty path segment")
    if len(segments) > 2:
        raise ValueError(
            f"rtmpUrl {url!r} has {len(segments)} path segments; expected /app or /app/instance"
        )
    instance = segments[1] if len(segments) == 2 else None
    return RtmpUrl(
        scheme=scheme,
        host=host,
        port=port,
        app_name=segments[0],
        instance=instance,
        query=query if question else None,
        username=username,
        password=password,
        explicit_port=explicit,
    )


def _parse_host_port(authority: str, scheme: str, url: str) -> tuple[str, int, bool]:
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise ValueError(f"rtmpUrl {url!r} has an unclosed '[' in the host")
        host = authority[1:end]
        if not host or not _IPV6.match(host) or ":" not in host:
            raise ValueError(f"rtmpUrl {url!r} has an invalid IPv6 address {host!r}")
        tail = authority[end + 1 :]
        if tail and not tail.startswith(":"):
            raise ValueError(f"rtmpUrl {url!r} has {tail!r} after the IPv6 address")
        port_text = tail[1:] if tail else None
    else:
        host, colon, port_text_raw = authority.partition(":")
        port_text = port_text_raw if colon else None
        if not host:
            raise ValueError(f"rtmpUrl {url!r} has no host")
        if not _HOST_NAME.match(host):
            raise ValueError(f"rtmpUrl {url!r} has an invalid host {host!r}")
    if port_text is None:
        return host, DEFAULT_PORTS[scheme], False
    if not port_text.isdigit() or not port_text.isascii():
        raise ValueError(f"rtmpUrl {url!r} has an invalid port {port_text!r}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"rtmpUrl {url!r} has port {port} outside 1..65535")
    return host, port, True


def normalize(url: str | RtmpUrl) -> str:
    """A canonical form for duplicate detection.

    Lower-case scheme and host, explicit port, no credentials, no trailing slash; path and
    query keep their case (servers treat application and stream names case-sensitively).
    """
    parsed = url if isinstance(url, RtmpUrl) else parse(url)
    host = parsed.host.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{parsed.scheme}://{host}:{parsed.port}/{parsed.app}"


def check_stream_name(name: str) -> str:
    """Validate a stream name (which may carry its own ``?query``); return it unchanged."""
    if not isinstance(name, str) or not name:
        raise ValueError("stream name is empty")
    if any(ch.isspace() or ord(ch) < 0x20 for ch in name):
        raise ValueError(f"stream name {name!r} contains whitespace or control characters")
    base = name.partition("?")[0]
    if not base:
        raise ValueError(f"stream name {name!r} is only a query string")
    return name


def split_stream_name(name: str) -> tuple[str, str | None]:
    """Split ``name?query`` into the name and the query (without ``?``), or ``None``."""
    base, question, query = check_stream_name(name).partition("?")
    return base, (query if question else None)
