"""Export a corpus as a manifest (CSV and JSON) with licence and attribution per file, plus an
attribution text for redistribution; validate files against such a manifest.

One manifest row per usable file and pair (a file carrying two pairs has two rows), sorted by pair and
file, with the split where one was made. ``ATTRIBUTION.txt`` credits every file as its licence asks
(title, author, source, licence: the "TASL" form Creative Commons recommends), grouped by licence.
With ``copy=True`` the files are copied next to the manifest (``files/``), which then makes a
self-contained data set that ``validate_manifest`` can check.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from structlab.atomic import atomic_open, atomic_write_json, atomic_write_text
from structlab.audiopairs.corpus import Corpus, now_iso
from structlab.data import sha256_file

COLUMNS = (
    "path", "pair", "kind", "modifier", "noun", "split", "license", "attribution", "uploader", "source",
    "freesound_id", "url", "duration_s", "sample_rate", "sha256", "size", "sound_id",
)


@dataclass
class ExportReport:
    """Where an export wrote what."""

    folder: Path
    rows: int
    files: int
    written: list[Path] = field(default_factory=list)


def _attribution(row) -> str:
    if row["attribution"]:
        return row["attribution"]
    name = row["name"] or Path(row["path"] or "").name
    who = row["uploader"] or "unknown author"
    where = row["url"] or (f"https://freesound.org/s/{row['freesound_id']}/" if row["freesound_id"] else "")
    return f'"{name}" by {who}' + (f" ({where})" if where else "") + f", licensed under {row['license']}"


def manifest_rows(corpus: Corpus, files_prefix: str | None = None) -> list[dict[str, object]]:
    """Manifest rows (see ``COLUMNS``) for every kept link of every usable sound."""
    rows = corpus.query(
        "SELECT s.*, p.text AS pair, p.kind, p.modifier, p.noun, sp.split FROM links l "
        "JOIN sounds s ON s.id = l.sound_id JOIN pairs p ON p.id = l.pair_id "
        "LEFT JOIN splits sp ON sp.sound_id = s.id "
        "WHERE l.kept = 1 AND s.path IS NOT NULL AND s.decode_error IS NULL AND s.duplicate_of IS NULL "
        "ORDER BY p.text, s.id"
    )
    out = []
    for r in rows:
        path = f"{files_prefix}/{_export_name(r)}" if files_prefix else str(corpus.file_path(r))
        duration = r["decoded_duration"] if r["decoded_duration"] is not None else r["duration"]
        # An imported clip made from freesound recordings: their ids (from its manifest) and the first one's page.
        ids = str(r["freesound_id"]) if r["freesound_id"] is not None else (r["origin_ids"] or "")
        first = ids.split(";")[0]
        out.append({
            "path": path,
            "pair": r["pair"],
            "kind": r["kind"],
            "modifier": r["modifier"],
            "noun": r["noun"],
            "split": r["split"] or "",
            "license": r["license"] or "",
            "attribution": _attribution(r),
            "uploader": r["uploader"] or "",
            "source": r["source"] or "",
            "freesound_id": ids,
            "url": r["url"] or (f"https://freesound.org/s/{first}/" if first else ""),
            "duration_s": f"{duration:.3f}" if duration is not None else "",
            "sample_rate": r["sample_rate"] or "",
            "sha256": r["sha256"] or "",
            "size": r["size"] or "",
            "sound_id": r["id"],
        })
    return out


def _export_name(row) -> str:
    """A file's name in an export folder: unique per sound, keeping its extension."""
    suffix = Path(row["path"]).suffix
    return f"{row['freesound_id']}{suffix}" if row["freesound_id"] is not None else f"local-{row['id']}{suffix}"


def attribution_text(rows: list[dict[str, object]]) -> str:
    """Credits for every file, grouped by licence (one line per file)."""
    by_licence: dict[str, dict[str, str]] = {}
    for r in rows:
        by_licence.setdefault(str(r["license"]), {})[str(r["path"])] = str(r["attribution"])
    lines = [
        "Attribution for the sounds in this corpus.",
        "Redistributing a sound means keeping its credit and licence with it (CC-BY, CC-BY-SA, CC-BY-NC:",
        "credit the author; -SA: share alike; -NC: no commercial use; GPL: keep the licence terms).",
        "",
    ]
    for licence in sorted(by_licence):
        files = by_licence[licence]
        lines.append(f"== {licence} ({len(files)} files) ==")
        lines += [f"{path}: {credit}" for path, credit in sorted(files.items())]
        lines.append("")
    return "\n".join(lines)


def export(corpus: Corpus, folder: str | Path, copy: bool = False) -> ExportReport:
    """Write ``manifest.csv``, ``manifest.json`` and ``ATTRIBUTION.txt`` into ``folder``.

    ``copy``: also copy each file to ``folder/files/`` (paths in the manifest are then relative to
    ``folder``; otherwise they are absolute). Raises ``ValueError`` if nothing is exportable.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"folder={str(folder)!r}: exists and is not a folder")
    rows = manifest_rows(corpus, files_prefix="files" if copy else None)
    if not rows:
        raise ValueError(f"{corpus.path}: nothing to export (no usable sound with a kept pair link)")
    report = ExportReport(folder, len(rows), len({r["sound_id"] for r in rows}))
    if copy:
        for r in rows:
            target = folder / str(r["path"])
            if target.is_file() and sha256_file(target) == r["sha256"]:
                continue  # already there (a resumed export)
            source = corpus.file_path(corpus.sounds("id = ?", (r["sound_id"],))[0])
            with open(source, "rb") as src, atomic_open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    paths = [folder / "manifest.csv", folder / "manifest.json", folder / "ATTRIBUTION.txt"]
    atomic_write_text(paths[0], text.getvalue())
    pairs = sorted({(r["pair"], r["kind"], r["modifier"], r["noun"]) for r in rows})
    atomic_write_json(paths[1], {
        "corpus": str(corpus.path),
        "exported_at": now_iso(),
        "cleaning": json.loads(corpus.get_meta("cleaning") or "null"),
        "split": json.loads(corpus.get_meta("split") or "null"),
        "pairs": [{"pair": p, "kind": k, "modifier": m, "noun": n} for p, k, m, n in pairs],
        "files": rows,
    })
    atomic_write_text(paths[2], attribution_text(rows))
    report.written = paths
    return report


def validate_manifest(manifest: str | Path) -> tuple[int, list[str], list[str]]:
    """Check the files a manifest lists (relative paths from its folder) against its size and SHA-256.

    Returns (files checked, missing paths, mismatched paths). Raises ``FileNotFoundError`` for a
    missing manifest and ``ValueError`` for one without ``path`` and ``sha256`` columns.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest={str(manifest)!r}: no such file")
    with open(manifest, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not {"path", "sha256"} <= set(reader.fieldnames or ()):
            raise ValueError(f"manifest={str(manifest)!r}: expected columns 'path' and 'sha256'")
        expected = {row["path"]: (row["sha256"], row.get("size")) for row in reader}
    missing, mismatched = [], []
    for rel, (digest, size) in sorted(expected.items()):
        path = Path(rel) if Path(rel).is_absolute() else manifest.parent / rel
        if not path.is_file():
            missing.append(rel)
        elif (size and path.stat().st_size != int(size)) or sha256_file(path) != digest:
            mismatched.append(rel)
    return len(expected) - len(missing), missing, mismatched
