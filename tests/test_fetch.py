"""fetch_tiny_imagenet against a local HTTP server (127.0.0.1 only) serving a small generated zip."""

from __future__ import annotations

import hashlib
import http.server
import re
import socket
import threading
import zipfile
from pathlib import Path

import pytest

from lookalike.data.datasets import load_collection
from lookalike.data.fetch import fetch_tiny_imagenet
from lookalike.data.synthetic import generate_collection
from lookalike.errors import DataError


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch):
    """A proxy from the environment must not see (or break) requests to the local server."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[bytes, str]:
    """(zip bytes, md5) of a small synthetic collection packed like the real tiny-imagenet-200.zip."""
    base = tmp_path_factory.mktemp("archive")
    root = generate_collection(
        base / "tiny-imagenet-200", n_classes=2, train_per_class=3, val_per_class=2, image_size=16
    )
    zip_path = base / "tiny-imagenet-200.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(root.rglob("*")):
            zf.write(path, Path("tiny-imagenet-200") / path.relative_to(root))
    data = zip_path.read_bytes()
    assert len(data) > 4000  # big enough to split for the resume tests
    return data, hashlib.md5(data).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves `server.payload` at any path, honouring `Range: bytes=N-` unless told not to."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        srv = self.server
        srv.ranges.append(self.headers.get("Range"))
        if srv.status != 200:
            self.send_error(srv.status)
            return
        data = srv.payload
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and not srv.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            body = data[start:]
        else:
            self.send_response(200)
            body = data
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.drop_after is not None:
            # Promise the whole body, send part of it, hang up: a flaky connection.
            cut, srv.drop_after = srv.drop_after, None
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(archive):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.payload = archive[0]
    srv.ranges = []
    srv.ignore_range = False
    srv.status = 200
    srv.drop_after = None
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/tiny-imagenet-200.zip"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def refused_url():
    """A loopback port that refuses connections: bound but not listening."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/tiny-imagenet-200.zip"
    sock.close()


def _fetch(dest: Path, url: str, md5: str | None) -> Path:
    return fetch_tiny_imagenet(dest, url=url, md5=md5, progress=False, timeout_s=5)


def test_defaults_request_the_official_archive_and_enforce_its_md5(tmp_path, server, monkeypatch):
    """Called with no url/md5, fetch asks the official host and refuses bytes that are not the official archive."""
    import urllib.request

    requested, real_urlopen = [], urllib.request.urlopen

    def to_local_server(request, timeout):
        requested.append(request.full_url)
        request.full_url = server.url  # the official host is unreachable here: the local server answers instead
        return real_urlopen(request, timeout=timeout)

    monkeypatch.setattr(urllib.request, "urlopen", to_local_server)
    with pytest.raises(DataError, match="expected 90528d7ca1a48142e341f4ef8d21d0de, so it was deleted"):
        fetch_tiny_imagenet(tmp_path, progress=False, timeout_s=5)
    assert requested == ["http://cs231n.stanford.edu/tiny-imagenet-200.zip"]
    assert not (tmp_path / "tiny-imagenet-200").exists()


def test_full_download_verify_and_unpack(tmp_path, server, archive):
    dest = tmp_path / "data"
    out = _fetch(dest, server.url, archive[1])
    assert out == dest / "tiny-imagenet-200"
    assert (out / "wnids.txt").read_text().split() == ["s0000000", "s0000001"]
    assert server.ranges == [None]
    assert (dest / "tiny-imagenet-200.zip").read_bytes() == archive[0]
    assert not (dest / "tiny-imagenet-200.zip.part").exists()
    assert [p.name for p in dest.iterdir() if p.name.startswith(".")] == []  # no temp folder left
    col = load_collection(dest)
    assert col.kind == "tiny-imagenet" and len(col) == 10 and col.synthetic is not None

    assert _fetch(dest, server.url, archive[1]) == out
    assert server.ranges == [None]  # already there: no second request


