"""Every source of a snapshot behind one entry (:func:`make_snapshot`: tiny, hub or a user's folder),
and the snapshot verbs: ``snapshot`` makes one, ``verify`` hashes every file of one, modeling files included."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from u1lib.io import read_json
from u1lib.modeling import verify_modeling
from u1lib.snapshot import default_snapshot_dir, snapshot_dir, verify_snapshot
from u1lib.snapshot_hub import snapshot_hub
from u1lib.snapshot_record import snapshot_local, snapshot_tiny


def make_snapshot(
    source: str,
    manifest_path: str | Path,
    *,
    model: str,
    repo_id: str | None = None,
    revision: str | None = None,
    seed: int = 0,
    variant: str = "u1",
    weights: str = "auto",
    out: str | Path | None = None,
    allow_patterns: list[str] | None = None,
) -> dict:
    """One entry for every source: ``tiny`` (of ``variant``), ``hub``, or the path of a folder holding a
    downloaded model."""
    out = default_snapshot_dir(manifest_path) if out is None else Path(out)
    if source == "tiny":
        return snapshot_tiny(out, manifest_path, seed=seed, model=model, variant=variant, weights=weights)
    if source == "hub":
        return snapshot_hub(repo_id, revision, out, manifest_path, model=model, allow_patterns=allow_patterns)
    return snapshot_local(source, manifest_path, model=model)


# ---------------------------------------------------------------------------------------------
# command line


def _snapshot_cli(verb: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m u1lib {verb}", description="Download, build or verify a model snapshot and write its manifest."
    )
    parser.add_argument("--model", required=True, help="model name recorded in the manifest")
    parser.add_argument(
        "--source",
        required=True,
        help="tiny (build the embedded tiny model), hub (download --repo-id at --revision), or the path of a "
        "folder holding a downloaded model (verified in place, never written to; ./hub for a folder named hub)",
    )
    parser.add_argument("--repo-id", help="Hub repo (source hub)")
    parser.add_argument("--revision", help="full 40-hex commit sha (source hub)")
    parser.add_argument(
        "--allow-pattern", action="append", dest="allow_patterns", help="download only matching files (repeatable)"
    )
    parser.add_argument("--seed", type=int, help="weight seed (source tiny, default 0)")
    parser.add_argument(
        "--variant", choices=("u1", "u15", "a3b"), help="architecture of the tiny model (source tiny, default u1)"
    )
    parser.add_argument(
        "--weights",
        choices=("auto", "pretrained", "random"),
        help="weights of the tiny model (source tiny, default auto: pretrained for u1 at seed 0, else random)",
    )
    parser.add_argument(
        "--out", type=Path, help="folder to build or download into (tiny, hub); default: snapshot/ beside --manifest"
    )
    parser.add_argument("--manifest", required=True, type=Path, help="manifest.json to write")
    args = parser.parse_args(argv)
    hub_only = {"--repo-id": args.repo_id, "--revision": args.revision, "--allow-pattern": args.allow_patterns}
    if args.source == "hub":
        if not (args.repo_id and args.revision):
            parser.error("--source hub needs --repo-id and --revision")
    elif any(hub_only.values()):
        parser.error(f"{', '.join(k for k, v in hub_only.items() if v)}: only for --source hub")
    for flag, value in (("--seed", args.seed), ("--variant", args.variant), ("--weights", args.weights)):
        if value is not None and args.source != "tiny":
            parser.error(f"{flag}: only for --source tiny")
    if args.out is not None and args.source not in ("tiny", "hub"):
        parser.error("--out: a folder source is verified in place, nothing is written there")
    manifest = make_snapshot(
        args.source,
        args.manifest,
        model=args.model,
        repo_id=args.repo_id,
        revision=args.revision,
        seed=args.seed or 0,
        variant=args.variant or "u1",
        weights=args.weights or "auto",
        out=args.out,
        allow_patterns=args.allow_patterns,
    )
    print(f"{args.manifest}: {len(manifest['files'])} files, manifest_hash {manifest['manifest_hash']}")
    return 0


def _verify_cli(verb: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m u1lib {verb}",
        description="Check a snapshot against its manifest (sizes and sha256 of every file) and its .py files "
        "against the modeling report.",
    )
    parser.add_argument("--manifest", required=True, type=Path, help="the snapshot's manifest.json")
    parser.add_argument("--snapshot", type=Path, help="snapshot folder (default: the one the manifest records)")
    parser.add_argument(
        "--modeling", type=Path, help="modeling.json of install-modeling (default: modeling.json beside --manifest)"
    )
    args = parser.parse_args(argv)
    folder = args.snapshot or snapshot_dir(args.manifest)
    problems = verify_snapshot(folder, read_json(args.manifest))
    report = args.modeling or args.manifest.with_name("modeling.json")
    problems += verify_modeling(folder, report, required=args.modeling is not None)
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{folder}: {'verified' if not problems else f'{len(problems)} problem(s)'} against {args.manifest}")
    return 1 if problems else 0


_VERBS = {"snapshot": _snapshot_cli, "verify": _verify_cli}


def cli(verb: str, argv: list[str]) -> int:
    return _VERBS[verb](verb, argv)
