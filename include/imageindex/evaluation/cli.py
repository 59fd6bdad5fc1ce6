"""The ``imageindex eval`` and ``eval-data`` commands, and :func:`run_eval`, what ``eval`` runs.

Wired into :mod:`imageindex.cli` by :func:`add_cli` / :func:`run_cli`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from imageindex.errors import ConfigError, ImageIndexError
from imageindex.evaluation.builtin_set import build_eval_set, ensure_eval_set
from imageindex.evaluation.dataset import DATASET_FILE, IMAGES_DIR, load_eval_set
from imageindex.evaluation.metrics import DEFAULT_KS, check_ks
from imageindex.evaluation.models import (
    DEFAULT_MODELS,
    DEFAULT_PROMPT,
    check_prompt,
    resolve_model,
)
from imageindex.evaluation.report import write_model_result, write_report
from imageindex.evaluation.runner import evaluate_model


def run_eval(
    data_dir: str | Path,
    models: Sequence[str],
    out_dir: str | Path,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    prompt: str = DEFAULT_PROMPT,
) -> dict:
    """Evaluate ``models`` on ``data_dir``; write per-model folders, summary.json and the plot."""
    ks = check_ks(ks)
    check_prompt(prompt)
    choices = [resolve_model(m) for m in models]
    labels = [c.label for c in choices]
    if not choices or len(set(labels)) != len(labels):
        raise ConfigError(f"models {labels}: give one or more models, each once")
    eval_set = load_eval_set(data_dir)
    summaries = []
    for choice in choices:
        result = evaluate_model(eval_set, choice, ks=ks, prompt=prompt)
        summaries.append(write_model_result(out_dir, result))
    return write_report(out_dir, eval_set.info(), summaries)


def format_table(report: dict) -> str:
    """The summary as a text table: mean P@K and, in brackets, the tags counted at K."""
    ks = report["ks"]
    rows = [["model", "images", *[f"P@{k}" for k in ks], "seconds"]]
    for label, s in report["models"].items():
        cells = [label, str(s["images"] - s.get("failed_images", 0))]
        for k in ks:
            p = s["precision"].get(str(k))
            n = s["tags_counted"].get(str(k), 0)
            cells.append("-" if p is None else f"{p:.4f} ({n})")
        cells.append(f"{s['seconds'].get('total', 0):.1f}")
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def add_cli(sub) -> None:
    """Add the ``eval`` and ``eval-data`` subcommands to an ``add_subparsers()`` object."""
    e = sub.add_parser(
        "eval",
        help="text-to-image retrieval Precision@K of models on an evaluation folder",
        description="Each distinct tag of DATA/dataset.jsonl is a text query; Precision@K per "
        "tag and its mean over the tags with at least K relevant images (PAI's GME "
        "evaluation). Writes per-tag logs, summary.json and a plot into --out.",
    )
    e.add_argument(
        "--data",
        help=f"folder with {DATASET_FILE} and {IMAGES_DIR}/ (default: the built-in set under "
        "$IMAGEINDEX_HOME/eval/data, built when missing)",
    )
    e.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="NAME",
        help="offline, filename (baseline), dashscope, gme, TYPE:MODEL or a JSON embedder "
        f"spec; repeat for several (default: {' '.join(DEFAULT_MODELS)})",
    )
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--ks", default=",".join(map(str, DEFAULT_KS)), help="increasing Ks")
    e.add_argument(
        "--prompt",
        default=DEFAULT_PROMPT,
        help="query text template with {tag} (default: %(default)r)",
    )
    e.add_argument("--json", action="store_true", help="print summary.json instead of a table")

    d = sub.add_parser(
        "eval-data", help="build the evaluation folder from the labelled photos in installed wheels"
    )
    d.add_argument("dest")


def run_cli(args) -> int:
    """Run ``eval`` or ``eval-data``; errors are one line on stderr and exit code 2."""
    import sys

    try:
        if args.command == "eval-data":
            print(json.dumps(build_eval_set(args.dest)))
            return 0
        if args.command == "eval":
            data = args.data
            if not data:
                data = str(ensure_eval_set().root)
            out = run_eval(
                data,
                args.models or list(DEFAULT_MODELS),
                args.out,
                ks=check_ks(args.ks),
                prompt=args.prompt,
            )
            if args.json:
                print(json.dumps(out["report"], indent=2))
            else:
                r = out["report"]
                print(f"{r['data']}: {r['images']} images, {r['tags']} tags")
                print(format_table(r))
                print(f"summary: {out['summary']}")
                print(f"plot: {out['plot']}")
            return 0
    except (ImageIndexError, FileNotFoundError) as exc:
        print(f"imageindex: error: {exc}", file=sys.stderr)
        return 2
    print(f"imageindex: error: unknown command {args.command!r}", file=sys.stderr)
    return 2
