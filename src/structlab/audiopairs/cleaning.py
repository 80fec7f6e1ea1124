"""Cleaning a corpus, step by step, with a funnel table of the pairs and files left after each step.

AudioPairBank kept a file for a pair only when its tags named the pair, within duration limits, and kept a
pair only with enough files; it also capped how much one uploader contributes to a pair, since one
person's recordings of one thing are near-copies. The steps, in order:

1. **tag match**: the link's tags satisfy the rule: ``both-tags`` (the modifier and the noun are tags),
   ``phrase`` (one tag is the pair, "barking-dog"), or ``either``; links from a hand-labelled import
   (rule ``label``) always pass;
2. **has file**: the file was downloaded (or imported);
3. **decodes**: it decodes to audio that is not digital silence;
4. **duration**: within [min_duration, max_duration] seconds (decoded length);
5. **licence**: its licence is on the allow-list (an ``A OR B`` licence passes if either is);
6. **not a duplicate**: de-duplication did not mark it as a copy of another file;
7. **per uploader**: at most ``per_uploader`` files of one uploader (or source, where there is no
   uploader) per pair;
8. **max files**: at most ``max_files`` files per pair;
9. **min files**: pairs with fewer than ``min_files`` files left are dropped.

Where a step must choose (7, 8), it keeps files in a seeded order (SHA-256 of seed and sound id), so a
result does not depend on the order rows were inserted. The run's settings are stored with the funnel.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Literal

from structlab.audiopairs.corpus import Corpus

Rule = Literal["both-tags", "phrase", "either"]
RULES = ("both-tags", "phrase", "either")

# Freesound licence URLs -> SPDX ids (freesound serves these four today, and had Sampling+ before).
_FREESOUND_LICENCES = {
    "publicdomain/zero/1.0": "CC0-1.0",
    "licenses/by/4.0": "CC-BY-4.0",
    "licenses/by/3.0": "CC-BY-3.0",
    "licenses/by-nc/4.0": "CC-BY-NC-4.0",
    "licenses/by-nc/3.0": "CC-BY-NC-3.0",
    "licenses/sampling+/1.0": "CC-Sampling+-1.0",
}
_FREESOUND_NAMES = {
    "creative commons 0": "CC0-1.0",
    "attribution": "CC-BY-4.0",
    "attribution noncommercial": "CC-BY-NC-4.0",
    "sampling+": "CC-Sampling+-1.0",
}


def licence_id(text: str) -> str:
    """A licence as an SPDX-style id: freesound's URLs and names are mapped, anything else kept."""
    t = (text or "").strip()
    low = t.lower().rstrip("/")
    for key, spdx in _FREESOUND_LICENCES.items():
        if low.endswith(key):
            return spdx
    return _FREESOUND_NAMES.get(low, t)


def licence_allowed(licence: str, allowed: tuple[str, ...]) -> bool:
    """Whether ``licence`` (possibly "A OR B") is allowed: any alternative on the allow-list."""
    options = {o.strip().strip("()") for o in licence.split(" OR ")}
    return bool(options & set(allowed))


@dataclass(frozen=True)
class CleaningConfig:
    """What cleaning keeps (see the module docstring for the steps)."""

    rule: Rule = "either"
    min_duration: float = 0.1  # seconds
    max_duration: float | None = 600.0
    licenses: tuple[str, ...] | None = None  # SPDX ids; None: any licence
    drop_duplicates: bool = True
    per_uploader: int | None = None  # files per uploader per pair
    max_files: int | None = None  # per pair
    min_files: int = 1  # per pair
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"rule={self.rule!r}: expected one of {RULES}")
        if self.min_duration < 0:
            raise ValueError(f"min_duration={self.min_duration!r}: expected >= 0 seconds")
        if self.max_duration is not None and self.max_duration < self.min_duration:
            raise ValueError(f"max_duration={self.max_duration!r}: expected >= min_duration={self.min_duration}")
        for name in ("per_uploader", "max_files"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}={value!r}: expected a positive int or None")
        if not isinstance(self.min_files, int) or self.min_files < 0:
            raise ValueError(f"min_files={self.min_files!r}: expected a non-negative int")
        if self.max_files is not None and self.max_files < self.min_files:
            raise ValueError(f"max_files={self.max_files!r}: expected >= min_files={self.min_files}")


@dataclass(frozen=True)
class FunnelStep:
    """Pairs, files and pair-file links left after one cleaning step."""

    step: str
    pairs: int
    files: int
    links: int
    setting: str


def _rule_ok(rules: str, rule: Rule) -> bool:
    have = set(rules.split(",")) - {""}
    if "label" in have:
        return True
    if rule == "either":
        return bool(have & {"both-tags", "phrase"})
    return rule in have


def _order_key(seed: int, sound_id: int) -> str:
    return hashlib.sha256(f"{seed}:{sound_id}".encode()).hexdigest()


