"""Downloading tiny-ImageNet-200 (the study's real data), resumably and safely.

The archive is 248 MB from a university server that is slow and sometimes down, so the
download resumes from a `.part` file, the MD5 is checked before anything is unpacked, and
the unpacked folder appears atomically (a rename), so a half-unpacked dataset never looks
complete. When the machine is offline the error says where to put the data by hand.
Only the standard library is used (urllib), so no extra dependency is needed.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath

from tqdm import tqdm

from lookalike.errors import DataError

__all__ = [
    "TINY_IMAGENET_URL",
    "TINY_IMAGENET_SIZE_BYTES",
    "TINY_IMAGENET_MD5",
    "TINY_IMAGENET_DIRNAME",
    "fetch_tiny_imagenet",
]

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
# Size and MD5 of the official archive. Not checked against the server from here (no
# internet); both agree across several independent public records (torchvision-style
# dataset classes in avalanche and others, and users' logs of verified downloads that
# report "248,100,043 bytes, MD5 90528d7c...").
TINY_IMAGENET_SIZE_BYTES = 248_100_043
TINY_IMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
TINY_IMAGENET_DIRNAME = "tiny-imagenet-200"

_ZIP_NAME = TINY_IMAGENET_DIRNAME + ".zip"
_CHUNK_BYTES = 1 << 20
_TIMEOUT_S = 30.0  # per socket operation (connect, each read), not for the whole download
_ATTEMPTS = 3  # a connection that drops mid-way is resumed this many times in one call


def fetch_tiny_imagenet(
    dest: str | os.PathLike,
    url: str = TINY_IMAGENET_URL,
    md5: str | None = TINY_IMAGENET_MD5,
    progress: bool = True,
    timeout_s: float = _TIMEOUT_S,
) -> Path:
    """Make sure `dest/tiny-imagenet-200` holds the dataset and return that path.

    Does nothing when `dest/tiny-imagenet-200/wnids.txt` exists. Otherwise uses
    `dest/tiny-imagenet-200.zip` if it is there (e.g. copied by hand), else downloads it
    from `url` (resuming `dest/tiny-imagenet-200.zip.part`), checks its MD5 (skipped when
    `md5` is None) and unpacks it. `timeout_s` applies to each socket operation.
    """
    dest = Path(os.path.abspath(os.path.expanduser(os.fspath(dest))))
    target = dest / TINY_IMAGENET_DIRNAME
    if (target / "wnids.txt").is_file():
        return target
    if target.exists() and not (target.is_dir() and not any(target.iterdir())):
        raise DataError(f"{target} exists but holds no wnids.txt (an incomplete copy?); delete it and rerun")

    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {dest} ({exc.strerror or exc}); choose a folder you can write to") from exc
    zip_path = dest / _ZIP_NAME
    if zip_path.is_file():
        _verify_md5(zip_path, md5, downloaded=False)
    else:
        part = dest / (_ZIP_NAME + ".part")
        try:
            _download(url, part, timeout_s, progress)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            raise DataError(_offline_message(url, dest, _reason(exc))) from exc
        os.replace(part, zip_path)
        _verify_md5(zip_path, md5, downloaded=True)

    _unpack(zip_path, dest, target, progress)
    return target


def _offline_message(url: str, dest: Path, reason: str) -> str:
    return (
        f"download from {url} failed ({reason}); download {_ZIP_NAME} elsewhere and unzip it "
        f"into {dest} (so that {dest / TINY_IMAGENET_DIRNAME / 'wnids.txt'} exists), "
        f"or put the zip at {dest / _ZIP_NAME} and rerun"
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


# --- download -------------------------------------------------------------------------


def _download(url: str, part: Path, timeout_s: float, progress: bool) -> None:
    """Download `url` into `part`, resuming what is there; raises on network errors."""
    for attempt in range(_ATTEMPTS):
        before = _size(part)
        try:
            if _download_once(url, part, timeout_s, progress):
                return
        except urllib.error.HTTPError:
            raise
        except (urllib.error.URLError, http.client.HTTPException, OSError):
            # Retry only a connection that was delivering data; a dead host fails at once.
            if attempt + 1 == _ATTEMPTS or _size(part) <= before:
                raise
            continue
        if _size(part) <= before:
            break
    raise ConnectionError("the server kept closing the connection before the end of the file")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _download_once(url: str, part: Path, timeout_s: float, progress: bool) -> bool:
    """One HTTP request; True when `part` now holds the whole file, False when it stopped early."""
    offset = _size(part)
    request = urllib.request.Request(url, headers={"User-Agent": "lookalike", "Accept-Encoding": "identity"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code != 416 or not offset:
            raise
        # Range not satisfiable: the part is already complete, or bigger than the file.
        total = _content_range(exc.headers.get("Content-Range", ""))[1]
        exc.close()
        if total == offset:
            return True
        part.unlink()
        return _download_once(url, part, timeout_s, progress)

    with response:
        start, total = _content_range(response.headers.get("Content-Range", ""))
        if response.status == 206 and start == offset:
            mode = "ab" if offset else "wb"
        elif response.status == 206:
            if not offset:
                raise http.client.HTTPException("the server answered a plain request with a partial file")
            # A range we did not ask for: drop the part and ask for the whole file.
            response.close()
            part.unlink(missing_ok=True)
            return _download_once(url, part, timeout_s, progress)
        else:
            # 200: the server ignored Range (or there was nothing to resume); start from zero.
            offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        with (
            open(part, mode) as fh,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=_ZIP_NAME,
                disable=not progress,
            ) as bar,
        ):
            while chunk := response.read(_CHUNK_BYTES):
                fh.write(chunk)
                bar.update(len(chunk))
    size = _size(part)
    if total is not None and size > total:
        part.unlink()  # cannot be right; start over next time
        return False
    return total is None or size == total


def _content_range(header: str) -> tuple[int | None, int | None]:
    """(first byte, total size) from "bytes 100-999/1000" or "bytes */1000"; None where absent."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", header or "")
    if not match:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total and total != "*" else None)


