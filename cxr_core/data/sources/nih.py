"""Download NIH ChestX-ray14: stream, resume, MD5-check and safely extract the official archives.

Why it is written this way:

* NIH's Box share serves 12 archives of 2-4 GB and transfers break: every file is streamed into
  ``<name>.part`` and, after an interruption, resumed with an HTTP ``Range`` request instead of
  starting over. Only ``GET`` is used: Box answers ``HEAD`` with a false 404.
* The MD5 sums from NIH's FAQ are the only proof that an archive is intact: a mismatch deletes the
  file and downloads it again, a lasting mismatch is an error that names both sums.
* A tar archive can name members outside the target folder (``../x``, absolute paths, links):
  every member is checked before anything is written.
* Box sometimes answers with an HTML page instead of a file: metadata files are checked with
  :func:`cxr_core.data.metadata.check_metadata_file` right after download.
* An offline machine must fail at once and say what to do instead (download by hand, point
  ``data.source`` at the copy), not retry for minutes.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from tqdm import tqdm

from cxr_core.data.metadata import (
    BBOX_LIST,
    DATA_ENTRY,
    METADATA_FILES,
    TEST_LIST,
    TRAIN_VAL_LIST,
    MetadataError,
    check_metadata_file,
    looks_like_html,
)

log = logging.getLogger(__name__)

NIH_PAGE = "https://nihcc.app.box.com/v/ChestXray-NIHCC"
KAGGLE_DATASET = "nih-chest-xrays/data"
MANUAL_HINT = (
    f"download the files by hand from {NIH_PAGE} (or the Kaggle dataset {KAGGLE_DATASET}) "
    "and set data.source in params.yaml to the folder that holds them"
)

#: Box's direct-download link for a file of the ChestXray-NIHCC share (``file_id`` without ``f_``).
BOX_FILE_URL = (
    "https://nihcc.app.box.com/index.php?rm=box_download_shared_file"
    "&vanity_name=ChestXray-NIHCC&file_id=f_{file_id}"
)
METADATA_FILE_IDS: dict[str, str] = {
    DATA_ENTRY: "219760887468",
    TRAIN_VAL_LIST: "256056636701",
    TEST_LIST: "256055473534",
}
#: Default URLs of three metadata files; ``BBox_List_2017.csv``'s URL must come from the caller.
METADATA_URLS: dict[str, str] = {
    name: BOX_FILE_URL.format(file_id=fid) for name, fid in METADATA_FILE_IDS.items()
}

USER_AGENT = "cxr-pipeline/0.1 (python urllib)"
#: First wait after a request that failed without progress; doubles per failure, capped.
BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
#: Hard bound on requests for one file (a server that truncates every answer still terminates).
MAX_REQUESTS = 10_000
#: Hard bound on chunks read from one answer (1 MiB chunks: 1 TiB).
MAX_CHUNKS = 1 << 20
#: Suffix of the marker written next to an archive once it has been extracted.
EXTRACTED_SUFFIX = ".extracted"

_TRANSIENT_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")


class DownloadError(RuntimeError):
    """A download or extraction failed in a way the user has to act on; the message says how."""


@dataclass(frozen=True)
class Archive:
    """One of NIH's image archives: its number, Box URL, size in bytes and MD5 (from NIH's FAQ)."""

    index: int
    url: str
    size: int
    md5: str

    @property
    def filename(self) -> str:
        """The official file name, ``images_001.tar.gz`` ... ``images_012.tar.gz``."""
        return f"images_{self.index:03d}.tar.gz"


_BOX_STATIC = "https://nihcc.box.com/shared/static/"
#: (number, Box key, bytes, MD5) of the 12 official archives, as in NIH's FAQ.
_NIH_ROWS: tuple[tuple[int, str, int, str], ...] = (
    (1, "vfk49d74nhbxq3nqjg0900w5nvkorp5c", 2008470987, "fe8ed0a6961412fddcbb3603c11b3698"),
    (2, "i28rlmbvmfjbl8p2n3ril0pptcmcu9d1", 3952623504, "ab07a2d7cbe6f65ddd97b4ed7bde10bf"),
    (3, "f1t00wrtdk94satdfb9olcolqx20z2jp", 3929234850, "2301d03bde4c246388bad3876965d574"),
    (4, "0aowwzs5lhjrceb3qp67ahp0rd1l1etg", 3838903983, "9f1b7f5aae01b13f4bc8e2c44a4b8ef6"),
    (5, "v5e3goj22zr6h8tzualxfsqlqaygfbsn", 3935496531, "1861f3cd0ef7734df8104f2b0309023b"),
    (6, "asi7ikud9jwnkrnkj99jnpfkjdes7l6l", 3986301172, "456b53a8b351afd92a35bc41444c58c8"),
    (7, "jn1b4mw4n6lnh74ovmcjb8y48h8xj07n", 4016328426, "1075121ea20a137b87f290d6a4a5965e"),
    (8, "tvpxmn7qyrgl0w8wfh9kqfjskv6nmm1j", 4018347353, "b61f34cec3aa69f295fbb593cbd9d443"),
    (9, "upyy3ml7qdumlgk2rfcvlb9k6gvqq2pj", 4111327929, "442a3caa61ae9b64e61c561294d1e183"),
    (10, "l6nilvfa9cg3s28tqv1qc1olm3gnz54p", 4181556296, "09ec81c4c31e32858ad8cf965c494b74"),
    (11, "hhq8fkdgvcari67vfhs7ppg2w6ni4jze", 4187084020, "499aefc67207a5a97692424cf5dbeed5"),
    (12, "ioqwiy20ihqwyr8pf4c24eazhh281pbu", 2914187733, "dc9fda1757c2de0032b63347a7d2895c"),
)
NIH_ARCHIVES: tuple[Archive, ...] = tuple(
    Archive(index, f"{_BOX_STATIC}{key}.gz", size, md5) for index, key, size, md5 in _NIH_ROWS
)


# --------------------------------------------------------------------------------------- fetch


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
    """True when a downloaded file is really a web page (Box's answer to a link it won't serve)."""
    try:
        with open(path, "rb") as fh:
            return looks_like_html(fh.read(512))
    except OSError:
        return False


def _check_free_space(folder: Path, needed: int, name: str) -> None:
    """Refuse to start a multi-GB transfer that cannot fit, instead of failing hours later."""
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DownloadError(
            f"{folder}: {free / 1e9:.1f} GB free but {name} needs {needed / 1e9:.1f} GB more; "
            f"free some space, or {MANUAL_HINT}"
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
) -> Path:
    """Download ``url`` to ``dest``, resuming a broken transfer and checking size and MD5.

    The bytes go to ``dest`` + ``.part`` and are renamed only once complete and verified, so an
    existing ``dest`` is always a finished file (it is re-checked, not downloaded again). A broken
    transfer resumes with ``Range: bytes=N-`` (at most ``retries`` failures in a row without
    progress); a size / MD5 mismatch deletes the file and downloads it again from scratch (at most
    ``retries`` times), then raises :class:`DownloadError` naming the url, the file and both sums.
    An unreachable host fails at once with the manual-download route.
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
    part = dest.with_suffix(dest.suffix + ".part")
    if size is not None:
        have = part.stat().st_size if part.is_file() else 0
        _check_free_space(dest.parent, max(size - have, 0), dest.name)
    problem = None
    html = False
    for attempt in range(1, retries + 2):
        _transfer(
            url, part, size=size, timeout=timeout, retries=retries, chunk_size=chunk_size, progress=progress
        )
        problem = _verify(part, size, md5, progress)
        if problem is None:
            part.replace(dest)
            log.info("%s: downloaded%s", dest, " (MD5 verified)" if md5 else "")
            return dest
        html = _starts_with_html(part)
        part.unlink()
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
        f"If this persists, {MANUAL_HINT}"
    )


