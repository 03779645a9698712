"""Offline tests of the NIH download (http fetch, safe tar extraction, orchestration) on a loopback server.

The server (127.0.0.1, port 0, one thread) serves small tar.gz archives and metadata files made in
``tmp_path``; it honours ``Range`` and can truncate an answer, corrupt it, answer with an HTML page,
ignore ``Range`` or fail with an HTTP status, each for one request or for all. ``HEAD`` gets a false
404 as on NIH's Box share.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import random
import re
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cxr_core.data.metadata import BBOX_LIST, DATA_ENTRY_V2020, NIH_METADATA_FILES, TEST_LIST, TRAIN_VAL_LIST
from cxr_core.data.sources import http
from cxr_core.data.sources.http import DownloadError, fetch
from cxr_core.data.sources.nih import (
    KAGGLE_DATASET,
    MANUAL_HINT,
    METADATA_URLS,
    NIH_ARCHIVES,
    NIH_PAGE,
    Archive,
    download_nih,
)
from cxr_core.data.sources.tarsafe import ArchiveError, safe_extract

HTML_PAGE = b"<!DOCTYPE html>\n<html><head><title>Box</title></head><body>Sign in</body></html>\n"


# ----------------------------------------------------------------------------- loopback server


@dataclass
class ServerState:
    """What the server serves, how it misbehaves, and every request it saw."""

    files: dict[str, bytes] = field(default_factory=dict)
    truncate_once: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before hanging up
    corrupt_once: set[str] = field(default_factory=set)
    corrupt_always: set[str] = field(default_factory=set)
    html: set[str] = field(default_factory=set)  # answer 200 text/html instead of the file
    ignore_range: set[str] = field(default_factory=set)  # answer 200 with the whole file
    status_once: dict[str, int] = field(default_factory=dict)  # path -> HTTP error status, once
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def gets(self, path: str | None = None) -> list[tuple[str, str, str | None]]:
        with self.lock:
            return [r for r in self.requests if r[0] == "GET" and (path is None or r[1] == path)]


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def do_HEAD(self) -> None:  # as Box: HEAD falsely answers 404
        with self.server.state.lock:  # type: ignore[attr-defined]
            self.server.state.requests.append(("HEAD", self.path, self.headers.get("Range")))  # type: ignore[attr-defined]
        self.send_error(404)

    def do_GET(self) -> None:
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        path, rng = self.path, self.headers.get("Range")
        with state.lock:
            state.requests.append(("GET", path, rng))
            truncate = state.truncate_once.pop(path, None)
            status = state.status_once.pop(path, None)
            corrupt = path in state.corrupt_always or path in state.corrupt_once
            state.corrupt_once.discard(path)
        if status is not None:
            self.send_error(status)
            return
        if path in state.html:
            self._send(200, HTML_PAGE, {"Content-Type": "text/html; charset=utf-8"})
            return
        data = state.files.get(path)
        if data is None:
            self.send_error(404)
            return
        if corrupt:
            data = bytes(b ^ 0xFF for b in data[:16]) + data[16:]
        start, code, extra = 0, 200, {}
        if rng and path not in state.ignore_range:
            match = re.fullmatch(r"bytes=(\d+)-", rng)
            assert match, rng
            start = int(match.group(1))
            if start >= len(data):
                self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                return
            code, extra = 206, {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        self._send(code, data[start:], {"Content-Type": "application/octet-stream", **extra}, truncate)

    def _send(self, code: int, body: bytes, headers: dict[str, str], truncate: int | None = None) -> None:
        self.send_response(code)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if truncate is not None:  # promise the whole body, send K bytes, hang up
            body = body[:truncate]
            self.close_connection = True
        self.wfile.write(body)


@dataclass
class Served:
    base: str
    state: ServerState

    def publish(self, path: str, data: bytes) -> str:
        self.state.files[path] = data
        return self.base + path


@pytest.fixture
def server() -> Iterator[Served]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = ServerState()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Served(f"http://127.0.0.1:{httpd.server_address[1]}", httpd.state)  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def backoffs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record retry waits instead of sleeping (keeps tests fast; lets them assert 'no retry loop')."""
    calls: list[int] = []
    monkeypatch.setattr(http, "_backoff", calls.append)
    return calls


