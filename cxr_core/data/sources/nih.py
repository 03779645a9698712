"""Download NIH ChestX-ray14: the official metadata files and the 12 image archives.

Why it is written this way:

* NIH's Box share serves 12 archives of 2-4 GB; :func:`cxr_core.data.sources.http.fetch`
  resumes broken transfers and checks each archive against the MD5 from NIH's FAQ, the only proof
  that it is intact.
* Archives are extracted with :func:`cxr_core.data.sources.tarsafe.safe_extract` (no member may
  land outside ``data/raw``), then marked as extracted so a re-run skips them.
* Box sometimes answers with an HTML page instead of a file: metadata files are checked with
  :func:`cxr_core.data.metadata.check_metadata_file` right after download.
* The files keep NIH's names (a re-run finds them and skips the download); the label table is also
  written as ``Data_Entry.csv``, the raw folder's one name for it whatever the source, before any
  archive is fetched.
* Every failure names the manual route (:data:`MANUAL_HINT`): download by hand, point
  ``data.source`` at the copy.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cxr_core.data.metadata import (
    BBOX_LIST,
    DATA_ENTRY,
    DATA_ENTRY_V2020,
    NIH_METADATA_FILES,
    TEST_LIST,
    TRAIN_VAL_LIST,
    MetadataError,
    check_metadata_file,
    normalise_data_entry,
)
from cxr_core.data.sources.http import DownloadError, fetch
from cxr_core.data.sources.tarsafe import safe_extract

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
    DATA_ENTRY_V2020: "219760887468",
    TRAIN_VAL_LIST: "256056636701",
    TEST_LIST: "256055473534",
}
#: Default URLs of three metadata files; ``BBox_List_2017.csv``'s URL must come from the caller.
METADATA_URLS: dict[str, str] = {
    name: BOX_FILE_URL.format(file_id=fid) for name, fid in METADATA_FILE_IDS.items()
}

#: Suffix of the marker written next to an archive once it has been extracted.
EXTRACTED_SUFFIX = ".extracted"


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
    fetch(url, dest, timeout=timeout, retries=retries, progress=progress, hint=MANUAL_HINT)
    try:
        check_metadata_file(dest, name)
    except MetadataError as exc:
        dest.unlink(missing_ok=True)
        raise DownloadError(
            f"{url} did not give {name}: {exc}. The file was deleted; check its link (data.nih in "
            f"params.yaml) or {MANUAL_HINT}"
        ) from exc


def _metadata_urls(raw_dir: Path, urls: Mapping[str, str]) -> dict[str, str]:
    """:data:`METADATA_URLS` overlaid with ``urls``; a file with no URL must already be in ``raw_dir``."""
    all_urls = {**METADATA_URLS, **{name: url for name, url in urls.items() if url}}
    missing = [
        name for name in NIH_METADATA_FILES if name not in all_urls and not _is_valid_metadata(raw_dir, name)
    ]
    if missing:
        raise DownloadError(
            f"no download URL for {missing} and no copy in {raw_dir}: set its link from {NIH_PAGE} in "
            f"params.yaml (data.nih.bbox_url for {BBOX_LIST}), or copy the file(s) into {raw_dir} by hand; "
            f"or {MANUAL_HINT}"
        )
    return all_urls


def _is_extracted(marker: Path, entry: Archive) -> bool:
    """True when ``marker`` records that this very archive (same MD5) was extracted."""
    if not marker.is_file():
        return False
    try:
        done = json.loads(marker.read_text())
    except ValueError:
        return False
    return isinstance(done, dict) and done.get("md5") == entry.md5.lower()


def _install_archive(
    entry: Archive, raw_dir: Path, *, timeout: float, retries: int, keep_archive: bool, progress: bool
) -> None:
    """Fetch one archive into ``raw_dir/archives``, extract it into ``raw_dir`` and mark it done."""
    archive_dir = raw_dir / "archives"
    marker = archive_dir / (entry.filename + EXTRACTED_SUFFIX)
    if _is_extracted(marker, entry):
        log.info("%s: already extracted, skipping", entry.filename)
        return
    path = fetch(
        entry.url,
        archive_dir / entry.filename,
        size=entry.size,
        md5=entry.md5,
        timeout=timeout,
        retries=retries,
        progress=progress,
        hint=MANUAL_HINT,
    )
    names = safe_extract(path, raw_dir, progress=progress)
    if not any(n.startswith("images/") for n in names):
        log.warning("%s: no images/ member; not the official layout", entry.filename)
    marker.write_text(json.dumps({"archive": entry.filename, "md5": entry.md5.lower(), "files": len(names)}))
    if not keep_archive:
        path.unlink()
        log.info("%s: deleted after extraction (data.nih.keep_archives is false)", path)


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
    Metadata is fetched and checked before any archive, and the label table is also written as
    ``Data_Entry.csv`` (the raw folder's name for it, whatever the source). Archives land in ``raw_dir/archives/``,
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
    all_urls = _metadata_urls(raw_dir, urls)
    for name in NIH_METADATA_FILES:
        if name in all_urls:
            _fetch_metadata(
                name, all_urls[name], raw_dir, timeout=timeout, retries=retries, progress=progress
            )
        else:
            log.info("%s: no URL given, using the copy already in %s", name, raw_dir)
    normalise_data_entry(raw_dir / DATA_ENTRY_V2020, raw_dir / DATA_ENTRY)

    (raw_dir / "archives").mkdir(exist_ok=True)
    for index in dict.fromkeys(archives):  # de-duplicated, order kept
        _install_archive(
            table[index],
            raw_dir,
            timeout=timeout,
            retries=retries,
            keep_archive=keep_archives,
            progress=progress,
        )
