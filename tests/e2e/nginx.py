"""A private nginx-rtmp server for end-to-end tests.

Usage (from a trial ``TestCase``)::

    server = NginxRtmp.create(self)          # skips the test when nginx or the module is missing
    server.start()                           # blocks until the RTMP and HTTP ports accept
    url = server.rtmp_url("live")            # rtmp://127.0.0.1:PORT/live
    ...
    server.restart()                         # same ports; connections are dropped
    server.stop()                            # also done by the cleanup ``create`` registers

Applications (all ``live on``):

* ``live``: accepts publishers and players, waits for a keyframe (``wait_key on``) so a player
  joining mid-stream starts cleanly; with ``record_dir`` every stream is recorded there
  (``record all``, ``NAME.flv``, appended to across restarts is not guaranteed: use unique names);
* ``refuse``: an ``on_publish`` hook answered 403 -- nginx closes the connection in answer to
  ``publish``, before any ``NetStream.Publish.Start``. (With ``deny publish all`` nginx-rtmp
  1.2.2 sends ``NetStream.Publish.Start`` first and closes right after, which a client cannot
  tell from a crash; a second publisher of a busy name gets ``NetStream.Publish.BadName``.)

``stat_xml()`` returns the ``rtmp_stat`` page (publishers, players, bytes). ``start``/``stop``/
``restart`` block for up to ``timeout`` seconds: while a reactor-driven peer is running, call
them through ``twisted.internet.threads.deferToThread``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from typing import Any

from twisted.trial.unittest import SkipTest

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
RTMP_MODULE = "/usr/lib/nginx/modules/ngx_rtmp_module.so"

_CONF = """\
load_module {module};
worker_processes 1;
daemon off;
master_process on;
{user}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 256; }}
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
        location /on_publish/refuse {{ return 403; }}
    }}
}}
rtmp {{
    access_log off;
    server {{
        listen 127.0.0.1:{rtmp_port};
        application live {{
            live on;
            wait_key on;
            {record}
        }}
        application refuse {{
            live on;
            notify_method get;
            on_publish http://127.0.0.1:{http_port}/on_publish/refuse;
        }}
    }}
}}
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class NginxRtmp:
    """One private nginx with the rtmp module, on 127.0.0.1 ports chosen at construction."""

    def __init__(self, prefix: str, *, record_dir: str | None = None, timeout: float = 15.0) -> None:
        self.prefix = prefix
        self.record_dir = record_dir
        self.timeout = timeout
        self.rtmp_port = free_port()
        self.http_port = free_port()
        self._process: subprocess.Popen[bytes] | None = None
        os.makedirs(os.path.join(prefix, "tmp"), exist_ok=True)
        os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
        record = "record off;"
        if record_dir is not None:
            os.makedirs(record_dir, exist_ok=True)
            record = f"record all; record_path {record_dir};"
        self.conf_path = os.path.join(prefix, "nginx.conf")
        with open(self.conf_path, "w", encoding="utf-8") as conf:
            conf.write(
                _CONF.format(
                    module=RTMP_MODULE,
                    prefix=prefix,
                    user="user root root;" if os.geteuid() == 0 else "",
                    http_port=self.http_port,
                    rtmp_port=self.rtmp_port,
                    record=record,
                )
            )

    @classmethod
    def create(cls, test_case: Any, *, record: bool = False, timeout: float = 15.0) -> NginxRtmp:
        """An instance in a fresh temporary prefix, stopped and removed by ``test_case``'s cleanup."""
        missing = cls.missing()
        if missing:
            raise SkipTest(missing)
        prefix = tempfile.mkdtemp(prefix="wcsgw-nginx-")
        server = cls(prefix, record_dir=os.path.join(prefix, "record") if record else None, timeout=timeout)
        test_case.addCleanup(shutil.rmtree, prefix, True)
        test_case.addCleanup(server.stop)
        return server

    @staticmethod
    def missing() -> str | None:
        """Why nginx-rtmp cannot run here, or ``None``."""
        if not os.access(NGINX, os.X_OK):
            return "nginx is not installed (Debian: apt-get install nginx libnginx-mod-rtmp)"
        if not os.path.exists(RTMP_MODULE):
            return f"the nginx rtmp module is missing at {RTMP_MODULE} (Debian: libnginx-mod-rtmp)"
        return None

    # ------------------------------------------------------------------ URLs

    def rtmp_url(self, app: str = "live") -> str:
        return f"rtmp://127.0.0.1:{self.rtmp_port}/{app}"

    def play_url(self, name: str, app: str = "live") -> str:
        return f"{self.rtmp_url(app)}/{name}"

    def stat_xml(self) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/stat", timeout=5) as response:
            return bytes(response.read())

    def error_log(self) -> str:
        try:
            with open(os.path.join(self.prefix, "error.log"), encoding="utf-8", errors="replace") as log:
                return log.read()
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------------ process control

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start nginx and wait until both ports accept connections."""
        if self.running:
            return
        self._process = subprocess.Popen(
            [NGINX, "-p", self.prefix, "-c", self.conf_path, "-e", os.path.join(self.prefix, "error.log")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.timeout
        while not (_accepts(self.rtmp_port) and _accepts(self.http_port)):
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"nginx exited with {self._process.returncode}:\n{self.error_log()[-2000:]}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"nginx did not listen within {self.timeout} s:\n{self.error_log()[-2000:]}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop nginx (fast shutdown, then SIGKILL to its process group) and wait for it."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # workers left behind, if any
        except ProcessLookupError:
            pass
        if process.poll() is None:
            process.wait(timeout=self.timeout)
        deadline = time.monotonic() + self.timeout
        while _accepts(self.rtmp_port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart(self) -> None:
        """Stop, then start again on the same ports."""
        self.stop()
        self.start()