def _backoff(failures: int) -> None:
    """Wait before retrying a request that made no progress (doubling, capped)."""
    time.sleep(min(BACKOFF_S * 2 ** (failures - 1), MAX_BACKOFF_S))


def _transfer(
    url: str,
    part: Path,
    *,
    size: int | None,
    timeout: float,
    retries: int,
    chunk_size: int,
    progress: bool,
) -> None:
    """Bring ``part`` to the whole remote file, resuming with ``Range`` requests after breaks."""
    failures = 0  # failures in a row without a single byte of progress
    reached = False  # whether any HTTP answer came back: if never, the host is unreachable
    last_error = ""
    for _ in range(MAX_REQUESTS):
        have = part.stat().st_size if part.is_file() else 0
        if size is not None and have == size:
            return
        if size is not None and have > size:
            log.warning(
                "%s: %d bytes, more than the expected %d; restarting from zero", part.name, have, size
            )
            part.unlink()
            have = 0
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        request = urllib.request.Request(url, headers=headers, method="GET")
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            reached = True
            range_header = exc.headers.get("Content-Range", "") if exc.headers else ""
            exc.close()
            if exc.code == 416 and have:
                match = _UNSATISFIED_RANGE.search(range_header)
                total = int(match.group(1)) if match else None
                if total == have or (total is None and size is None):
                    return  # the part already holds the whole file: size / MD5 decide
                log.warning("%s: server refused to resume at byte %d (HTTP 416); restarting", part.name, have)
                part.unlink()
                failures += 1
                last_error = "HTTP 416 Range Not Satisfiable"
            elif exc.code in _TRANSIENT_HTTP:
                failures += 1
                last_error = f"HTTP {exc.code} {exc.reason}"
                if failures <= retries:
                    log.warning("%s: %s; retrying", url, last_error)
                    _backoff(failures)
            else:
                raise DownloadError(
                    f"{url}: HTTP {exc.code} {exc.reason} while downloading {part.name.removesuffix('.part')}. "
                    f"If the link no longer works, {MANUAL_HINT}"
                ) from exc
        except (OSError, http.client.HTTPException) as exc:  # URLError, refused, DNS, timeout, reset
            reason = getattr(exc, "reason", exc)
            if not reached:
                host = urllib.parse.urlsplit(url).hostname or url
                raise DownloadError(
                    f"cannot reach {host} ({reason}) to download {url}: this machine may be offline or the "
                    f"host blocked. To go on without the network, {MANUAL_HINT}"
                ) from exc
            failures += 1
            last_error = str(reason)
            if failures <= retries:
                log.warning("%s: %s; retrying", url, last_error)
                _backoff(failures)
        else:
            reached = True
            with response:
                received, why = _receive(response, part, have, size, chunk_size, progress)
            if why is None:
                return
            last_error = why
            if received:
                failures = 0
                log.info("%s: %s; resuming", part.name, why)
            else:
                failures += 1
                if failures <= retries:
                    log.warning("%s: %s; retrying", part.name, why)
                    _backoff(failures)
        if failures > retries:
            break
    raise DownloadError(
        f"{url}: downloading {part.name.removesuffix('.part')} failed {failures} time(s) in a row ({last_error}); "
        f"the partial file {part} is kept: run again to resume. If this persists, {MANUAL_HINT}"
    )


