"""Resumable, verified HTTP download of one large file (used for NIH's multi-GB archives).

Why it is written this way:

* Transfers of 2-4 GB break: the bytes are streamed into ``<name>.part`` and, after an
  interruption, resumed with an HTTP ``Range`` request instead of starting over. Only ``GET`` is
  used: some file shares (NIH's Box) answer ``HEAD`` with a false 404.
* A size / MD5 mismatch deletes the file and downloads it again; a lasting mismatch is an error
  that names both sums.
* An offline machine must fail at once and say what to do instead (the caller's ``hint``), not
  retry for minutes.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from cxr_core.data.metadata import looks_like_html
from cxr_core.errors import CxrError

log = logging.getLogger(__name__)

USER_AGENT = "cxr-pipeline/0.1 (python urllib)"
#: First wait after a request that failed without progress; doubles per failure, capped.
BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
#: Hard bound on requests for one file (a server that truncates every answer still terminates).
MAX_REQUESTS = 10_000
#: Hard bound on chunks read from one answer (1 MiB chunks: 1 TiB).
MAX_CHUNKS = 1 << 20
#: What error messages suggest when the caller names no better route.
DEFAULT_HINT = "download the file by hand and put it in place of the failed download"

_TRANSIENT_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")


class DownloadError(CxrError, RuntimeError):
    """A download failed in a way the user has to act on; the message says how."""


def file_md5(path: Path, *, chunk_size: int = 1 << 20, progress: bool = False) -> str:
    """Hex MD5 of a file, read in chunks (archives are 2-4 GB) with an optional progress bar."""
    path = Path(path)
    digest = hashlib.md5(usedforsecurity=False)
    with (
        open(path, "rb") as fh,
        tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"MD5 {path.name}",
            disable=not progress,
            leave=False,
        ) as bar,
    ):
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _verify(path: Path, size: int | None, md5: str | None, progress: bool) -> str | None:
    """Why ``path`` is not the expected file (size, MD5), or None when it is."""
    problems = []
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        problems.append(f"size {actual_size} bytes, expected {size}")
    if md5:
        actual = file_md5(path, progress=progress)
        if actual != md5:
            problems.append(f"MD5 mismatch: expected {md5}, actual {actual}")
    return "; ".join(problems) or None


def _starts_with_html(path: Path) -> bool:
    """True when a downloaded file is really a web page (a share's answer to a link it won't serve)."""
    try:
        with open(path, "rb") as fh:
            return looks_like_html(fh.read(512))
    except OSError:
        return False


def _check_free_space(folder: Path, needed: int, name: str, hint: str) -> None:
    """Refuse to start a multi-GB transfer that cannot fit, instead of failing hours later."""
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DownloadError(
            f"{folder}: {free / 1e9:.1f} GB free but {name} needs {needed / 1e9:.1f} GB more; "
            f"free some space, or {hint}"
        )


def fetch(
    url: str,
    dest: Path,
    *,
    size: int | None = None,
    md5: str | None = None,
    timeout: float = 60.0,
    retries: int = 3,
    chunk_size: int = 1 << 20,
    progress: bool = True,
    hint: str = DEFAULT_HINT,
) -> Path:
    """Download ``url`` to ``dest``, resuming a broken transfer and checking size and MD5.

    The bytes go to ``dest`` + ``.part`` and are renamed only once complete and verified, so an
    existing ``dest`` is always a finished file (it is re-checked, not downloaded again). A broken
    transfer resumes with ``Range: bytes=N-`` (at most ``retries`` failures in a row without
    progress); a size / MD5 mismatch deletes the file and downloads it again from scratch (at most
    ``retries`` times), then raises :class:`DownloadError` naming the url, the file and both sums.
    An unreachable host fails at once. Every error message ends with ``hint``: what the user can
    do instead (e.g. where to download the file by hand).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    md5 = md5.lower() if md5 else None
    if dest.is_file():
        problem = _verify(dest, size, md5, progress)
        if problem is None:
            log.info("%s: already downloaded%s, skipping", dest, " (MD5 verified)" if md5 else "")
            return dest
        log.warning("%s: existing file is not the expected one (%s); downloading it again", dest, problem)
        dest.unlink()
    job = _Job(url, dest.with_suffix(dest.suffix + ".part"), size, timeout, chunk_size, progress, hint)
    if size is not None:
        have = job.part.stat().st_size if job.part.is_file() else 0
        _check_free_space(dest.parent, max(size - have, 0), dest.name, hint)
    problem = None
    html = False
    for attempt in range(1, retries + 2):
        _transfer(job, retries)
        problem = _verify(job.part, size, md5, progress)
        if problem is None:
            job.part.replace(dest)
            log.info("%s: downloaded%s", dest, " (MD5 verified)" if md5 else "")
            return dest
        html = _starts_with_html(job.part)
        job.part.unlink()
        if attempt <= retries:
            log.warning(
                "%s: %s; deleted it, downloading again from scratch (retry %d of %d)",
                dest.name,
                problem,
                attempt,
                retries,
            )
    page = " (the server answered with an HTML page, not the file)" if html else ""
    raise DownloadError(
        f"{url} -> {dest}: {problem}{page} after {retries + 1} download(s); the file was deleted. "
        f"If this persists, {hint}"
    )


