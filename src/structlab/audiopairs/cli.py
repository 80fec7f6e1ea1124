"""``structlab audiopairs ...``: vocabulary, query plan, build, import, clean, dedup, split, export, validate.

The recognition commands (features, bench) are added by :func:`register_recognition` from the
recognition module when it is installed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from structlab.cli import add_command


def register(subparsers) -> None:
    """Add the ``audiopairs`` command group to the ``structlab`` command line."""
    group = add_command(
        subparsers, "audiopairs", "AudioPairBank: build, clean and split an adjective/verb-noun sound corpus",
        examples="""
            structlab audiopairs vocab "dogs bark" "heavy rain" "Running-Water"
            structlab audiopairs import corpus.db
            structlab audiopairs dedup corpus.db && structlab audiopairs clean corpus.db
            structlab audiopairs split corpus.db --seed 0 --out splits.csv
            structlab audiopairs export corpus.db exported/
            FREESOUND_API_KEY=... structlab audiopairs build corpus.db --pairs pairs.txt
        """,
    )
    sub = group.add_subparsers(dest="audiopairs_command", required=True, metavar="COMMAND")
    _vocab(sub)
    _plan(sub)
    _build(sub)
    _import(sub)
    _clean(sub)
    _dedup(sub)
    _split(sub)
    _export(sub)
    _validate(sub)
    register_recognition(sub)


def register_recognition(sub) -> None:
    """The recognition side's commands (features, bench): ``structlab.audiopairs.recognition`` adds them
    through its ``register_commands(subparsers)`` when it defines one."""
    try:
        from structlab.audiopairs import recognition
    except ModuleNotFoundError as err:
        if err.name != "structlab.audiopairs.recognition":
            raise
        return
    if hasattr(recognition, "register_commands"):
        recognition.register_commands(sub)


def _corpus_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("corpus", type=Path, help="the corpus database (an SQLite file; created if missing)")
    parser.add_argument("--files-dir", type=Path,
                        help="where downloaded files go (default: the database's path with the suffix .files, "
                             "e.g. corpus.db -> corpus.files)")


def _open(args: argparse.Namespace):
    from structlab.audiopairs.corpus import Corpus

    return Corpus(args.corpus, files_dir=args.files_dir)


def _show_progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False)


# -- vocab -------------------------------------------------------------------------------------------------


def _vocab(sub) -> None:
    p = add_command(
        sub, "vocab", "parse pair texts: normalise, classify ANP/VNP, say why a text is not a pair",
        examples="""
            structlab audiopairs vocab "dogs bark" "heavy-rain" "dog_barking"
            structlab audiopairs vocab --file tags.txt --out pairs.csv
        """,
    )
    p.add_argument("texts", nargs="*", help="pair texts")
    p.add_argument("--file", type=Path, help="a pair list (text, one a line; or CSV with a 'pair' column)")
    p.add_argument("--out", type=Path, help="write the pairs to this file (.csv or .txt)")
    p.set_defaults(func=_run_vocab)


def _run_vocab(args: argparse.Namespace) -> int:
    from structlab.audiopairs.vocab import build_vocabulary, read_pair_texts, save_pairs

    texts = list(args.texts) + (read_pair_texts(args.file) if args.file else [])
    if not texts:
        raise ValueError("texts: give pair texts or --file")
    vocab = build_vocabulary(texts)
    for pair in vocab.pairs:
        sources = ", ".join(repr(t) for t in vocab.sources[pair])
        print(f"{pair.kind}  {pair.text:30s} <- {sources}  [{pair.why}]")
    for text, reason in vocab.rejected:
        print(f"---  {text!r}: {reason}")
    print(f"{len(vocab.pairs)} pairs ({sum(p.kind == 'anp' for p in vocab.pairs)} ANP, "
          f"{sum(p.kind == 'vnp' for p in vocab.pairs)} VNP), {len(vocab.rejected)} rejected")
    if args.out:
        save_pairs(vocab.pairs, args.out)
        print(f"wrote {args.out}")
    return 0


# -- plan and build ----------------------------------------------------------------------------------------


def _build_options(p: argparse.ArgumentParser, pairs_required: bool = True) -> None:
    from structlab.audiopairs.freesound import PREVIEW_KEYS

    p.add_argument("--pairs", type=Path, required=pairs_required, help="pair list (text or CSV)")
    p.add_argument("--strict", action="store_true",
                   help="abort when an entry of the pair list is not a pair (default: skip it with a warning)")
    p.add_argument("--max-files", type=int, default=150, help="search results per pair (default 150)")
    p.add_argument("--page-size", type=int, default=150, help="results per search page (at most 150)")
    p.add_argument("--min-duration", type=float, default=0.1, help="seconds (a search filter; default 0.1)")
    p.add_argument("--max-duration", type=float, default=600.0, help="seconds (a search filter; default 600)")
    p.add_argument("--license", action="append", dest="licenses",
                   choices=("Attribution", "Attribution Noncommercial", "Creative Commons 0"),
                   help="freesound licence to search for (repeatable; default: all)")
    p.add_argument("--preview", choices=PREVIEW_KEYS,
                   help="preview to prefer (default: the first a record offers of " + ", ".join(PREVIEW_KEYS) + ")")


def _build_config(args: argparse.Namespace):
    from structlab.audiopairs.build import BuildConfig

    return BuildConfig(
        max_files=args.max_files, page_size=args.page_size, min_duration=args.min_duration,
        max_duration=args.max_duration, licenses=tuple(args.licenses) if args.licenses else None,
        preview=args.preview,
    )


def _pair_list(args: argparse.Namespace):
    """The pairs of ``--pairs``: entries that are not pairs are skipped with a warning naming each, or
    (``--strict``) abort with all of them named."""
    from structlab.audiopairs.vocab import build_vocabulary, read_pair_texts

    vocab = build_vocabulary(read_pair_texts(args.pairs))
    if vocab.rejected and args.strict:
        shown = "; ".join(f"{t!r} ({why})" for t, why in vocab.rejected)
        raise ValueError(f"--pairs {args.pairs}: {len(vocab.rejected)} entries are not pairs (--strict): {shown}")
    for text, why in vocab.rejected:
        print(f"warning: {args.pairs}: skipped {text!r}: not a pair ({why})", file=sys.stderr)
    if not vocab.pairs:
        raise ValueError(f"--pairs {args.pairs}: no entry is a pair; nothing to do")
    return vocab.pairs


def _plan(sub) -> None:
    p = add_command(
        sub, "plan", "dry run: the searches a build needs, its requests, downloads and days (nothing is sent)",
        examples="""
            structlab audiopairs plan --pairs pairs.txt
            structlab audiopairs plan --n-pairs 1123 --max-files 30     # AudioPairBank's size: ~33,000 files
            structlab audiopairs plan --pairs pairs.txt --max-files 300 --corpus corpus.db
        """,
    )
    _build_options(p, pairs_required=False)
    p.add_argument("--n-pairs", type=int, help="plan for a vocabulary of this many pairs (instead of --pairs)")
    p.add_argument("--per-minute", type=int, default=60, help="API requests a minute (freesound: 60)")
    p.add_argument("--per-day", type=int, default=2000, help="API requests a day (freesound: 2000)")
    p.add_argument("--corpus", type=Path, help="count the search pages this corpus already has")
    p.add_argument("--show", type=int, default=5, help="print the first N searches (default 5)")
    p.set_defaults(func=_run_plan)


def _run_plan(args: argparse.Namespace) -> int:
    from structlab.audiopairs.build import plan, search_spec
    from structlab.audiopairs.corpus import Corpus

    if (args.pairs is None) == (args.n_pairs is None):
        raise ValueError("give exactly one of --pairs FILE and --n-pairs N")
    config = _build_config(args)
    if args.n_pairs is not None:
        print(plan(args.n_pairs, config, per_minute=args.per_minute, per_day=args.per_day).summary())
        return 0
    pairs = _pair_list(args)
    if args.corpus is not None and not args.corpus.is_file():
        raise FileNotFoundError(f"--corpus {args.corpus}: no such corpus database")
    corpus = Corpus(args.corpus) if args.corpus else None
    try:
        the_plan = plan(pairs, config, corpus, per_minute=args.per_minute, per_day=args.per_day)
    finally:
        if corpus:
            corpus.close()
    for pair in pairs[: args.show]:
        query, filt = search_spec(pair, config)
        print(f"GET /apiv2/search/text/?query={query!r} filter={filt!r} page_size={config.page_size}")
    if len(pairs) > args.show:
        print(f"... and {len(pairs) - args.show} more")
    print(the_plan.summary())
    return 0


def _build(sub) -> None:
    p = add_command(
        sub, "build", "search freesound for each pair and download the previews (resumable)",
        description=(
            "Search freesound for each pair, store results and download previews into the corpus. The API key "
            "comes from $FREESOUND_API_KEY or api_key in ~/.config/structlab/freesound.toml (chmod 600); it is "
            "never printed or stored. Requests keep to 60/min and 2000/day across runs (the request log is the "
            "--state file). Run it again to resume (also the next day, when the daily quota stopped it: exit code "
            "3). Each sound's preview is the best its record offers (hq-ogg, hq-mp3, lq-ogg, lq-mp3; --preview to "
            "prefer one) and is saved under its real container, read from its first bytes, as "
            "<files-dir>/freesound/<id>.<ogg|mp3|wav|flac|...>; <files-dir> defaults to the database's path with the "
            "suffix .files (corpus.db -> corpus.files). Exit codes: 0 done, 1 sounds found but no file downloaded "
            "(or none found), 3 stopped by the daily quota."
        ),
        examples="""
            FREESOUND_API_KEY=... structlab audiopairs build corpus.db --pairs pairs.txt
            structlab audiopairs build corpus.db --pairs pairs.txt --max-files 50 --license "Creative Commons 0"
            structlab audiopairs build corpus.db --pairs pairs.txt --dry-run
        """,
    )
    _corpus_arg(p)
    _build_options(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    p.add_argument("--base-url", default=None, help="API root (default https://freesound.org/apiv2)")
    p.add_argument("--config", type=Path, help="config file with api_key (default ~/.config/structlab/freesound.toml)")
    p.add_argument("--state", type=Path, help="request-log file for the rate limit (default: user state folder)")
    p.add_argument("--workers", type=int, default=1, help="processes for decoding (default 1)")
    p.set_defaults(func=_run_build)


def _run_build(args: argparse.Namespace) -> int:
    from structlab.audiopairs.build import build, plan
    from structlab.audiopairs.freesound import (
        DEFAULT_BASE_URL,
        FreesoundClient,
        RateLimiter,
        default_state_path,
        load_token,
    )
    pairs = _pair_list(args)
    config = _build_config(args)
    with _open(args) as corpus:
        print(plan(pairs, config, corpus).summary())
        if args.dry_run:
            return 0
        limiter = RateLimiter(args.state or default_state_path())
        with FreesoundClient(load_token(config_path=args.config), args.base_url or DEFAULT_BASE_URL, limiter) as client:
            report = build(corpus, client, pairs, config, workers=args.workers, progress=_show_progress(args))
        print(f"search pages {report.pages}, new sounds {report.new_sounds}, downloads {report.downloads} "
              f"({report.bytes / 1e6:.1f} MB), decoded {report.analysed}")
        print(json.dumps(corpus.counts()))
        if report.failed and report.with_file:
            print(f"warning: {len(report.failed)} of {report.linked} sounds have no file "
                  f"(e.g. sound {next(iter(report.failed))}: {next(iter(report.failed.values()))})", file=sys.stderr)
        if report.stopped:
            print(f"stopped: {report.stopped}; run the same command again then", file=sys.stderr)
            return 3
        problem = report.problem()
        if problem:
            print(f"error: build: {problem}", file=sys.stderr)
            return 1
    return 0


# -- import ------------------------------------------------------------------------------------------------


def _import(sub) -> None:
    p = add_command(
        sub, "import", "import a folder of labelled recordings with a manifest (default: the shared 'audio' data)",
        examples="""
            structlab audiopairs import corpus.db
            structlab audiopairs import corpus.db --root ~/sounds --manifest manifest.csv
        """,
    )
    _corpus_arg(p)
    p.add_argument("--root", type=Path, help="the folder (default: data set 'audio' from STRUCTLAB_DATA)")
    p.add_argument("--manifest", default="manifest.csv", help="manifest path, relative to ROOT (default manifest.csv)")
    p.add_argument("--no-verify", action="store_true", help="skip comparing files with the manifest's SHA-256")
    p.add_argument("--workers", type=int, default=1, help="processes for decoding (default 1)")
    p.set_defaults(func=_run_import)


def _run_import(args: argparse.Namespace) -> int:
    from structlab import data
    from structlab.audiopairs.importing import import_folder

    root = args.root or data.resolve("audio").path
    with _open(args) as corpus:
        report = import_folder(corpus, root, args.manifest, verify=not args.no_verify, progress=_show_progress(args))
        corpus.analyse(workers=args.workers, progress=_show_progress(args))
        print(f"imported {report.files} files from {root}; {report.pairs} pairs, {report.linked} labelled files"
              + (f"; {report.already} already in the corpus (same SHA-256), not added again" if report.already else ""))
        for path, annotated, parsed in report.relabelled:
            print(f"  note: {path}: annotated {annotated!r}, parse_pair reads {parsed!r} (kept as annotated)")
        print(json.dumps(corpus.counts()))
    return 0


# -- clean, dedup ------------------------------------------------------------------------------------------


def _clean(sub) -> None:
    p = add_command(
        sub, "clean", "apply the cleaning steps and print the funnel (pairs and files left after each step)",
        examples="""
            structlab audiopairs clean corpus.db
            structlab audiopairs clean corpus.db --rule both-tags --min-files 10 --per-uploader 3
            structlab audiopairs clean corpus.db --license CC0-1.0 --license CC-BY-4.0 --max-duration 30
        """,
    )
    _corpus_arg(p)
    p.add_argument("--rule", choices=("both-tags", "phrase", "either"), default="either", help="tag-match rule")
    p.add_argument("--min-duration", type=float, default=0.1, help="seconds (default 0.1)")
    p.add_argument("--max-duration", type=float, default=600.0, help="seconds (default 600)")
    p.add_argument("--license", action="append", dest="licenses", help="allowed licence, SPDX id (repeatable)")
    p.add_argument("--keep-duplicates", action="store_true", help="keep files de-duplication marked")
    p.add_argument("--per-uploader", type=int, help="at most K files per uploader per pair")
    p.add_argument("--max-files", type=int, help="at most N files per pair")
    p.add_argument("--min-files", type=int, default=1, help="drop pairs with fewer files (default 1)")
    p.add_argument("--seed", type=int, default=0, help="order in which capped files are kept")
    p.add_argument("--workers", type=int, default=1, help="processes for decoding (default 1)")
    p.set_defaults(func=_run_clean)


def _run_clean(args: argparse.Namespace) -> int:
    from structlab.audiopairs.cleaning import CleaningConfig, clean, format_funnel

    config = CleaningConfig(
        rule=args.rule, min_duration=args.min_duration, max_duration=args.max_duration,
        licenses=tuple(args.licenses) if args.licenses else None, drop_duplicates=not args.keep_duplicates,
        per_uploader=args.per_uploader, max_files=args.max_files, min_files=args.min_files, seed=args.seed,
    )
    with _open(args) as corpus:
        print(format_funnel(clean(corpus, config, workers=args.workers)))
    return 0


def _dedup(sub) -> None:
    p = add_command(
        sub, "dedup",
        "find duplicates (same freesound id, bytes or decoded audio) and related sounds (the same audio up to a "
        "gain under different labels, e.g. soft/hard: both kept)",
        examples="structlab audiopairs dedup corpus.db\nstructlab audiopairs dedup corpus.db --workers 2",
    )
    _corpus_arg(p)
    p.add_argument("--workers", type=int, default=1, help="processes for decoding (default 1)")
    p.set_defaults(func=_run_dedup)


def _run_dedup(args: argparse.Namespace) -> int:
    from structlab.audiopairs.dedup import deduplicate

    with _open(args) as corpus:
        report = deduplicate(corpus, workers=args.workers, progress=_show_progress(args))
        name = {r["id"]: r["path"] or f"freesound:{r['freesound_id']}" for r in corpus.sounds()}
        labels = _labels(corpus)
        for level in ("freesound-id", "bytes", "audio"):
            groups = report.by_level(level)
            print(f"{level}: {len(groups)} group(s)")
            for g in groups:
                if level == "freesound-id":
                    print(f"  {name[g.keep]} found for {g.detail[0]}")
                    continue
                for copy in g.copies:
                    print(f"  {name[copy]} ({labels.get(copy, '-')}) = {name[g.keep]} ({labels.get(g.keep, '-')})"
                          f"  [{g.detail.get(copy, '')}]")
        print(f"related (same audio, different labels: both kept, one split group): {len(report.related)}")
        for r in report.related:
            print(f"  {name[r.a]} ({labels.get(r.a, '-')}) ~ {name[r.b]} ({labels.get(r.b, '-')})"
                  f"  [{r.level}; gain {r.gain_db:+.1f} dB]")
        print(f"fingerprint candidates checked on decoded audio: {report.candidates}, confirmed: {report.verified}")
    return 0


def _labels(corpus) -> dict[int, str]:
    rows = corpus.query(
        "SELECT s.id, COALESCE(s.label, GROUP_CONCAT(p.text, '; '), s.name) AS label FROM sounds s "
        "LEFT JOIN links l ON l.sound_id = s.id LEFT JOIN pairs p ON p.id = l.pair_id GROUP BY s.id"
    )
    return {r["id"]: r["label"] for r in rows}


# -- split, export, validate --------------------------------------------------------------------------------


def _split(sub) -> None:
    p = add_command(
        sub, "split", "train/val/test split grouped by uploader (and source recording), seeded and reproducible",
        examples="""
            structlab audiopairs split corpus.db
            structlab audiopairs split corpus.db --test 0.25 --val 0 --seed 3 --out splits.csv
        """,
    )
    _corpus_arg(p)
    p.add_argument("--val", type=float, default=0.1, help="share of files for validation (default 0.1)")
    p.add_argument("--test", type=float, default=0.2, help="share of files for test (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--out", type=Path, help="also write the split as CSV")
    p.set_defaults(func=_run_split)


def _run_split(args: argparse.Namespace) -> int:
    from structlab.audiopairs.splits import SplitConfig, make_splits, write_splits

    with _open(args) as corpus:
        sizes = make_splits(corpus, SplitConfig(val=args.val, test=args.test, seed=args.seed))
        groups = corpus.query("SELECT split, COUNT(DISTINCT group_key) AS n FROM splits GROUP BY split")
        per = {r["split"]: r["n"] for r in groups}
        print("  ".join(f"{s}: {n} files / {per.get(s, 0)} groups" for s, n in sizes.items()))
        if args.out:
            write_splits(corpus, args.out)
            print(f"wrote {args.out}")
    return 0


def _export(sub) -> None:
    p = add_command(
        sub, "export", "write manifest.csv/.json (licence and attribution per file) and ATTRIBUTION.txt",
        examples="""
            structlab audiopairs export corpus.db exported/
            structlab audiopairs export corpus.db dataset/ --copy
        """,
    )
    _corpus_arg(p)
    p.add_argument("folder", type=Path, help="output folder")
    p.add_argument("--copy", action="store_true", help="copy the files into FOLDER/files (a self-contained set)")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from structlab.audiopairs.export import export

    with _open(args) as corpus:
        report = export(corpus, args.folder, copy=args.copy)
    print(f"{report.rows} rows, {report.files} files -> " + ", ".join(str(p) for p in report.written))
    return 0


def _validate(sub) -> None:
    p = add_command(
        sub, "validate", "check files against their recorded SHA-256: a corpus database or an exported manifest",
        examples="""
            structlab audiopairs validate corpus.db
            structlab audiopairs validate --manifest dataset/manifest.csv
        """,
    )
    p.add_argument("corpus", type=Path, nargs="?", help="corpus database")
    p.add_argument("--files-dir", type=Path, help="where downloaded files are (default: CORPUS.files)")
    p.add_argument("--manifest", type=Path, help="an exported manifest.csv instead")
    p.set_defaults(func=_run_validate)


def _run_validate(args: argparse.Namespace) -> int:
    if args.manifest:
        from structlab.audiopairs.export import validate_manifest

        checked, missing, mismatched = validate_manifest(args.manifest)
        ok = not missing and not mismatched
        verdict = "ok" if ok else "FAILED"
        print(f"{verdict}: {checked} files checked, {len(missing)} missing, {len(mismatched)} mismatched")
        for rel in (missing + mismatched)[:20]:
            print(f"  {rel}")
        return 0 if ok else 1
    if args.corpus is None:
        raise ValueError("corpus: give a corpus database or --manifest")
    if not args.corpus.is_file():
        raise FileNotFoundError(f"{args.corpus}: no such corpus database")
    with _open(args) as corpus:
        report = corpus.validate()
    print(report.summary())
    return 0 if report.ok else 1
