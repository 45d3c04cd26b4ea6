"""The report in a real browser: headless Debian Chromium loads it from disk.

Three things only a browser can show: the page's DOM really holds every planned
statistic, it paints (a screenshot that is a real picture), and opening it makes
no network request. For the last, every request Chromium would send goes to a
recording HTTP proxy on 127.0.0.1 (``--proxy-bypass-list=<-loopback>`` removes the
implicit loopback bypass, so even requests to localhost reach it); a control
page with an external image proves that the proxy does see a page's requests.

Chromium itself talks to Google whatever page it shows, even with
``--disable-background-networking``: the sign-in service lists the profile's
accounts (accounts.google.com) and the component updater fetches a model
manifest (update.googleapis.com); neither has an off switch in Chromium 156.
Both have switches for their server's address, so they are pointed at a local
port that refuses connections and is the only address that bypasses the proxy;
network time queries are switched off. What still reaches the proxy comes from
the page.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from html_models import all_stats, parse, realistic_model

from fedscreen.report.html import render_html

CHROMIUM = Path("/usr/bin/chromium")
INSTALL = "apt-get install -y --no-install-recommends chromium fonts-wqy-microhei"
#: seconds for one Chromium run (a cold start on a slow CI machine takes a few)
RUN_TIMEOUT = 120
WIDTH, HEIGHT = 1280, 2400


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing; .ci/run installs it with: {INSTALL}")
        pytest.skip(f"Debian Chromium is not installed; as root: apt-get update && {INSTALL}")
    return CHROMIUM


class _Recorder(ThreadingHTTPServer):
    """An HTTP proxy that answers nothing and remembers every request line."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RecordingHandler)
        self.requests: list[str] = []
        self.lock = threading.Lock()


class _RecordingHandler(BaseHTTPRequestHandler):
    timeout = 5  # a connection that never sends a request line cannot hold a thread

    def _record(self) -> None:
        server = self.server
        assert isinstance(server, _Recorder)
        with server.lock:
            server.requests.append(f"{self.command} {self.path}")
        self.send_error(502, "recording proxy: no requests leave the test")

    do_GET = do_POST = do_HEAD = do_PUT = do_OPTIONS = do_CONNECT = _record

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def recording_proxy() -> Iterator[_Recorder]:
    """A recording proxy on a free loopback port, stopped on exit."""
    server = _Recorder()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port that is bound but not listening: every connection is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def run_chromium(
    chromium: Path, url: str, tmp_path: Path, proxy: _Recorder, *args: str
) -> subprocess.CompletedProcess[str]:
    """One headless Chromium run through ``proxy``, with its own profile and home."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    with refusing_port() as port:
        sink = f"http://127.0.0.1:{port}/"
        command = [
            str(chromium),
            "--headless",
            "--no-sandbox",  # root in a container: the sandbox cannot start
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            "--disable-extensions",
            "--disable-sync",
            "--disable-component-update",
            "--disable-features=NetworkTimeServiceQuerying",
            # Chromium's own services (see the module docstring): to a refusing port
            f"--gaia-url={sink}",
            f"--google-apis-url={sink}",
            f"--lso-url={sink}",
            f"--component-updater=url-source={sink}",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--proxy-server=http://127.0.0.1:{proxy.server_address[1]}",
            f"--proxy-bypass-list=<-loopback>;127.0.0.1:{port}",
            *args,
            url,
        ]
        env = {**os.environ, "HOME": str(home)}
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=RUN_TIMEOUT, env=env, check=False
        )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def _report(tmp_path: Path) -> tuple[dict[str, Any], Path]:
    model = realistic_model()
    path = tmp_path / "report.html"
    path.write_text(render_html(model), encoding="utf-8")
    return model, path


def test_the_browser_dom_holds_every_statistic_and_no_request_leaves(
    chromium: Path, tmp_path: Path
) -> None:
    model, path = _report(tmp_path)
    with recording_proxy() as proxy:
        result = run_chromium(chromium, path.as_uri(), tmp_path, proxy, "--dump-dom")
    assert proxy.requests == []
    dom = parse(result.stdout)
    for stat in all_stats(model):
        section = dom.by_id(f"stat-{stat['id']}")
        assert section.find_all("h3")[0].text() == stat["title"]
    assert dom.by_id("privacy").tag == "section"
    # the browser built the charts: one drawn bar per shown cell
    shown = sum(1 for s in all_stats(model) for r in s["rows"] if not r["suppressed"])
    assert len(dom.find_all("rect", "bar")) == shown


def _png_pixels(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, raw scanlines) of a PNG, checking its structure on the way."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    return width, height, zlib.decompress(idat)


def test_the_report_paints_and_no_request_leaves(chromium: Path, tmp_path: Path) -> None:
    _, path = _report(tmp_path)
    shot = tmp_path / "report.png"
    with recording_proxy() as proxy:
        run_chromium(
            chromium,
            path.as_uri(),
            tmp_path,
            proxy,
            f"--screenshot={shot}",
            f"--window-size={WIDTH},{HEIGHT}",
        )
    assert proxy.requests == []
    data = shot.read_bytes()
    width, height, pixels = _png_pixels(data)
    assert (width, height) == (WIDTH, HEIGHT)
    # a painted page, not a blank one: many distinct byte values, far from all white
    assert len(set(pixels)) > 64
    assert pixels.count(255) < 0.97 * len(pixels)


def test_without_its_content_security_policy_the_report_still_requests_nothing(
    chromium: Path, tmp_path: Path
) -> None:
    # the page's CSP would block a stray reference before it reached the network; this
    # shows that the content itself needs nothing, not only that the CSP holds it back
    _, path = _report(tmp_path)
    page = path.read_text(encoding="utf-8")
    csp = re.compile(r'<meta http-equiv="Content-Security-Policy"[^>]*>\n?')
    assert len(csp.findall(page)) == 1
    path.write_text(csp.sub("", page), encoding="utf-8")
    with recording_proxy() as proxy:
        result = run_chromium(chromium, path.as_uri(), tmp_path, proxy, "--dump-dom")
    assert proxy.requests == []
    assert "Content-Security-Policy" not in result.stdout


def test_the_proxy_does_record_a_page_that_makes_a_request(chromium: Path, tmp_path: Path) -> None:
    # the negative control: without it, "no requests" could mean "proxy not used"
    page = tmp_path / "leaky.html"
    page.write_text(
        '<!DOCTYPE html><html><body><img src="http://example.invalid/x.png"></body></html>',
        encoding="utf-8",
    )
    with recording_proxy() as proxy:
        run_chromium(chromium, page.as_uri(), tmp_path, proxy, "--dump-dom")
    assert "GET http://example.invalid/x.png" in proxy.requests
