"""Importing a folder of labelled recordings (with a manifest) into a corpus, so every later step works
without freesound.

The manifest is a CSV file with one row per file. Required columns: ``path`` (relative to the folder)
and ``license``. Optional: ``label`` (the file's own description), ``modifier``, ``noun`` and
``pair_kind`` (``anp``, ``vnp`` or ``none``: the file's pair, as annotated), ``attribution``,
``uploader``, ``source``, ``freesound_id`` (ids of the freesound recordings the file was made from,
joined by ``;``), ``duration_s``, ``sample_rate``, ``channels``, ``sha256``. This is the layout of the
developers' shared audio corpus (``structlab.data.resolve("audio")``).

An annotated pair is normalised through :func:`~structlab.audiopairs.vocab.parse_pair`-compatible
canonical form and linked with the rule ``label``. A recorded ``sha256`` that does not match the file is
an error (the manifest and the folder disagree). Importing the same manifest again updates its rows; a
file another import (or a download) already brought in, matched on its SHA-256, adds no second row: its
row gains this manifest's pair link, if any (``ImportReport.already``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from structlab.audiopairs.corpus import Corpus, now_iso
from structlab.audiopairs.vocab import Pair, try_parse
from structlab.errors import ChecksumError

REQUIRED = ("path", "license")


@dataclass
class ImportReport:
    """What an import did."""

    files: int
    pairs: int
    linked: int
    relabelled: list[tuple[str, str, str]]  # (path, annotated pair, parsed pair) where they differ
    already: int = 0  # files already in the corpus through another import or a download (same SHA-256)


def _ids(text: str) -> str:
    """Freesound ids joined by ';', sorted, without blanks."""
    return ";".join(sorted({i.strip() for i in text.split(";") if i.strip()}, key=int))


def _annotated_pair(row: dict[str, str]) -> Pair | None:
    kind = (row.get("pair_kind") or "").strip().lower()
    if kind not in ("anp", "vnp"):
        return None
    modifier, noun = (row.get("modifier") or "").strip().lower(), (row.get("noun") or "").strip().lower()
    if not modifier or not noun:
        raise ValueError(f"manifest row {row.get('path')!r}: pair_kind={kind!r} but modifier or noun is empty")
    return Pair(modifier, noun, kind)


def import_folder(
    corpus: Corpus,
    root: str | Path,
    manifest: str | Path = "manifest.csv",
    verify: bool = True,
    progress: bool = True,
) -> ImportReport:
    """Import the files that ``manifest`` (relative to ``root``, or absolute) lists into ``corpus``.

    ``verify``: compute each file's SHA-256 and compare it with the manifest's (raises
    :class:`~structlab.errors.ChecksumError` on a mismatch). Raises ``FileNotFoundError`` for a missing
    folder, manifest or file, ``ValueError`` for a manifest without the required columns. All rows are
    imported in one transaction.
    """
    from structlab import runtime
    from structlab.data import sha256_file

    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"root={str(root)!r}: no such folder")
    manifest_path = Path(manifest) if Path(manifest).is_absolute() else root / manifest
    if not manifest_path.is_file():
        raise FileNotFoundError(f"manifest={str(manifest_path)!r}: no such file")
    with open(manifest_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"manifest={str(manifest_path)!r}: missing columns {missing}; expected {REQUIRED}")
        rows = list(reader)
    report = ImportReport(files=0, pairs=0, linked=0, relabelled=[])
    pair_ids: dict[Pair, int] = {}
    with corpus.transaction() as db:
        db.execute(
            "INSERT INTO imports (root, manifest, manifest_sha256, imported_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(manifest) DO UPDATE SET root = excluded.root, "
            "manifest_sha256 = excluded.manifest_sha256, imported_at = excluded.imported_at",
            (str(root), str(manifest_path.resolve()), sha256_file(manifest_path), now_iso()),
        )
        import_id = db.execute(
            "SELECT id FROM imports WHERE manifest = ?", (str(manifest_path.resolve()),)
        ).fetchone()["id"]
        for row in runtime.progress(rows, desc="importing", unit="file", disable=None if progress else True):
            rel = row["path"].strip()
            path = root / rel
            if not path.is_file():
                raise FileNotFoundError(f"{path}: listed in {manifest_path.name} but missing")
            digest = sha256_file(path) if verify or not row.get("sha256") else row["sha256"]
            if verify and row.get("sha256") and row["sha256"] != digest:
                raise ChecksumError(f"{path}: SHA-256 {digest[:12]} differs from the manifest's {row['sha256'][:12]}")
            values = {
                "import_id": import_id,
                "path": rel,
                "name": Path(rel).name,
                "label": row.get("label") or None,
                "uploader": (row.get("uploader") or "").strip() or None,
                "source": row.get("source") or None,
                "origin_ids": _ids(row.get("freesound_id") or ""),
                "license": row["license"].strip(),
                "attribution": row.get("attribution") or None,
                "tags": json.dumps([]),
                "duration": float(row["duration_s"]) if row.get("duration_s") else None,
                "sample_rate": int(row["sample_rate"]) if row.get("sample_rate") else None,
                "channels": int(row["channels"]) if row.get("channels") else None,
                "sha256": digest,
                "size": path.stat().st_size,
                "added_at": now_iso(),
            }
            existing = db.execute(
                "SELECT id, sha256 FROM sounds WHERE import_id = ? AND path = ?", (import_id, rel)
            ).fetchone()
            elsewhere = None if existing is not None else db.execute(
                "SELECT id FROM sounds WHERE sha256 = ? AND (import_id IS NULL OR import_id != ?) ORDER BY id",
                (digest, import_id),
            ).fetchone()
            if elsewhere is not None:
                sound_id = elsewhere["id"]
                report.already += 1
            elif existing is None:
                columns = ", ".join(values)
                marks = ", ".join(f":{k}" for k in values)
                sound_id = db.execute(f"INSERT INTO sounds ({columns}) VALUES ({marks})", values).lastrowid
            else:
                sound_id = existing["id"]
                changed = existing["sha256"] != digest
                sets = ", ".join(f"{k} = :{k}" for k in values if k != "added_at")
                if changed:  # new content: analyse again
                    sets += ", analysed = 0, fingerprint = NULL, decode_error = NULL, decoded_duration = NULL"
                db.execute(f"UPDATE sounds SET {sets} WHERE id = :id", {**values, "id": sound_id})
            report.files += 1
            pair = _annotated_pair(row)
            if pair is None:
                continue
            parsed = try_parse(pair.text)
            if parsed != pair:
                report.relabelled.append((rel, pair.text, parsed.text if parsed else "(not a pair)"))
            if pair not in pair_ids:
                pair_ids[pair] = corpus.add_pair(pair)
            db.execute(
                "INSERT INTO links (pair_id, sound_id, rules) VALUES (?, ?, 'label') "
                "ON CONFLICT(pair_id, sound_id) DO NOTHING",
                (pair_ids[pair], sound_id),
            )
            report.linked += 1
    report.pairs = len(pair_ids)
    return report
