"""Fetching corpus archives: resumable HTTP download, checksum check, idempotent extraction.

Speech corpora ship as archives of tens of gigabytes over plain HTTP, so a download must survive
a dropped connection (it resumes from a `.part` file with a Range request), must be verified
against the checksum the publisher gives (a bad file is moved aside so the next try starts
clean), and extraction must not be repeated once it has completed (a marker file records it).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import socket
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable

from tqdm import tqdm

CHUNK = 1 << 20
_USER_AGENT = "fedspeech-downloader/1.0"


class DownloadError(RuntimeError):
    """A download or an extraction that could not be completed."""


class ChecksumError(DownloadError):
    """A downloaded file whose size or digest differs from the published one."""


@dataclass(frozen=True)
class Archive:
    """One published archive: where it is and what its bytes must hash to."""

    url: str
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None

    @property
    def filename(self) -> str:
        return PurePosixPath(urllib.parse.urlparse(self.url).path).name


def _hashers(md5: str | None, sha256: str | None) -> dict[str, "hashlib._Hash"]:
    out = {}
    if md5:
        out["md5"] = hashlib.md5(usedforsecurity=False)
    if sha256:
        out["sha256"] = hashlib.sha256()
    return out


def file_digest(path: str | Path, algorithm: str = "md5", progress: bool = False) -> str:
    """Hex digest of a file, read in chunks (archives are far larger than memory)."""
    path = Path(path)
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with path.open("rb") as handle, tqdm(total=path.stat().st_size, unit="B", unit_scale=True,
                                         unit_divisor=1024, desc=f"{algorithm} {path.name}",
                                         disable=not progress, leave=False) as bar:
        while block := handle.read(CHUNK):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def _check(path: Path, digests: dict[str, str], expected: dict[str, str | None],
           size: int | None, quarantine: bool = True) -> None:
    """Raise ChecksumError when size or digest differ, first moving a downloaded file aside."""
    problems = []
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        problems.append(f"size {actual_size} bytes, expected {size}")
    for name, want in expected.items():
        if want and digests[name].lower() != want.lower():
            problems.append(f"{name} {digests[name]}, expected {want.lower()}")
    if problems:
        if not quarantine:
            raise ChecksumError(f"{path}: {'; '.join(problems)}")
        bad = path.with_name(path.name + ".bad")
        os.replace(path, bad)
        raise ChecksumError(f"{path.name}: {'; '.join(problems)}. The file was moved to {bad} "
                            "so that the next attempt downloads it again.")


def verify_file(path: str | Path, md5: str | None = None, sha256: str | None = None,
                size: int | None = None, progress: bool = True, quarantine: bool = True) -> Path:
    """Check a file already on disk; a mismatch raises ChecksumError.

    With `quarantine` (for files this module downloaded) the bad file is first moved to
    `<name>.bad`; a user's own file is left where it is.
    """
    path = Path(path)
    expected = {"md5": md5, "sha256": sha256}
    digests = {k: file_digest(path, k, progress) for k, v in expected.items() if v}
    _check(path, digests, expected, size, quarantine)
    return path


def _open(url: str, start: int, timeout: float) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    if start:
        request.add_header("Range", f"bytes={start}-")
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http/https only, checked)


def _total_size(response: http.client.HTTPResponse, start: int) -> int | None:
    """Full size of the resource from Content-Range (206) or Content-Length (200)."""
    content_range = response.headers.get("Content-Range")
    if content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1].strip()
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length")
    return int(length) + start if length and length.isdigit() else None


def download_file(url: str, dest: str | Path, *, md5: str | None = None, sha256: str | None = None,
                  size: int | None = None, retries: int = 5, timeout: float = 60.0,
                  backoff: float = 2.0, progress: bool = True) -> Path:
    """Download `url` to `dest`, resuming a previous `.part` file, and verify it.

    An existing `dest` is verified instead of downloaded again. Dropped connections are
    retried `retries` times, each time resuming where the bytes on disk end. A size or digest
    mismatch moves the file to `<dest>.bad` and raises ChecksumError.
    """
    dest = Path(dest)
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("http", "https"):
        raise DownloadError(f"only http(s) URLs can be downloaded, got {url!r}")
    expected = {"md5": md5, "sha256": sha256}
    if dest.is_file():
        return verify_file(dest, md5, sha256, size, progress)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")

    hashers = _hashers(md5, sha256)
    if part.exists() and hashers:  # resume: the digest must also cover the bytes already here
        with part.open("rb") as handle:
            while block := handle.read(CHUNK):
                for h in hashers.values():
                    h.update(block)

    attempt = 0
    while True:
        start = part.stat().st_size if part.exists() else 0
        try:
            total = _fetch_into(url, part, start, hashers, timeout, progress, dest.name)
        except _Restart:
            hashers = _hashers(md5, sha256)
            continue
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                socket.timeout, TimeoutError, _Short) as err:
            if isinstance(err, urllib.error.HTTPError) and err.code not in (408, 429, 500, 502,
                                                                             503, 504):
                raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from err
            attempt += 1
            if attempt > retries:
                raise DownloadError(f"{url}: gave up after {retries} retries ({err}); "
                                    f"{part} is kept and the next attempt resumes from it") from err
            have = part.stat().st_size if part.exists() else 0
            print(f"download of {dest.name} interrupted at {have} bytes ({err}); "
                  f"resuming (retry {attempt}/{retries})")
            time.sleep(backoff * attempt)
            continue
        break

    if size is None:
        size = total
    os.replace(part, dest)
    _check(dest, {k: h.hexdigest() for k, h in hashers.items()}, expected, size)
    return dest


class _Short(DownloadError):
    """The server closed the connection before sending every byte."""


class _Restart(Exception):
    """The server ignored the Range request; the partial file was discarded."""


def _fetch_into(url: str, part: Path, start: int, hashers: dict, timeout: float, progress: bool,
                name: str) -> int | None:
    """One HTTP request appending to `part`; returns the resource's full size if known."""
    try:
        response = _open(url, start, timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:  # nothing left to send: the part file is already complete
            return start
        raise
    with response:
        status = response.status
        if start and status == 200:  # Range not honoured: start over rather than corrupt the file
            part.unlink()
            print(f"{name}: server does not support resuming; downloading from the start")
            raise _Restart
        total = _total_size(response, start)
        mode = "ab" if status == 206 else "wb"
        received = start
        with part.open(mode) as handle, tqdm(total=total, initial=start, unit="B", unit_scale=True,
                                             unit_divisor=1024, desc=name, disable=not progress,
                                             miniters=1) as bar:
            while True:
                try:
                    block = response.read(CHUNK)
                except http.client.IncompleteRead as err:
                    block = err.partial
                    handle.write(block)
                    for h in hashers.values():
                        h.update(block)
                    raise _Short(f"connection closed after {received + len(block)} bytes") from err
                if not block:
                    break
                handle.write(block)
                for h in hashers.values():
                    h.update(block)
                received += len(block)
                bar.update(len(block))
    if total is not None and received < total:
        raise _Short(f"connection closed after {received} of {total} bytes")
    return total


# ---------------------------------------------------------------------------------- extraction

class _CountingReader:
    """File wrapper that reports bytes read, so extraction shows progress over compressed bytes."""

    def __init__(self, handle: BinaryIO, update: Callable[[int], object]) -> None:
        self._handle, self._update = handle, update

    def read(self, n: int = -1) -> bytes:
        data = self._handle.read(n)
        self._update(len(data))
        return data


def _strip(name: str, components: int) -> str | None:
    parts = PurePosixPath(name).parts
    if len(parts) <= components:
        return None
    return str(PurePosixPath(*parts[components:]))


def extraction_marker(archive: str | Path, dest_dir: str | Path) -> Path:
    return Path(dest_dir) / f".{Path(archive).name}.extracted"


def extract(archive: str | Path, dest_dir: str | Path, *, strip_components: int = 0,
            progress: bool = True, quarantine: bool = True) -> Path:
    """Extract a tar(.gz/.bz2/.xz) or zip archive into `dest_dir`, once.

    A marker file in `dest_dir` records a completed extraction, so calling again is a no-op.
    `strip_components` drops leading path parts (as `tar --strip-components`), so an archive's
    top folder can land in a folder of the user's choosing. Members that would escape
    `dest_dir` are refused. A corrupt archive raises DownloadError; with `quarantine` it is
    first moved to `<archive>.bad` so that the next attempt downloads it again.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    marker = extraction_marker(archive, dest_dir)
    if marker.exists():
        print(f"{archive.name}: already extracted into {dest_dir} (marker {marker.name})")
        return dest_dir
    if not archive.is_file():
        raise DownloadError(f"archive {archive} does not exist")
    dest_dir.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, dest_dir, strip_components, progress)
        else:
            _extract_tar(archive, dest_dir, strip_components, progress)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError) as err:
        if isinstance(err, OSError) and err.errno is not None:
            raise  # a real disk problem (no space, permissions), not a corrupt archive
        if not quarantine:
            raise DownloadError(f"{archive} is corrupt or truncated ({type(err).__name__}: "
                                f"{err})") from err
        bad = archive.with_name(archive.name + ".bad")
        os.replace(archive, bad)
        raise DownloadError(f"{archive.name} is corrupt or truncated ({type(err).__name__}: "
                            f"{err}); moved to {bad} so that the next attempt downloads it "
                            "again") from err
    marker.write_text(f"{archive.name} extracted completely\n")
    return dest_dir


def _extract_tar(archive: Path, dest_dir: Path, strip: int, progress: bool) -> None:
    with archive.open("rb") as raw, tqdm(total=archive.stat().st_size, unit="B", unit_scale=True,
                                         unit_divisor=1024, desc=f"extract {archive.name}",
                                         disable=not progress) as bar:
        with tarfile.open(fileobj=_CountingReader(raw, bar.update), mode="r|*") as tar:
            for member in tar:  # streaming: one pass over the compressed bytes
                if strip:
                    name = _strip(member.name, strip)
                    if name is None:
                        continue
                    member.name = name
                    if member.islnk():  # hard links name another member: strip it alike
                        member.linkname = _strip(member.linkname, strip) or member.linkname
                try:
                    tar.extract(member, dest_dir, filter="data")
                except tarfile.FilterError as err:
                    raise DownloadError(f"{archive.name}: refused unsafe member {member.name!r} "
                                        f"({err})") from err


def _extract_zip(archive: Path, dest_dir: Path, strip: int, progress: bool) -> None:
    root = dest_dir.resolve()
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        with tqdm(total=sum(i.file_size for i in infos), unit="B", unit_scale=True,
                  unit_divisor=1024, desc=f"extract {archive.name}", disable=not progress) as bar:
            for info in infos:
                name = _strip(info.filename, strip) if strip else info.filename
                if name is None:
                    continue
                target = (dest_dir / name).resolve()
                if not target.is_relative_to(root):
                    raise DownloadError(f"{archive.name}: refused member {info.filename!r} "
                                        "outside the extraction folder")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                bar.update(info.file_size)


def fetch_and_extract(archive: Archive, download_dir: str | Path, extract_dir: str | Path, *,
                      strip_components: int = 0, keep_archive: bool = True, retries: int = 5,
                      backoff: float = 2.0, progress: bool = True) -> Path:
    """Download (resumably, verified) and extract one archive; skipped when already extracted."""
    download_dir, extract_dir = Path(download_dir), Path(extract_dir)
    target = download_dir / archive.filename
    if extraction_marker(target, extract_dir).exists():
        print(f"{archive.filename}: already downloaded and extracted into {extract_dir}")
        return extract_dir
    path = download_file(archive.url, target, md5=archive.md5, sha256=archive.sha256,
                         size=archive.size, retries=retries, backoff=backoff, progress=progress)
    extract(path, extract_dir, strip_components=strip_components, progress=progress)
    if not keep_archive:
        path.unlink()
    return extract_dir