# ------------------------------------------------------------------------------ one transfer


@dataclass(frozen=True)
class _Job:
    """One file's transfer: where from, into which ``.part`` file, and how."""

    url: str
    part: Path
    size: int | None  # expected bytes, when known
    timeout: float
    chunk_size: int
    progress: bool
    hint: str

    @property
    def name(self) -> str:
        """The destination's file name (for messages)."""
        return self.part.name.removesuffix(".part")


@dataclass(frozen=True)
class _Attempt:
    """What one request did: completed the file, added ``received`` bytes, or failed with ``error``.

    ``answered`` is False when no HTTP answer came back at all; ``wait`` says whether to back off
    before the next request (a restart from zero goes at once).
    """

    done: bool = False
    received: int = 0
    error: str = ""
    answered: bool = True
    wait: bool = True


def _backoff(failures: int) -> None:
    """Wait before retrying a request that made no progress (doubling, capped)."""
    time.sleep(min(BACKOFF_S * 2 ** (failures - 1), MAX_BACKOFF_S))


def _transfer(job: _Job, retries: int) -> None:
    """Bring ``job.part`` to the whole remote file, resuming with ``Range`` requests after breaks.

    Gives up after more than ``retries`` failures in a row without a byte of progress; an answer
    that brought bytes resets the count.
    """
    failures = 0
    reached = False  # whether any HTTP answer came back: if never, the host is unreachable
    last_error = ""
    for _ in range(MAX_REQUESTS):
        have = _resume_offset(job)
        if job.size is not None and have == job.size:
            return
        attempt = _attempt(job, have, reached)
        reached = reached or attempt.answered
        if attempt.done:
            return
        last_error = attempt.error
        if attempt.received:
            failures = 0
            log.info("%s: %s; resuming", job.part.name, attempt.error)
            continue
        failures += 1
        if failures > retries:
            break
        if attempt.wait:
            log.warning("%s: %s; retrying", job.url, attempt.error)
            _backoff(failures)
    raise DownloadError(
        f"{job.url}: downloading {job.name} failed {failures} time(s) in a row ({last_error}); "
        f"the partial file {job.part} is kept: run again to resume. If this persists, {job.hint}"
    )


def _resume_offset(job: _Job) -> int:
    """Bytes of ``job.part`` to resume after; a part longer than the file is deleted (start at 0)."""
    have = job.part.stat().st_size if job.part.is_file() else 0
    if job.size is not None and have > job.size:
        log.warning(
            "%s: %d bytes, more than the expected %d; restarting from zero", job.part.name, have, job.size
        )
        job.part.unlink()
        return 0
    return have