# --- check and unpack -----------------------------------------------------------------


def _md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _verify_md5(zip_path: Path, md5: str | None, downloaded: bool) -> None:
    """Raise DataError on a mismatch; a file we downloaded is deleted so a rerun fetches it again."""
    if md5 is None:
        return
    actual = _md5_of(zip_path)
    if actual == md5.lower():
        return
    if downloaded:
        zip_path.unlink()
        raise DataError(
            f"the downloaded {zip_path.name} has MD5 {actual}, expected {md5}, so it was deleted; "
            "rerun to download it again"
        )
    raise DataError(f"{zip_path} has MD5 {actual}, expected {md5}; delete or replace it and rerun")


def _check_member(name: str, zip_path: Path) -> None:
    """Refuse absolute paths and `..`: a crafted archive must not write outside its folder."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(name).drive or ".." in posix.parts:
        raise DataError(
            f"{zip_path} contains an unsafe member path {name!r}; refusing to unpack it, "
            "delete the file and get a fresh copy"
        )


def _unpack(zip_path: Path, dest: Path, target: Path, progress: bool) -> None:
    """Unpack into a temp folder beside `target`, then rename: `target` appears complete or not at all."""
    tmp = dest / f".{TINY_IMAGENET_DIRNAME}.unpack-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                members = zf.infolist()
                for info in members:
                    _check_member(info.filename, zip_path)
                for info in tqdm(members, desc="unpacking", unit="file", disable=not progress):
                    zf.extract(info, tmp)
        except zipfile.BadZipFile as exc:
            raise DataError(f"{zip_path} is not a valid zip file ({exc}); delete it and rerun") from exc
        if (tmp / TINY_IMAGENET_DIRNAME / "wnids.txt").is_file():
            unpacked = tmp / TINY_IMAGENET_DIRNAME
        elif (tmp / "wnids.txt").is_file():  # an archive without the top folder
            unpacked = tmp
        else:
            raise DataError(
                f"{zip_path} holds no {TINY_IMAGENET_DIRNAME}/wnids.txt, so it is not tiny-ImageNet-200; "
                "delete it and rerun"
            )
        if target.is_dir():
            target.rmdir()  # empty, checked by the caller
        os.rename(unpacked, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