def _receive(
    response: http.client.HTTPResponse,
    part: Path,
    have: int,
    size: int | None,
    chunk_size: int,
    progress: bool,
) -> tuple[int, str | None]:
    """Write one answer's body into ``part``; return (bytes received, None if complete else why not)."""
    headers = response.headers
    if response.status == 206:
        match = _CONTENT_RANGE.search(headers.get("Content-Range", ""))
        start = int(match.group(1)) if match else -1
        if start != have:
            part.unlink(missing_ok=True)
            return 0, f"server resumed at byte {start} instead of {have}; restarting from zero"
        total = int(match.group(3)) if match and match.group(3) != "*" else size
        mode = "ab"
    else:
        if have:
            log.warning(
                "%s: server ignored the Range request (HTTP %d); restarting from zero",
                part.name,
                response.status,
            )
        have = 0
        mode = "wb"
        length = headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else size
    if size is not None and total is not None and total != size:
        log.warning("%s: server reports %d bytes, expected %d", part.name, total, size)
    received = 0
    error = None
    with (
        open(part, mode) as fh,
        tqdm(
            total=total,
            initial=have,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=part.name.removesuffix(".part"),
            disable=not progress,
            leave=False,
        ) as bar,
    ):
        for _ in range(MAX_CHUNKS):
            try:
                chunk = response.read(chunk_size)
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