def _attempt(job: _Job, have: int, reached: bool) -> _Attempt:
    """One ``GET`` (with ``Range: bytes=have-`` when resuming), its body appended to the part file."""
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(job.url, headers=headers, method="GET")
    try:
        response = urllib.request.urlopen(request, timeout=job.timeout)
    except urllib.error.HTTPError as exc:
        return _http_error(exc, job, have)
    except (OSError, http.client.HTTPException) as exc:  # URLError, refused, DNS, timeout, reset
        reason = getattr(exc, "reason", exc)
        if not reached:
            host = urllib.parse.urlsplit(job.url).hostname or job.url
            raise DownloadError(
                f"cannot reach {host} ({reason}) to download {job.url}: this machine may be offline or "
                f"the host blocked. To go on without the network, {job.hint}"
            ) from exc
        return _Attempt(error=str(reason), answered=False)
    with response:
        received, why = _receive(response, job, have)
    return _Attempt(done=why is None, received=received, error=why or "")


def _http_error(exc: urllib.error.HTTPError, job: _Job, have: int) -> _Attempt:
    """An error status: retry a transient one, restart on a refused resume, raise for the rest."""
    range_header = exc.headers.get("Content-Range", "") if exc.headers else ""
    exc.close()
    if exc.code == 416 and have:
        match = _UNSATISFIED_RANGE.search(range_header)
        total = int(match.group(1)) if match else None
        if total == have or (total is None and job.size is None):
            return _Attempt(done=True)  # the part already holds the whole file: size / MD5 decide
        log.warning("%s: server refused to resume at byte %d (HTTP 416); restarting", job.part.name, have)
        job.part.unlink()
        return _Attempt(error="HTTP 416 Range Not Satisfiable", wait=False)
    if exc.code in _TRANSIENT_HTTP:
        return _Attempt(error=f"HTTP {exc.code} {exc.reason}")
    raise DownloadError(
        f"{job.url}: HTTP {exc.code} {exc.reason} while downloading {job.name}. "
        f"If the link no longer works, {job.hint}"
    ) from exc


def _body_start(response: http.client.HTTPResponse, job: _Job, have: int) -> tuple[int, int | None]:
    """Byte offset of the answer's body in the file, and the file's size (None: unknown).

    A 206 answer starts where its ``Content-Range`` says (-1 when unreadable); any other answer
    is the whole file from byte 0.
    """
    headers = response.headers
    if response.status == 206:
        match = _CONTENT_RANGE.search(headers.get("Content-Range", ""))
        start = int(match.group(1)) if match else -1
        return start, int(match.group(3)) if match and match.group(3) != "*" else job.size
    if have:
        log.warning(
            "%s: server ignored the Range request (HTTP %d); restarting from zero",
            job.part.name,
            response.status,
        )
    length = headers.get("Content-Length")
    return 0, int(length) if length and length.isdigit() else job.size


def _receive(response: http.client.HTTPResponse, job: _Job, have: int) -> tuple[int, str | None]:
    """Write one answer's body into the part file; return (bytes received, None if complete else why not)."""
    start, total = _body_start(response, job, have)
    if response.status == 206 and start != have:
        job.part.unlink(missing_ok=True)
        return 0, f"server resumed at byte {start} instead of {have}; restarting from zero"
    have = start
    if job.size is not None and total is not None and total != job.size:
        log.warning("%s: server reports %d bytes, expected %d", job.part.name, total, job.size)
    received = 0
    error: BaseException | None = None
    with (
        open(job.part, "ab" if have else "wb") as fh,
        tqdm(
            total=total,
            initial=have,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=job.name,
            disable=not job.progress,
            leave=False,
        ) as bar,
    ):
        for _ in range(MAX_CHUNKS):
            try:
                chunk = response.read(job.chunk_size)
            except (OSError, http.client.HTTPException) as exc:  # reset, timeout, IncompleteRead
                error = exc
                break
            if not chunk:
                break
            fh.write(chunk)  # a write error (disk full) is not a network problem: let it propagate
            received += len(chunk)
            bar.update(len(chunk))
        else:
            error = RuntimeError(f"more than {MAX_CHUNKS} chunks in one answer")
    now = have + received
    if error is not None:
        return received, f"transfer broke after {now} bytes ({error!r})"
    if total is not None and now < total:
        return received, f"transfer ended after {now} of {total} bytes"
    return received, None
