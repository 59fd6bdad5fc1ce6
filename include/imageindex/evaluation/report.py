"""What an evaluation writes: per-model folders (the reference's per-tag log, per-tag JSONL,
``result.json``) and the merged ``summary.json`` with its plot."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imageindex.errors import ConfigError
from imageindex.evaluation.plot import plot_summary
from imageindex.evaluation.runner import ModelResult
from imageindex.modelcache import atomic_write

#: Ranked image ids kept per tag in ``per_tag.jsonl`` (the reference keeps 10).
TOP_LOGGED = 10
PLOT_FILE = "precision_at_k.png"
SUMMARY_FILE = "summary.json"


def model_dir_name(label: str) -> str:
    """A folder name for a model label (``dashscope:x`` -> ``dashscope_x``)."""
    safe = re.sub(r"[^0-9A-Za-z._-]+", "_", label).strip("._") or "model"
    if safe != label:
        safe += "-" + hashlib.sha256(label.encode()).hexdigest()[:8]
    return safe


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically: a reader sees the old file or the new one."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_model_result(out_dir: str | Path, result: ModelResult) -> dict:
    """Write ``out_dir/<model>/{per_tag.log, per_tag.jsonl, result.json}``; return the summary.

    ``per_tag.log`` has the reference's lines; ``per_tag.jsonl`` one object per tag with the
    precisions, the capped last line, the relevant ids and the top :data:`TOP_LOGGED` ranked ids.
    The returned summary (also ``result.json``) carries ``path``, the model's folder.
    """
    folder = Path(out_dir) / model_dir_name(result.label)
    log_lines: list[str] = []
    jsonl_lines: list[str] = []
    for tag, lines in result.per_tag.items():
        gts = result.relevant[tag]
        for line in lines:
            # The reference's format, trailing space included.
            log_lines.append(
                f"Tag {tag}, Len(GT) {len(gts)}, Precision@{line.k} {line.precision:.4f} "
            )
        capped = next((line for line in lines if not line.counted), None)
        record = {
            "tag": tag,
            "query": None if result.prompt is None else result.prompt.format(tag=tag),
            "n_relevant": len(gts),
            "precision": {str(line.requested): line.precision for line in lines if line.counted},
            "capped": None
            if capped is None
            else {"requested": capped.requested, "k": capped.k, "precision": capped.precision},
            "gts": gts,
            "preds": result.rankings[tag][:TOP_LOGGED],
        }
        jsonl_lines.append(json.dumps(record, ensure_ascii=False))
    summary = {**result.summary(), "path": str(folder)}
    if result.failed:
        summary["failures"] = result.failed
    write_text(folder / "per_tag.log", "\n".join(log_lines) + "\n")
    write_text(folder / "per_tag.jsonl", "\n".join(jsonl_lines) + "\n")
    write_text(folder / "result.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary


def write_report(out_dir: str | Path, set_info: dict, summaries: Sequence[dict]) -> dict:
    """Merge per-model summaries into ``summary.json`` and draw ``precision_at_k.png``."""
    out = Path(out_dir)
    models: dict[str, dict] = {}
    for s in summaries:
        if s["model"] in models:
            raise ConfigError(f"model {s['model']!r} evaluated twice; name each model once")
        models[s["model"]] = summary_numbers(s)
    ks = sorted({int(k) for s in summaries for k in s["precision"]})
    report = {
        **set_info,
        "ks": ks,
        "rule": (
            "mean P@K over the tags with at least K relevant images; at the first K above a "
            "tag's relevant count the tag's P@len(gts) is logged but not counted"
        ),
        "models": models,
    }
    summary_path = out / SUMMARY_FILE
    write_text(summary_path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    plot_path = plot_summary(report, out / PLOT_FILE)
    return {"summary": str(summary_path), "plot": str(plot_path), "report": report}


def summary_numbers(summary: dict[str, Any]) -> dict[str, Any]:
    """A model summary without its per-image failure messages: small enough for XCom."""
    return {k: v for k, v in summary.items() if k != "failures"}


def summary_frame(report: dict | str | Path):
    """An evaluation summary as a pandas DataFrame, one row per model (the index): ``images``,
    ``failed_images``, ``tags``, ``P@K`` (mean precision) and ``tags@K`` (tags counted at K) for
    each K, and ``seconds``. ``report`` is what :func:`write_report` returns (or its
    ``"report"``), ``summary.json``, or the folder holding it."""
    import pandas as pd

    if isinstance(report, (str, Path)):
        path = Path(report)
        path = path / SUMMARY_FILE if path.is_dir() else path
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: not an evaluation summary ({exc})") from None
    report = report.get("report", report)
    if not isinstance(report.get("models"), dict) or "ks" not in report:
        raise ConfigError("not an evaluation summary: it needs 'ks' and 'models'")
    rows = []
    for label, s in report["models"].items():
        row = {
            "model": label,
            "images": s.get("images"),
            "failed_images": s.get("failed_images", 0),
            "tags": s.get("tags"),
        }
        for k in report["ks"]:
            row[f"P@{k}"] = s["precision"].get(str(k))
        for k in report["ks"]:
            row[f"tags@{k}"] = s.get("tags_counted", {}).get(str(k), 0)
        row["seconds"] = s.get("seconds", {}).get("total")
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")
