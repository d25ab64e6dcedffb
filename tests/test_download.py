"""Downloads against a local HTTP server (127.0.0.1 only, never the network)."""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fedspeech.data.download import (Archive, ChecksumError, DownloadError, download_file,
                                     extract, extraction_marker, fetch_and_extract)

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
needs_real = pytest.mark.skipif(not REAL.is_dir(),
                                reason=f"real sample corpora not found at {REAL}")


class _Handler(BaseHTTPRequestHandler):
    """Serves `files`; honours `Range: bytes=N-`; can cut a response half-way or ignore Range."""

    files: dict[str, bytes] = {}
    log: list[tuple[str, str | None]] = []
    cut: set[str] = set()          # paths whose next response stops half-way
    ignore_range: set[str] = set()

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        header = self.headers.get("Range")
        self.log.append((self.path, header))
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if header and self.path not in self.ignore_range:
            start = int(header.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        payload = body[start:]
        if self.path in self.cut:
            self.cut.discard(self.path)
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)


@pytest.fixture()
def server():
    _Handler.files, _Handler.log, _Handler.cut, _Handler.ignore_range = {}, [], set(), set()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _targz(members: dict[str, bytes],
           links: dict[str, tuple[bytes, str]] | None = None) -> bytes:
    """A tar.gz of `members`, plus `links` (name -> (tar type, target)) after them."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)
    return buffer.getvalue()


def _payload(n: int = 300_000) -> bytes:
    """Incompressible-ish bytes so the archive is large enough to be cut mid-way."""
    out, block = bytearray(), b"seed"
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])


def test_full_download_checksum_and_idempotent_extraction(server, tmp_path):
    _, base = server
    big = _payload()
    data = _targz({"Corpus/a/x.bin": big, "Corpus/readme.txt": b"hello\n"},
                  links={"Corpus/hard.bin": (tarfile.LNKTYPE, "Corpus/a/x.bin"),
                         "Corpus/b/soft.bin": (tarfile.SYMTYPE, "../a/x.bin")})
    _Handler.files["/c.tar.gz"] = data
    archive = Archive(f"{base}/c.tar.gz", md5=hashlib.md5(data).hexdigest(),
                      sha256=hashlib.sha256(data).hexdigest(), size=len(data))

    out = fetch_and_extract(archive, tmp_path / "dl", tmp_path / "corpus", strip_components=1)
    assert (out / "a" / "x.bin").read_bytes() == big
    assert (out / "readme.txt").read_text() == "hello\n"
    assert (out / "hard.bin").read_bytes() == big  # links survive stripping the top folder
    assert (out / "b" / "soft.bin").is_symlink() and (out / "b" / "soft.bin").read_bytes() == big
    assert (tmp_path / "dl" / "c.tar.gz").read_bytes() == data
    assert not (tmp_path / "dl" / "c.tar.gz.part").exists()
    assert extraction_marker("c.tar.gz", out).exists()
    requests = len(_Handler.log)
    fetch_and_extract(archive, tmp_path / "dl", tmp_path / "corpus", strip_components=1)
    assert len(_Handler.log) == requests  # done once: neither downloaded nor extracted again


def test_interrupted_transfer_resumes_with_range(server, tmp_path):
    _, base = server
    data = _targz({"x.bin": _payload()})
    _Handler.files["/c.tar.gz"] = data
    _Handler.cut.add("/c.tar.gz")

    dest = download_file(f"{base}/c.tar.gz", tmp_path / "c.tar.gz",
                         md5=hashlib.md5(data).hexdigest(), backoff=0, progress=False)
    assert dest.read_bytes() == data
    assert len(_Handler.log) == 2
    assert _Handler.log[0][1] is None
    assert _Handler.log[1][1] == f"bytes={len(data) // 2}-"  # resumed where the cut happened


def test_resume_from_part_file_of_an_earlier_run(server, tmp_path):
    _, base = server
    data = _payload(50_000)
    _Handler.files["/f.bin"] = data
    (tmp_path / "f.bin.part").write_bytes(data[:12_345])

    download_file(f"{base}/f.bin", tmp_path / "f.bin", sha256=hashlib.sha256(data).hexdigest(),
                  progress=False)
    assert (tmp_path / "f.bin").read_bytes() == data
    assert _Handler.log == [("/f.bin", "bytes=12345-")]
    # a .part that already holds every byte: the server answers 416 and the file is kept
    (tmp_path / "f.bin").rename(tmp_path / "g.bin.part")
    _Handler.files["/g.bin"] = data
    download_file(f"{base}/g.bin", tmp_path / "g.bin", md5=hashlib.md5(data).hexdigest(),
                  progress=False)
    assert (tmp_path / "g.bin").read_bytes() == data and _Handler.log[-1][1] == "bytes=50000-"


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    _, base = server
    data = _payload(40_000)
    _Handler.files["/f.bin"] = data
    _Handler.ignore_range.add("/f.bin")
    (tmp_path / "f.bin.part").write_bytes(b"stale bytes that must not survive")

    download_file(f"{base}/f.bin", tmp_path / "f.bin", md5=hashlib.md5(data).hexdigest(),
                  progress=False)
    assert (tmp_path / "f.bin").read_bytes() == data


def test_bad_checksum_is_refused_and_moved_aside(server, tmp_path):
    _, base = server
    data = _payload(20_000)
    _Handler.files["/f.bin"] = data
    with pytest.raises(ChecksumError, match="expected 0000"):
        download_file(f"{base}/f.bin", tmp_path / "f.bin", md5="0" * 32, progress=False)
    assert not (tmp_path / "f.bin").exists()
    assert (tmp_path / "f.bin.bad").read_bytes() == data
    # the retry downloads afresh and succeeds with the right checksum
    download_file(f"{base}/f.bin", tmp_path / "f.bin", md5=hashlib.md5(data).hexdigest(),
                  progress=False)
    assert len(_Handler.log) == 2 and (tmp_path / "f.bin").read_bytes() == data
    with pytest.raises(ChecksumError, match="size"):
        download_file(f"{base}/f.bin", tmp_path / "f.bin", size=1, progress=False)


def test_corrupt_archive_is_refused_and_moved_aside(server, tmp_path):
    _, base = server
    data = _targz({"x.bin": _payload()})
    _Handler.files["/c.tar.gz"] = data[: len(data) // 2]  # truncated at the source
    with pytest.raises(DownloadError, match="corrupt or truncated"):
        fetch_and_extract(Archive(f"{base}/c.tar.gz"), tmp_path / "dl", tmp_path / "out",
                          progress=False)
    assert (tmp_path / "dl" / "c.tar.gz.bad").exists()
    assert not (tmp_path / "dl" / "c.tar.gz").exists()
    assert not extraction_marker("c.tar.gz", tmp_path / "out").exists()


def test_missing_url_and_unsafe_archive(server, tmp_path):
    _, base = server
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(f"{base}/none.tar.gz", tmp_path / "none.tar.gz", progress=False)
    assert len(_Handler.log) == 1  # a 404 is not retried
    with pytest.raises(DownloadError, match="only http"):
        download_file("ftp://127.0.0.1/x", tmp_path / "x", progress=False)
    evil = tmp_path / "evil.tar.gz"
    evil.write_bytes(_targz({"../escaped.txt": b"x"}))
    with pytest.raises(DownloadError, match="unsafe member"):
        extract(evil, tmp_path / "out", progress=False)
    assert not (tmp_path / "escaped.txt").exists()


@needs_real
def test_librispeech_download_into_root(server, tmp_path, monkeypatch):
    from fedspeech.data.corpora import librispeech

    _, base = server
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:  # laid out as the SLR12 archives are
        tar.add(REAL / "LibriSpeech" / "dev-clean", arcname="LibriSpeech/dev-clean")
    data = buffer.getvalue()
    _Handler.files["/dev-clean.tar.gz"] = data
    monkeypatch.setitem(librispeech.ARCHIVES, "dev-clean",
                        Archive(f"{base}/dev-clean.tar.gz", md5=hashlib.md5(data).hexdigest()))
    root = librispeech.download(tmp_path / "LibriSpeech", ["dev-clean"], progress=False)
    corpus = librispeech.read_corpus(root)
    assert len(corpus.rows) == 2 and corpus.rejected == []
    with pytest.raises(ValueError, match="unknown LibriSpeech subsets"):
        librispeech.download(root, ["train-clean-1000"])
    assert librispeech.ARCHIVES["train-clean-100"].url.endswith("/12/train-clean-100.tar.gz")


@needs_real
def test_commonvoice_download_from_user_archive(tmp_path):
    from fedspeech.data.corpora import commonvoice

    with pytest.raises(ValueError, match="accept its terms"):
        commonvoice.download(tmp_path / "cv")
    archive = tmp_path / "cv-corpus-13.0-2023-03-09-en.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(REAL / "cv-corpus-13.0-2023-03-09", arcname="cv-corpus-13.0-2023-03-09")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()

    with pytest.raises(ChecksumError, match="sha256"):
        commonvoice.download(tmp_path / "cv", archive=str(archive), sha256="f" * 64)
    assert archive.exists()  # a user's own file is never moved
    root = commonvoice.download(tmp_path / "cv", archive=str(archive), sha256=digest,
                                progress=False)
    assert len(commonvoice.read_corpus(root).rows) == 9
    shutil.rmtree(root / "en" / "clips")
    commonvoice.download(tmp_path / "cv", archive=str(archive))  # marker: not extracted again
    assert not (root / "en" / "clips").exists()