# ------------------------------------------------------------------------------------- extract


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _is_absolute(name: str) -> bool:
    return name.startswith(("/", "\\")) or bool(PureWindowsPath(name).drive) or os.path.isabs(name)


#: Most symlink hops followed while resolving one member path (as the kernel's ELOOP limit).
MAX_LINK_HOPS = 40


def _resolve_in_archive(path: str, links: Mapping[str, str]) -> str | None:
    """Resolve ``path`` (relative to the target) through the archive's own symlinks, lexically.

    Returns the resolved relative path, or None when it climbs above the target or meets an
    absolute link: a lexical check alone misses chains such as ``a/b -> ..`` then ``x -> a/b/..``.
    """
    parts: list[str] = []
    todo = path.replace("\\", "/").split("/")
    todo.reverse()
    hops = 0
    while todo:
        part = todo.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
            continue
        parts.append(part)
        link = links.get("/".join(parts))
        if link is not None:
            hops += 1
            if hops > MAX_LINK_HOPS or _is_absolute(link):
                return None
            parts.pop()  # the link is relative to its own folder
            todo.extend(reversed(link.replace("\\", "/").split("/")))
    return "/".join(parts)


def _member_problem(member: tarfile.TarInfo, root: str, links: Mapping[str, str]) -> str | None:
    """Why extracting ``member`` under ``root`` would be unsafe, or None when it is safe.

    ``links`` maps every symlink member of the archive (normalised name) to its target.
    """
    name = member.name
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        return "is a device file or FIFO"
    if _is_absolute(name):
        return "has an absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "has a '..' path component"
    parent, _, leaf = name.replace("\\", "/").rstrip("/").rpartition("/")
    folder = _resolve_in_archive(parent, links)
    # Through the archive's own links, then through links already on disk under the target.
    if folder is None or not _inside(os.path.realpath(os.path.join(root, folder, leaf)), root):
        return "would be written outside the target folder"
    if member.issym() or member.islnk():
        link = member.linkname
        kind = "symlink" if member.issym() else "hard link"
        if _is_absolute(link):
            return f"is a {kind} to the absolute path {link!r}"
        # A symlink is relative to its own folder; a hard link to the archive root.
        pointed = _resolve_in_archive(f"{folder}/{link}" if member.issym() else link, links)
        if pointed is None or not _inside(os.path.realpath(os.path.join(root, pointed)), root):
            return f"is a {kind} pointing outside the target folder ({link!r})"
    return None


def safe_extract(archive: Path, target: Path, *, progress: bool = True) -> list[str]:
    """Extract a tar(.gz) into ``target`` after checking every member; return the files' names.

    Any member that is absolute, has ``..``, would land outside ``target`` (also through a link)
    or is a device file makes the whole archive refused before anything is written.
    """
    archive = Path(archive)
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(target)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            links = {_resolve_in_archive(m.name, {}): m.linkname for m in members if m.issym()}
            bad = [(m.name, why) for m in members if (why := _member_problem(m, root, links)) is not None]
            if bad:
                more = f" (and {len(bad) - 1} more bad member(s))" if len(bad) > 1 else ""
                raise DownloadError(
                    f"{archive}: refusing to extract: member {bad[0][0]!r} {bad[0][1]}{more}; "
                    f"nothing was extracted from this archive"
                )
            # Belt and braces: the stdlib's "data" filter (Python >= 3.10.12) re-checks every member.
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(
                root,
                members=tqdm(
                    members, desc=f"extract {archive.name}", unit="file", leave=False, disable=not progress
                ),
                **extra,
            )
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise DownloadError(
            f"{archive}: not a readable tar archive ({exc}); delete it and download again"
        ) from exc
    files = [m.name for m in members if m.isfile()]
    log.info("%s: extracted %d file(s) into %s", archive.name, len(files), target)
    return files


# --------------------------------------------------------------------------------------- NIH


def _is_valid_metadata(raw_dir: Path, name: str) -> bool:
    """True when ``raw_dir`` already holds a plausible copy of metadata file ``name``."""
    try:
        check_metadata_file(raw_dir / name, name)
    except MetadataError:
        return False
    return True


