"""The peers of a bench run, as plain child processes: nginx-rtmp (as in tests/e2e/nginx.py, with a second RTMP
port for the sampled calls) with its ``rtmp_stat`` page parsed, and SIPp as the far end (UAS) and as the baseline's
caller (UAC)."""

from __future__ import annotations

import os
import re
import shutil
import urllib.request
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

from bench.media import Media
from bench.procs import Child, Processes, free_tcp_port, free_udp_port, tcp_accepts, udp_bound, wait_until
from tests.e2e.nginx import NGINX, RTMP_MODULE, NginxRtmp

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
MAIN_FAR_END_MEDIA = 20000  # SIPp's rtp_stream binds its sockets from -mp up, two per call; video leaves -mp+2
SAMPLE_FAR_END_MEDIA = 25000


@dataclass(frozen=True)
class StreamStat:
    """One stream of nginx-rtmp's ``rtmp_stat`` page."""

    name: str
    publishing: bool
    bytes_in: int
    bw_video: int
    bw_audio: int
    video_codec: str
    width: int
    height: int
    audio_codec: str
    sample_rate: int


def _text(node: ElementTree.Element | None, path: str, default: str = "") -> str:
    if node is None:
        return default
    found = node.find(path)
    return found.text if found is not None and found.text is not None else default


def _int(node: ElementTree.Element | None, path: str) -> int:
    try:
        return int(_text(node, path, "0"))
    except ValueError:
        return 0


def parse_stat(xml: bytes, app: str = "live") -> dict[str, StreamStat]:
    """The streams of application ``app``, by name."""
    root = ElementTree.fromstring(xml)
    streams: dict[str, StreamStat] = {}
    for application in root.iter("application"):
        if _text(application, "name") != app:
            continue
        for stream in application.iter("stream"):
            meta = stream.find("meta")
            streams[_text(stream, "name")] = StreamStat(
                name=_text(stream, "name"),
                publishing=stream.find("publishing") is not None,
                bytes_in=_int(stream, "bytes_in"),
                bw_video=_int(stream, "bw_video"),
                bw_audio=_int(stream, "bw_audio"),
                video_codec=_text(meta, "video/codec"),
                width=_int(meta, "video/width"),
                height=_int(meta, "video/height"),
                audio_codec=_text(meta, "audio/codec"),
                sample_rate=_int(meta, "audio/sample_rate"),
            )
    return streams


_NGINX_CONF = """\
load_module {module};
worker_processes 1;
daemon off;
master_process on;
{user}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    server {{
        listen 127.0.0.1:{http_port};
        location /stat {{ rtmp_stat all; }}
    }}
}}
rtmp {{
    access_log off;
    server {{
        listen 127.0.0.1:{rtmp_port};
        listen 127.0.0.1:{sample_port};
        application live {{
            live on;
        }}
    }}
}}
"""