# ----------------------------------------------------------------------------------- helpers


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _png(seed: int, n: int = 3000) -> bytes:
    """Incompressible bytes with a PNG signature (download never decodes them)."""
    return b"\x89PNG\r\n\x1a\n" + random.Random(seed).randbytes(n)


def _targz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _malicious_targz(kind: str, outside: Path) -> tuple[bytes, str]:
    """A tar.gz holding a good image, then one bad member of the given kind; returns (bytes, bad name)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        good = _png(1)
        info = tarfile.TarInfo("images/00000001_000.png")
        info.size = len(good)
        tar.addfile(info, io.BytesIO(good))
        payload = b"pwned\n"
        bad = tarfile.TarInfo()
        if kind == "dotdot":
            bad.name = "../evil.txt"
        elif kind == "nested-dotdot":
            bad.name = "images/../../evil.txt"
        elif kind == "absolute":
            bad.name = str(outside / "abs_evil.txt")
        elif kind == "symlink-relative":
            bad.name, bad.type, bad.linkname = "images/link", tarfile.SYMTYPE, "../../outside"
        elif kind == "symlink-absolute":
            bad.name, bad.type, bad.linkname = "link", tarfile.SYMTYPE, str(outside)
        elif kind == "symlink-chain":  # each link looks inside on its own; together they climb out
            hop = tarfile.TarInfo("a/b")
            hop.type, hop.linkname = tarfile.SYMTYPE, ".."
            tar.addfile(hop)
            bad.name, bad.type, bad.linkname = "x", tarfile.SYMTYPE, "a/b/.."
        elif kind == "hardlink":
            bad.name, bad.type, bad.linkname = "hard", tarfile.LNKTYPE, "../outside/secret.txt"
        elif kind == "device":
            bad.name, bad.type, bad.devmajor, bad.devminor = "images/dev", tarfile.CHRTYPE, 1, 3
        else:
            raise AssertionError(kind)
        if bad.type == tarfile.REGTYPE:
            bad.size = len(payload)
            tar.addfile(bad, io.BytesIO(payload))
        else:
            tar.addfile(bad)
        if kind.startswith("symlink"):  # a file written through the link, as a real attack would
            through = tarfile.TarInfo(bad.name + "/evil.txt")
            through.size = len(payload)
            tar.addfile(through, io.BytesIO(payload))
    return buf.getvalue(), bad.name


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _publish_nih(
    server: Served, n_archives: int = 2
) -> tuple[list[Archive], dict[str, str], dict[str, bytes]]:
    """Serve a small NIH look-alike: archives of images/*.png and the 4 metadata files."""
    table, expected = [], {}
    for index in range(1, n_archives + 1):
        files = {f"images/{index:08d}_{k:03d}.png": _png(index * 10 + k) for k in range(3)}
        expected.update(files)
        data = _targz(files)
        url = server.publish(f"/static/archive{index}.gz", data)
        table.append(Archive(index, url, len(data), _md5(data)))
    names = sorted(Path(n).name for n in expected)
    metadata = {
        DATA_ENTRY_V2020: (
            "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Sex,View Position\n"
            + "".join(f"{n},No Finding,0,{int(n[:8])},50,M,PA\n" for n in names)
        ).encode(),
        BBOX_LIST: b"Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000001_000.png,Mass,1.0,2.0,3.0,4.0,,,\n",
        TRAIN_VAL_LIST: "\n".join(names[:-1]).encode(),
        TEST_LIST: names[-1].encode(),
    }
    urls = {name: server.publish(f"/meta/{name}", data) for name, data in metadata.items()}
    return table, urls, expected


# ------------------------------------------------------------------------------------- tables


def test_nih_table_is_the_official_one() -> None:
    assert [a.index for a in NIH_ARCHIVES] == list(range(1, 13))
    assert NIH_ARCHIVES[0] == Archive(
        1,
        "https://nihcc.box.com/shared/static/vfk49d74nhbxq3nqjg0900w5nvkorp5c.gz",
        2008470987,
        "fe8ed0a6961412fddcbb3603c11b3698",
    )
    assert NIH_ARCHIVES[11] == Archive(
        12,
        "https://nihcc.box.com/shared/static/ioqwiy20ihqwyr8pf4c24eazhh281pbu.gz",
        2914187733,
        "dc9fda1757c2de0032b63347a7d2895c",
    )
    assert sum(a.size for a in NIH_ARCHIVES) == 45079862784
    assert all(re.fullmatch(r"[0-9a-f]{32}", a.md5) for a in NIH_ARCHIVES)
    assert len({a.url for a in NIH_ARCHIVES}) == 12
    assert [a.filename for a in NIH_ARCHIVES[:2]] == ["images_001.tar.gz", "images_002.tar.gz"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        NIH_ARCHIVES[0].md5 = "x"  # type: ignore[misc]


def test_metadata_urls_follow_the_box_pattern() -> None:
    assert set(METADATA_URLS) == {DATA_ENTRY_V2020, TRAIN_VAL_LIST, TEST_LIST}
    assert METADATA_URLS[DATA_ENTRY_V2020] == (
        "https://nihcc.app.box.com/index.php?rm=box_download_shared_file"
        "&vanity_name=ChestXray-NIHCC&file_id=f_219760887468"
    )
    assert METADATA_URLS[TRAIN_VAL_LIST].endswith("file_id=f_256056636701")
    assert METADATA_URLS[TEST_LIST].endswith("file_id=f_256055473534")


# -------------------------------------------------------------------------------------- fetch


def test_fetch_downloads_and_checks_md5(server: Served, tmp_path: Path) -> None:
    data = _targz({"images/00000001_000.png": _png(1)})
    url = server.publish("/a.gz", data)
    dest = fetch(url, tmp_path / "a.tar.gz", size=len(data), md5=_md5(data), timeout=5, progress=True)
    assert dest.read_bytes() == data
    assert not (tmp_path / "a.tar.gz.part").exists()
    assert server.state.requests == [("GET", "/a.gz", None)]  # one plain GET, never HEAD


def test_fetch_skips_a_complete_file(server: Served, tmp_path: Path) -> None:
    data = _png(2)
    url = server.publish("/a.gz", data)
    dest = tmp_path / "a.gz"
    fetch(url, dest, md5=_md5(data), timeout=5, progress=False)
    fetch(url, dest, size=len(data), md5=_md5(data), timeout=5, progress=False)
    assert len(server.state.gets()) == 1


def test_fetch_replaces_a_complete_file_with_the_wrong_md5(server: Served, tmp_path: Path) -> None:
    data = _png(2)
    url = server.publish("/a.gz", data)
    dest = tmp_path / "a.gz"
    dest.write_bytes(b"x" * len(data))
    fetch(url, dest, size=len(data), md5=_md5(data), timeout=5, progress=False)
    assert dest.read_bytes() == data
    assert len(server.state.gets()) == 1


def test_truncated_transfer_resumes_with_range(server: Served, tmp_path: Path) -> None:
    data = _png(3, 20000)
    url = server.publish("/big.gz", data)
    server.state.truncate_once["/big.gz"] = 7000
    dest = fetch(
        url, tmp_path / "big.gz", size=len(data), md5=_md5(data), timeout=5, chunk_size=1024, progress=False
    )
    assert _md5(dest.read_bytes()) == _md5(data)
    assert server.state.gets() == [("GET", "/big.gz", None), ("GET", "/big.gz", "bytes=7000-")]


def test_leftover_part_file_resumes(server: Served, tmp_path: Path) -> None:
    data = _png(4, 10000)
    url = server.publish("/a.gz", data)
    (tmp_path / "a.gz.part").write_bytes(data[:4096])
    dest = fetch(url, tmp_path / "a.gz", size=len(data), md5=_md5(data), timeout=5, progress=False)
    assert dest.read_bytes() == data
    assert server.state.gets() == [("GET", "/a.gz", "bytes=4096-")]


def test_server_ignoring_range_restarts_from_zero(server: Served, tmp_path: Path) -> None:
    data = _png(5, 10000)
    url = server.publish("/a.gz", data)
    server.state.truncate_once["/a.gz"] = 3000
    server.state.ignore_range.add("/a.gz")
    dest = fetch(url, tmp_path / "a.gz", size=len(data), md5=_md5(data), timeout=5, progress=False)
    assert dest.read_bytes() == data
    assert [r[2] for r in server.state.gets()] == [None, "bytes=3000-"]  # asked to resume, got 200


def test_416_on_a_complete_part_file_is_accepted(server: Served, tmp_path: Path) -> None:
    data = _png(6)
    url = server.publish("/a.gz", data)
    (tmp_path / "a.gz.part").write_bytes(data)
    dest = fetch(url, tmp_path / "a.gz", md5=_md5(data), timeout=5, progress=False)  # size unknown
    assert dest.read_bytes() == data
    assert server.state.gets() == [("GET", "/a.gz", f"bytes={len(data)}-")]


def test_416_on_an_overlong_part_file_restarts(server: Served, tmp_path: Path) -> None:
    data = _png(6)
    url = server.publish("/a.gz", data)
    (tmp_path / "a.gz.part").write_bytes(data + b"junk")
    dest = fetch(url, tmp_path / "a.gz", md5=_md5(data), timeout=5, progress=False)
    assert dest.read_bytes() == data
    assert [r[2] for r in server.state.gets()] == [f"bytes={len(data) + 4}-", None]


def test_transient_http_error_is_retried(server: Served, tmp_path: Path, backoffs: list[int]) -> None:
    data = _png(7)
    url = server.publish("/a.gz", data)
    server.state.status_once["/a.gz"] = 503
    dest = fetch(url, tmp_path / "a.gz", md5=_md5(data), timeout=5, progress=False)
    assert dest.read_bytes() == data
    assert backoffs == [1]
    assert len(server.state.gets()) == 2


def test_corrupt_transfer_is_downloaded_again(server: Served, tmp_path: Path) -> None:
    data = _png(8, 5000)
    url = server.publish("/a.gz", data)
    server.state.corrupt_once.add("/a.gz")
    dest = fetch(url, tmp_path / "a.gz", size=len(data), md5=_md5(data), timeout=5, progress=False)
    assert _md5(dest.read_bytes()) == _md5(data)
    assert server.state.gets() == [("GET", "/a.gz", None), ("GET", "/a.gz", None)]  # from scratch


def test_wrong_md5_raises_naming_both_sums(server: Served, tmp_path: Path) -> None:
    data = _png(9)
    url = server.publish("/a.gz", data)
    wrong = "0" * 32
    with pytest.raises(DownloadError) as info:
        fetch(url, tmp_path / "a.gz", md5=wrong, timeout=5, retries=2, progress=False)
    message = str(info.value)
    assert url in message and "a.gz" in message
    assert f"expected {wrong}" in message and f"actual {_md5(data)}" in message
    assert len(server.state.gets()) == 3  # first try + 2 retries, then stop
    assert _tree(tmp_path) == set()  # neither the file nor the .part is left


def test_html_instead_of_an_archive_is_named(server: Served, tmp_path: Path) -> None:
    url = server.publish("/a.gz", b"")
    server.state.html.add("/a.gz")
    with pytest.raises(DownloadError, match="HTML page"):
        fetch(url, tmp_path / "a.gz", md5="1" * 32, timeout=5, retries=0, progress=False)


def test_http_404_fails_at_once(server: Served, tmp_path: Path, backoffs: list[int]) -> None:
    with pytest.raises(DownloadError, match=r"HTTP 404.*by hand"):
        fetch(server.base + "/missing.gz", tmp_path / "m.gz", timeout=5, progress=False)
    assert len(server.state.gets()) == 1 and backoffs == []


def test_unreachable_host_fails_fast_with_the_manual_route(tmp_path: Path, backoffs: list[int]) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/images_001.tar.gz"
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        fetch(url, tmp_path / "images_001.tar.gz", timeout=30, retries=5, progress=False, hint=MANUAL_HINT)
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert "cannot reach 127.0.0.1" in message
    assert NIH_PAGE in message and KAGGLE_DATASET in message and "data.source" in message
    assert backoffs == []  # no retry loop at all
    assert elapsed < 5  # a behavioural bound (one refused connect), not a speed benchmark


# ------------------------------------------------------------------------------ safe_extract


def test_safe_extract_writes_the_official_layout(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("images/00000001_000.png", "images/00000002_000.png"):
            info = tarfile.TarInfo(name)
            info.size = 8
            tar.addfile(info, io.BytesIO(b"12345678"))
        link = tarfile.TarInfo("images/alias.png")  # a link that stays inside is fine
        link.type, link.linkname = tarfile.SYMTYPE, "00000001_000.png"
        tar.addfile(link)
    archive = tmp_path / "ok.tar.gz"
    archive.write_bytes(buf.getvalue())
    names = safe_extract(archive, tmp_path / "raw", progress=False)
    assert names == ["images/00000001_000.png", "images/00000002_000.png"]
    assert (tmp_path / "raw/images/00000002_000.png").read_bytes() == b"12345678"
    assert (tmp_path / "raw/images/alias.png").read_bytes() == b"12345678"


@pytest.mark.parametrize(
    "kind",
    [
        "dotdot",
        "nested-dotdot",
        "absolute",
        "symlink-relative",
        "symlink-absolute",
        "symlink-chain",
        "hardlink",
        "device",
    ],
)
def test_safe_extract_refuses_unsafe_members(tmp_path: Path, kind: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    target = tmp_path / "work" / "raw"
    data, bad_name = _malicious_targz(kind, outside)
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(data)
    before = _tree(tmp_path)
    with pytest.raises(ArchiveError) as info:
        safe_extract(archive, target, progress=False)
    message = str(info.value)
    assert str(archive) in message and repr(bad_name) in message and "nothing was extracted" in message
    assert list(target.iterdir()) == []  # not even the good member before the bad one
    assert _tree(tmp_path) - {"work", "work/raw"} == before  # nothing written anywhere else


def test_safe_extract_refuses_a_broken_archive(tmp_path: Path) -> None:
    archive = tmp_path / "broken.tar.gz"
    archive.write_bytes(_targz({"images/00000001_000.png": _png(1)})[:200])
    with pytest.raises(ArchiveError, match="broken.tar.gz"):
        safe_extract(archive, tmp_path / "raw", progress=False)


# ------------------------------------------------------------------------------ download_nih


def test_download_nih_end_to_end_then_no_second_download(server: Served, tmp_path: Path) -> None:
    table, urls, expected = _publish_nih(server)
    raw = tmp_path / "raw"
    kwargs = dict(urls=urls, timeout=5, retries=1, keep_archives=False, archive_table=table, progress=False)
    download_nih(raw, archives=[1, 2], **kwargs)
    assert sorted(p.relative_to(raw).as_posix() for p in raw.glob("images/*.png")) == sorted(expected)
    for name, data in expected.items():
        assert (raw / name).read_bytes() == data
    for name in NIH_METADATA_FILES:
        assert (raw / name).read_bytes() == server.state.files[f"/meta/{name}"]
    entry = server.state.files[f"/meta/{DATA_ENTRY_V2020}"].decode()
    assert (raw / "Data_Entry.csv").read_text() == entry.replace("Patient Sex", "Patient Gender")
    assert sorted(p.name for p in (raw / "archives").iterdir()) == [
        "images_001.tar.gz.extracted",
        "images_002.tar.gz.extracted",
    ]  # archives deleted after extraction, markers kept
    assert len(server.state.gets()) == 6

    download_nih(raw, archives=[1, 2], **kwargs)
    assert len(server.state.gets()) == 6  # second run: nothing downloaded again
    assert not [r for r in server.state.requests if r[0] == "HEAD"]


def test_download_nih_keeps_archives_and_adds_new_ones(server: Served, tmp_path: Path) -> None:
    table, urls, _ = _publish_nih(server)
    raw = tmp_path / "raw"
    kwargs = dict(urls=urls, timeout=5, retries=1, keep_archives=True, archive_table=table, progress=False)
    download_nih(raw, archives=[1], **kwargs)
    assert (raw / "archives/images_001.tar.gz").is_file()
    assert len(list(raw.glob("images/*.png"))) == 3
    n = len(server.state.gets())
    download_nih(raw, archives=[1, 2], **kwargs)
    assert server.state.gets()[n:] == [("GET", "/static/archive2.gz", None)]
    assert len(list(raw.glob("images/*.png"))) == 6


def test_download_nih_refuses_an_html_data_entry(server: Served, tmp_path: Path) -> None:
    table, urls, _ = _publish_nih(server)
    server.state.html.add(f"/meta/{DATA_ENTRY_V2020}")
    raw = tmp_path / "raw"
    with pytest.raises(DownloadError) as info:
        download_nih(
            raw,
            archives=[1],
            urls=urls,
            timeout=5,
            retries=1,
            keep_archives=False,
            archive_table=table,
            progress=False,
        )
    message = str(info.value)
    assert DATA_ENTRY_V2020 in message and "HTML page" in message and urls[DATA_ENTRY_V2020] in message
    assert not (raw / DATA_ENTRY_V2020).exists()
    assert not server.state.gets("/static/archive1.gz")  # stopped before the archives


def test_download_nih_replaces_a_stale_html_metadata_file(server: Served, tmp_path: Path) -> None:
    table, urls, _ = _publish_nih(server, n_archives=1)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / BBOX_LIST).write_bytes(HTML_PAGE)
    download_nih(raw, archives=[], urls=urls, timeout=5, retries=1, keep_archives=False, archive_table=table)
    assert (raw / BBOX_LIST).read_bytes() == server.state.files[f"/meta/{BBOX_LIST}"]


def test_download_nih_offline_names_the_manual_route(tmp_path: Path, backoffs: list[int]) -> None:
    closed = f"http://127.0.0.1:{_closed_port()}"
    urls = {name: f"{closed}/meta/{name}" for name in NIH_METADATA_FILES}
    with pytest.raises(DownloadError, match="cannot reach 127.0.0.1") as info:
        download_nih(tmp_path, archives=[1], urls=urls, timeout=5, retries=3, keep_archives=False)
    assert NIH_PAGE in str(info.value) and "data.source" in str(info.value)
    assert backoffs == []


def test_download_nih_checks_its_arguments(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"unknown archive number\(s\) \[13\]"):
        download_nih(tmp_path, archives=[1, 13], urls={}, timeout=1, retries=0, keep_archives=False)
    with pytest.raises(DownloadError, match=rf"no download URL for \['{BBOX_LIST}'\].*data.nih.bbox_url"):
        download_nih(tmp_path, archives=[1], urls={BBOX_LIST: ""}, timeout=1, retries=0, keep_archives=False)


def test_download_nih_uses_a_hand_copied_bbox_list(server: Served, tmp_path: Path) -> None:
    table, urls, _ = _publish_nih(server, n_archives=1)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / BBOX_LIST).write_bytes(server.state.files[f"/meta/{BBOX_LIST}"])
    del urls[BBOX_LIST]  # data.nih.bbox_url: null
    download_nih(raw, archives=[1], urls=urls, timeout=5, retries=1, keep_archives=False, archive_table=table)
    assert not server.state.gets(f"/meta/{BBOX_LIST}")
    assert len(list(raw.glob("images/*.png"))) == 3


def test_lasting_server_errors_stop_and_keep_the_part_file(server: Served, tmp_path: Path) -> None:
    data = _png(10, 8000)
    url = server.publish("/a.gz", data)
    (tmp_path / "a.gz.part").write_bytes(data[:1000])
    server.state.status_once["/a.gz"] = 503
    with pytest.raises(DownloadError, match=r"failed 1 time\(s\) in a row \(HTTP 503.*run again to resume"):
        fetch(url, tmp_path / "a.gz", size=len(data), timeout=5, retries=0, progress=False)
    assert (tmp_path / "a.gz.part").read_bytes() == data[:1000]
    assert (
        fetch(url, tmp_path / "a.gz", size=len(data), timeout=5, retries=0, progress=False).read_bytes()
        == data
    )
    assert [r[2] for r in server.state.gets()] == ["bytes=1000-", "bytes=1000-"]