def _fetch_metadata(
    name: str, url: str, raw_dir: Path, *, timeout: float, retries: int, progress: bool
) -> None:
    """Download one metadata file (unless a valid copy is there) and refuse an HTML page."""
    dest = raw_dir / name
    if dest.is_file():
        try:
            check_metadata_file(dest, name)
            log.info("%s: already present, skipping", dest)
            return
        except MetadataError as exc:
            log.warning("%s; deleting it and downloading again", exc)
            dest.unlink()
    fetch(url, dest, timeout=timeout, retries=retries, progress=progress)
    try:
        check_metadata_file(dest, name)
    except MetadataError as exc:
        dest.unlink(missing_ok=True)
        raise DownloadError(
            f"{url} did not give {name}: {exc}. The file was deleted; check its link (data.nih in "
            f"params.yaml) or {MANUAL_HINT}"
        ) from exc


def download_nih(
    raw_dir: Path,
    *,
    archives: Sequence[int],
    urls: Mapping[str, str],
    timeout: float,
    retries: int,
    keep_archives: bool,
    archive_table: Sequence[Archive] = NIH_ARCHIVES,
    progress: bool = True,
) -> None:
    """Put NIH ChestX-ray14 into ``raw_dir`` in the official layout (``images/*.png`` + metadata).

    ``urls`` maps metadata file names to URLs and is laid over :data:`METADATA_URLS`; a file with
    no URL (``BBox_List_2017.csv`` unless given) must already be in ``raw_dir``, copied by hand.
    Metadata is fetched and checked before any archive. Archives land in ``raw_dir/archives/``,
    are MD5-checked, extracted into ``raw_dir`` and marked as extracted so a re-run skips them;
    ``keep_archives=False`` deletes each archive once extracted. ``archive_table`` replaces
    NIH's table (tests serve small archives locally).
    """
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    table = {a.index: a for a in archive_table}
    unknown = [i for i in archives if i not in table]
    if unknown:
        raise DownloadError(
            f"unknown archive number(s) {unknown} in data.nih.archives; allowed: {sorted(table)}"
        )
    all_urls = {**METADATA_URLS, **{name: url for name, url in urls.items() if url}}
    missing = [
        name for name in METADATA_FILES if name not in all_urls and not _is_valid_metadata(raw_dir, name)
    ]
    if missing:
        raise DownloadError(
            f"no download URL for {missing} and no copy in {raw_dir}: set its link from {NIH_PAGE} in "
            f"params.yaml (data.nih.bbox_url for {BBOX_LIST}), or copy the file(s) into {raw_dir} by hand; "
            f"or {MANUAL_HINT}"
        )
    for name in METADATA_FILES:
        if name in all_urls:
            _fetch_metadata(
                name, all_urls[name], raw_dir, timeout=timeout, retries=retries, progress=progress
            )
        else:
            log.info("%s: no URL given, using the copy already in %s", name, raw_dir)

    archive_dir = raw_dir / "archives"
    archive_dir.mkdir(exist_ok=True)
    for index in dict.fromkeys(archives):  # de-duplicated, order kept
        entry = table[index]
        marker = archive_dir / (entry.filename + EXTRACTED_SUFFIX)
        if marker.is_file():
            try:
                done = json.loads(marker.read_text())
            except ValueError:
                done = {}
            if done.get("md5") == entry.md5.lower():
                log.info("%s: already extracted, skipping", entry.filename)
                continue
        path = fetch(
            entry.url,
            archive_dir / entry.filename,
            size=entry.size,
            md5=entry.md5,
            timeout=timeout,
            retries=retries,
            progress=progress,
        )
        names = safe_extract(path, raw_dir, progress=progress)
        if not any(n.startswith("images/") for n in names):
            log.warning("%s: no images/ member; not the official layout", entry.filename)
        marker.write_text(
            json.dumps({"archive": entry.filename, "md5": entry.md5.lower(), "files": len(names)})
        )
        if not keep_archives:
            path.unlink()
            log.info("%s: deleted after extraction (data.nih.keep_archives is false)", path)