class Nginx:
    """nginx-rtmp on 127.0.0.1 for a whole run: one ``live`` application on two RTMP ports. Both are the same
    server; the calls whose RTMP side the wire capture records publish to ``sample_url``, so that tcpdump can keep
    to their connections by port."""

    def __init__(self, procs: Processes, workdir: Path) -> None:
        missing = NginxRtmp.missing()
        if missing:
            raise RuntimeError(missing)
        prefix = workdir / "nginx"
        shutil.rmtree(prefix, ignore_errors=True)
        (prefix / "tmp").mkdir(parents=True)
        (prefix / "logs").mkdir()
        ports: set[int] = set()
        while len(ports) < 3:
            ports.add(free_tcp_port())
        self.rtmp_port, self.sample_port, self.http_port = sorted(ports)
        conf = prefix / "nginx.conf"
        conf.write_text(_NGINX_CONF.format(
            module=RTMP_MODULE, prefix=prefix, user="user root root;" if os.geteuid() == 0 else "",
            http_port=self.http_port, rtmp_port=self.rtmp_port, sample_port=self.sample_port), encoding="ascii")
        self.child = procs.start("nginx", [NGINX, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
                                 cwd=prefix, log=prefix / "stdout.log")
        wait_until(lambda: all(tcp_accepts(p) for p in (self.rtmp_port, self.sample_port, self.http_port)),
                   15, "nginx listening", alive=self.child)
        self.url = f"rtmp://127.0.0.1:{self.rtmp_port}/live"
        self.sample_url = f"rtmp://127.0.0.1:{self.sample_port}/live"

    def streams(self) -> dict[str, StreamStat]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/stat", timeout=5) as response:
            return parse_stat(response.read())


def render(template: str, target: Path, values: dict[str, str]) -> Path:
    """A copy of scenario ``template`` with its ``@NAME@`` placeholders filled in."""
    text = (SCENARIOS / template).read_text(encoding="utf-8")
    for name, value in values.items():
        text = text.replace(f"@{name}@", value)
    leftover = sorted(set(re.findall(r"@[A-Z_]+@", text)))
    if leftover:
        raise ValueError(f"{template}: no value for {', '.join(leftover)}")
    target.write_text(text, encoding="utf-8")
    return target


def _sipp_logs(workdir: Path, name: str, trace_msg: bool) -> list[str]:
    args = ["-trace_err", "-error_file", str(workdir / f"{name}-errors.log"),
            "-trace_screen", "-screen_file", str(workdir / f"{name}-screen.log")]
    if trace_msg:
        args += ["-trace_msg", "-message_file", str(workdir / f"{name}-messages.log")]
    return args


class FarEnd:
    """SIPp answering every call to it and sending the bench media: one process for many calls. A trial has two,
    the main one and the one of the sampled calls, whose video leaves from its own port ``video_source_port``."""

    def __init__(self, procs: Processes, workdir: Path, media: Media, *, name: str, media_port: int,
                 trace_msg: bool = False) -> None:
        sipp = shutil.which("sipp")
        if sipp is None:
            raise RuntimeError("sipp is not installed (Debian: apt-get install sip-tester)")
        workdir.mkdir(parents=True, exist_ok=True)
        scenario = render("uas_farend.xml", workdir / "uas_farend.xml", {
            "VIDEO_PCAP": media.video_pcap, "AUDIO_ULAW": media.audio_ulaw, "VIDEO_PT": str(media.video_pt)})
        self.port = free_udp_port()
        self.video_source_port = media_port + 2
        argv = [sipp, "-sf", str(scenario), "-i", "127.0.0.1", "-p", str(self.port), "-mi", "127.0.0.1",
                "-mp", str(media_port), "-nostdin", "-rtp_buffsize", str(1 << 20),
                *_sipp_logs(workdir, name, trace_msg)]
        self.child: Child = procs.start(f"sipp {name}", argv, cwd=workdir, log=workdir / f"{name}.out")
        wait_until(lambda: udp_bound(self.port), 10, f"SIPp {name} socket", alive=self.child)


class BaselineCaller:
    """SIPp placing the baseline's calls to the far end, one per ffmpeg: ``rows`` are (audio port, video port,
    name); each call lasts ``hold`` seconds, then BYE."""

    def __init__(self, procs: Processes, workdir: Path, media: Media, far_end: FarEnd,
                 rows: list[tuple[int, int, str]], hold: float, *, name: str = "caller", rate: float = 20.0) -> None:
        sipp = shutil.which("sipp")
        assert sipp is not None
        scenario = render("uac_baseline.xml", workdir / "uac_baseline.xml", {"VIDEO_PT": str(media.video_pt)})
        inf = workdir / f"{name}.csv"
        inf.write_text("SEQUENTIAL\n" + "".join(f"{a};{v};{call}\n" for a, v, call in rows), encoding="ascii")
        self.port = free_udp_port()
        calls = len(rows)
        argv = [sipp, f"127.0.0.1:{far_end.port}", "-sf", str(scenario), "-inf", str(inf),
                "-i", "127.0.0.1", "-p", str(self.port), "-mi", "127.0.0.1", "-mp", str(free_udp_port()),
                "-m", str(calls), "-l", str(calls), "-r", str(rate), "-d", str(int(hold * 1000)),
                "-nostdin"] + _sipp_logs(workdir, name, False)
        self.child = procs.start(f"sipp {name}", argv, cwd=workdir, log=workdir / f"{name}.out")