def clean(corpus: Corpus, config: CleaningConfig = CleaningConfig(), workers: int = 1) -> list[FunnelStep]:
    """Run the cleaning steps on every link of ``corpus``; store which links are kept and the funnel.

    Decodes files not yet analysed first (:meth:`Corpus.analyse`). Returns the funnel, one row per step;
    everything is written in one transaction.
    """
    if not isinstance(config, CleaningConfig):
        raise TypeError(f"config={config!r}: expected a CleaningConfig")
    corpus.analyse(workers=workers)
    rows = corpus.query(
        "SELECT l.pair_id, l.sound_id, l.rules, s.path, s.decode_error, s.analysed, s.license, "
        "COALESCE(s.decoded_duration, s.duration) AS duration, s.duplicate_of, "
        "COALESCE(s.uploader, s.source, '') AS uploader FROM links l JOIN sounds s ON s.id = l.sound_id"
    )
    live = {(r["pair_id"], r["sound_id"]): r for r in rows}
    dropped: dict[tuple[int, int], str] = {}
    funnel: list[FunnelStep] = []

    def record(step: str, setting: object) -> None:
        funnel.append(
            FunnelStep(step, len({p for p, _ in live}), len({s for _, s in live}), len(live), json.dumps(setting))
        )

    def drop(step: str, keep) -> None:
        for key in [k for k, r in live.items() if not keep(r)]:
            dropped[key] = step
            del live[key]

    record("found", None)
    drop("tag match", lambda r: _rule_ok(r["rules"], config.rule))
    record("tag match", config.rule)
    drop("has file", lambda r: r["path"] is not None)
    record("has file", None)
    drop("decodes", lambda r: r["analysed"] and r["decode_error"] is None)
    record("decodes", None)
    hi = config.max_duration if config.max_duration is not None else float("inf")
    drop("duration", lambda r: r["duration"] is not None and config.min_duration <= r["duration"] <= hi)
    record("duration", [config.min_duration, config.max_duration])
    if config.licenses is not None:
        drop("licence", lambda r: licence_allowed(r["license"] or "", config.licenses))
    record("licence", list(config.licenses) if config.licenses is not None else "any")
    if config.drop_duplicates:
        drop("not a duplicate", lambda r: r["duplicate_of"] is None)
    record("not a duplicate", config.drop_duplicates)
    if config.per_uploader is not None:
        _cap(live, dropped, "per uploader", config.per_uploader, config.seed, by_uploader=True)
    record("per uploader", config.per_uploader)
    if config.max_files is not None:
        _cap(live, dropped, "max files", config.max_files, config.seed, by_uploader=False)
    record("max files", config.max_files)
    sizes: dict[int, int] = {}
    for pair_id, _ in live:
        sizes[pair_id] = sizes.get(pair_id, 0) + 1
    drop("min files", lambda r: sizes[r["pair_id"]] >= config.min_files)
    record("min files", config.min_files)

    with corpus.transaction() as db:
        db.execute("UPDATE links SET kept = 1, dropped_by = NULL")
        db.executemany(
            "UPDATE links SET kept = 0, dropped_by = ? WHERE pair_id = ? AND sound_id = ?",
            [(step, p, s) for (p, s), step in dropped.items()],
        )
        db.execute("DELETE FROM funnel")
        db.executemany(
            "INSERT INTO funnel (step_index, step, pairs, files, links, setting) VALUES (?, ?, ?, ?, ?, ?)",
            [(i, f.step, f.pairs, f.files, f.links, f.setting) for i, f in enumerate(funnel)],
        )
        corpus.set_meta("cleaning", json.dumps(asdict(config)))
    return funnel


def _cap(live: dict, dropped: dict, step: str, k: int, seed: int, by_uploader: bool) -> None:
    """Keep at most ``k`` links per pair (and uploader), in seeded order."""
    groups: dict[tuple, list[tuple[int, int]]] = {}
    for key, r in live.items():
        group = (r["pair_id"], r["uploader"]) if by_uploader else (r["pair_id"],)
        groups.setdefault(group, []).append(key)
    for keys in groups.values():
        keys.sort(key=lambda key: _order_key(seed, key[1]))
        for key in keys[k:]:
            dropped[key] = step
            del live[key]


def funnel_table(corpus: Corpus) -> list[FunnelStep]:
    """The funnel of the last cleaning run (empty if cleaning has not run)."""
    rows = corpus.query("SELECT step, pairs, files, links, setting FROM funnel ORDER BY step_index")
    return [FunnelStep(r["step"], r["pairs"], r["files"], r["links"], r["setting"]) for r in rows]


def format_funnel(funnel: list[FunnelStep]) -> str:
    """The funnel as a Markdown table."""
    lines = ["| step | setting | pairs | files | links |", "|---|---|---:|---:|---:|"]
    for f in funnel:
        lines.append(f"| {f.step} | {f.setting} | {f.pairs} | {f.files} | {f.links} |")
    return "\n".join(lines)
