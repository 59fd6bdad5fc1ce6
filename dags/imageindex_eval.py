"""
# imageindex_eval — text-to-image retrieval Precision@K

Evaluates embedding models on a folder in PAI's evaluation layout (`dataset.jsonl` with one
`{"image_id": ..., "tags": [...]}` per line, images in `images/`): each distinct tag is a text
query, and Precision@K (K = 1, 5, 10, 50, 100) is averaged over the tags that have at least K
relevant images, exactly as PAI's GME evaluation script does (see `docs/evaluation.md`).

1. **prepare** — checks the evaluation folder (builds the built-in set from the labelled photos
   in installed wheels when `data_dir` is empty and the set is missing) and the model names.
2. **evaluate** (mapped, one per model) — embeds the images and the tag queries, ranks, scores;
   writes `per_tag.log`, `per_tag.jsonl` and `result.json` under `<out_dir>/<model>/`.
3. **report** — merges the models into `<out_dir>/summary.json` and `precision_at_k.png`.

Models: `offline` (the bundled ConSE model), `filename` (a baseline that ranks by file name),
`dashscope`, `gme`, `TYPE:MODEL` (e.g. `dashscope:multimodal-embedding-v1`) or a JSON embedder
spec. XCom carries paths and the summary numbers only.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from imageindex.errors import airflow_outcome

DEFAULT_MODELS = ["offline", "filename"]
DEFAULT_KS = [1, 5, 10, 50, 100]


def _out_dir(param: str, run_id: str) -> str:
    from imageindex.config import settings

    if param:
        return param
    safe = re.sub(r"[^0-9A-Za-z._-]+", "_", run_id).strip("._") or "run"
    return str(settings().home / "eval" / "runs" / safe)


@dag(
    dag_id="imageindex_eval",
    description="Text-to-image retrieval Precision@K per model (prepare → evaluate → report)",
    doc_md=__doc__,
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["imageindex", "evaluation"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30)},
    params={
        "data_dir": Param(
            "",
            type="string",
            title="Evaluation folder",
            description="Folder with dataset.jsonl and images/. Empty: the built-in set under "
            "$IMAGEINDEX_HOME/eval/data (built from the sample photos when missing).",
        ),
        "models": Param(
            DEFAULT_MODELS,
            type="array",
            items={"type": "string"},
            minItems=1,
            title="Models",
            description="offline, filename, dashscope, gme, TYPE:MODEL or a JSON embedder spec.",
        ),
        "out_dir": Param(
            "",
            type="string",
            title="Output folder",
            description="Empty: $IMAGEINDEX_HOME/eval/runs/<run id>.",
        ),
        "ks": Param(
            DEFAULT_KS,
            type="array",
            items={"type": "integer", "minimum": 1},
            minItems=1,
            title="Ks",
            description="Increasing K values for Precision@K.",
        ),
        "prompt": Param(
            "a photo of a {tag}",
            type="string",
            title="Query template",
            description="Text sent for each tag; must contain {tag}.",
        ),
    },
    render_template_as_native_obj=True,
)
def imageindex_eval():
    @task
    @airflow_outcome()  # a bad folder or model name stays bad: fails at once, no retry
    def prepare() -> dict:
        """Check (or build) the evaluation folder and the models; fix the output folder."""
        from imageindex import evaluation
        from imageindex.errors import ConfigError

        ctx = get_current_context()
        p = ctx["params"]
        ks = list(evaluation.check_ks(list(p["ks"])))
        evaluation.check_prompt(p["prompt"])
        labels = [evaluation.resolve_model(m).label for m in p["models"]]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"models {labels}: name each model once")
        eval_set = evaluation.ensure_eval_set(p["data_dir"] or None)
        return {
            **eval_set.info(),
            "models": labels,
            "ks": ks,
            "prompt": p["prompt"],
            "out_dir": _out_dir(p["out_dir"], ctx["run_id"]),
        }

    @task
    def model_names(prepared: dict) -> list[str]:
        return prepared["models"]

    @task(max_active_tis_per_dagrun=1)
    @airflow_outcome()  # a rejected key fails at once; an outage keeps the retry
    def evaluate(model: str, prepared: dict) -> dict:
        """Evaluate one model; the per-tag results stay on disk, XCom gets the numbers."""
        from imageindex import evaluation

        eval_set = evaluation.load_eval_set(prepared["data"])
        result = evaluation.evaluate_model(
            eval_set, model, ks=prepared["ks"], prompt=prepared["prompt"]
        )
        summary = evaluation.write_model_result(prepared["out_dir"], result)
        return evaluation.summary_numbers(summary)

    @task
    @airflow_outcome()
    def report(results, prepared: dict) -> dict:
        """Merge the models' summaries into summary.json and draw the comparison plot."""
        from imageindex import evaluation

        if isinstance(results, dict):
            results = [results]
        info = {k: v for k, v in prepared.items() if k not in ("models", "ks", "prompt", "out_dir")}
        out = evaluation.write_report(prepared["out_dir"], info, list(results))
        return {
            "summary": out["summary"],
            "plot": out["plot"],
            "precision": {m: s["precision"] for m, s in out["report"]["models"].items()},
        }

    prepared = prepare()
    results = evaluate.partial(prepared=prepared).expand(model=model_names(prepared))
    report(results, prepared)


eval_dag = imageindex_eval()