def test_resume_sends_range(tmp_path, server, archive):
    data, md5 = archive
    (tmp_path / "tiny-imagenet-200.zip.part").write_bytes(data[:1000])
    out = _fetch(tmp_path, server.url, md5)
    assert server.ranges == ["bytes=1000-"]
    assert (tmp_path / "tiny-imagenet-200.zip").read_bytes() == data
    assert (out / "wnids.txt").is_file()


def test_server_ignoring_range_restarts_cleanly(tmp_path, server, archive):
    data, md5 = archive
    server.ignore_range = True
    # Wrong bytes in the part: appending the full body to them would fail the MD5 check.
    (tmp_path / "tiny-imagenet-200.zip.part").write_bytes(b"\0" * 1000)
    _fetch(tmp_path, server.url, md5)
    assert server.ranges == ["bytes=1000-"]
    assert (tmp_path / "tiny-imagenet-200.zip").read_bytes() == data


def test_dropped_connection_is_resumed(tmp_path, server, archive):
    data, md5 = archive
    server.drop_after = 1500
    _fetch(tmp_path, server.url, md5)
    assert server.ranges == [None, "bytes=1500-"]
    assert (tmp_path / "tiny-imagenet-200.zip").read_bytes() == data


def test_complete_part_gets_416_and_is_used(tmp_path, server, archive):
    data, md5 = archive
    (tmp_path / "tiny-imagenet-200.zip.part").write_bytes(data)
    assert (_fetch(tmp_path, server.url, md5) / "wnids.txt").is_file()
    assert server.ranges == [f"bytes={len(data)}-"]


def test_md5_mismatch_deletes_the_download(tmp_path, server):
    with pytest.raises(DataError, match="MD5 .* expected 0{32}, so it was deleted; rerun"):
        _fetch(tmp_path, server.url, "0" * 32)
    assert not (tmp_path / "tiny-imagenet-200.zip").exists()
    assert not (tmp_path / "tiny-imagenet-200").exists()


def test_connection_refused_says_where_to_put_the_data(tmp_path, refused_url):
    dest = tmp_path / "data"
    with pytest.raises(DataError) as info:
        _fetch(dest, refused_url, None)
    message = str(info.value)
    assert message.startswith(f"download from {refused_url} failed (")
    assert f"unzip it into {dest} (so that {dest / 'tiny-imagenet-200' / 'wnids.txt'} exists)" in message
    assert f"put the zip at {dest / 'tiny-imagenet-200.zip'} and rerun" in message
    assert "\n" not in message


def test_http_error_is_reported(tmp_path, server):
    server.status = 404
    with pytest.raises(DataError, match="HTTP 404"):
        _fetch(tmp_path, server.url, None)


def test_existing_dataset_or_zip_needs_no_network(tmp_path, refused_url, archive):
    data, md5 = archive
    (tmp_path / "tiny-imagenet-200.zip").write_bytes(data)  # a zip copied by hand
    out = _fetch(tmp_path, refused_url, md5)
    assert (out / "wnids.txt").is_file()
    assert _fetch(tmp_path, refused_url, md5) == out


def test_hand_copied_zip_with_wrong_md5_is_kept(tmp_path, refused_url):
    (tmp_path / "tiny-imagenet-200.zip").write_bytes(b"PK not really")
    with pytest.raises(DataError, match="delete or replace it and rerun"):
        _fetch(tmp_path, refused_url, "0" * 32)
    assert (tmp_path / "tiny-imagenet-200.zip").exists()


def test_unsafe_member_is_refused(tmp_path, refused_url):
    dest = tmp_path / "dest"
    dest.mkdir()
    with zipfile.ZipFile(dest / "tiny-imagenet-200.zip", "w") as zf:
        zf.writestr("tiny-imagenet-200/wnids.txt", "n0\n")
        zf.writestr("../escaped.txt", "gotcha")
    with pytest.raises(DataError, match="unsafe member path '../escaped.txt'"):
        _fetch(dest, refused_url, None)
    assert not (tmp_path / "escaped.txt").exists()
    assert not (dest / "tiny-imagenet-200").exists()


def test_incomplete_target_is_not_overwritten(tmp_path, refused_url):
    (tmp_path / "tiny-imagenet-200" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no wnids.txt"):
        _fetch(tmp_path, refused_url, None)
