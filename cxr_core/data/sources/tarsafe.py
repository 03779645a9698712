"""Extract a tar(.gz) only when every member stays inside the target folder.

A tar archive can name members outside the target (``../x``, absolute paths, symlinks or hard
links that climb out, chains of links that only climb out together) or device files: every member
is checked before anything is written, so a bad archive leaves the target untouched. The
stdlib's ``data`` filter re-checks each member as it is written.
"""

from __future__ import annotations

import logging
import os
import tarfile
import zlib
from collections.abc import Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath

from tqdm import tqdm

from cxr_core.errors import CxrError

log = logging.getLogger(__name__)

#: Most symlink hops followed while resolving one member path (as the kernel's ELOOP limit).
MAX_LINK_HOPS = 40


class ArchiveError(CxrError, RuntimeError):
    """An archive is unreadable, or unsafe to extract (then nothing was extracted from it)."""


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _is_absolute(name: str) -> bool:
    return name.startswith(("/", "\\")) or bool(PureWindowsPath(name).drive) or os.path.isabs(name)


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
                raise ArchiveError(
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
        raise ArchiveError(
            f"{archive}: not a readable tar archive ({exc}); delete it and download again"
        ) from exc
    files = [m.name for m in members if m.isfile()]
    log.info("%s: extracted %d file(s) into %s", archive.name, len(files), target)
    return files
