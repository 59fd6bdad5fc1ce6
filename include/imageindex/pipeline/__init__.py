"""The indexing pipeline as plain functions: plan → (per shard) preprocess → tag_embed → upsert
→ finalize.

Each stage reads its inputs from the staging location and writes its outputs there, returning
only small dicts (paths and counts) — exactly what Airflow puts in XCom. Any stage can be re-run
(a retry) and produces the same result: outputs are written atomically and documents have
deterministic ids. Where each file lives is :mod:`imageindex.layout`'s to say.

Modules:

* ``stages/``: one module per stage — ``plan``, ``preprocess``, ``tag_embed``, ``upsert``,
  ``finalize``;
* ``context``: the dataset version a stage works on (:class:`RunContext`): staging, store,
  source, models, the run folder; :class:`StageClock` times a stage's parts (benchmarks);
* ``shards``: the shard files' schemas; ``documents``: store documents from them;
* ``reuse``: content already indexed is copied, not recomputed;
* ``lease``: one run per dataset version at a time;
* ``report``: shard summaries, the run report, asset events;
* ``faults``: fault points for the kill tests (``IMAGEINDEX_FAULT_*``);
* ``runner``: a whole run in one process (CLI, tests, notebooks).
"""

from imageindex.pipeline.context import (
    RunContext,
    StageClock,
    embedder_for,
    open_dataset,
    open_run,
    tagger_for,
)
from imageindex.pipeline.faults import (
    FAULT_STAGES,
    current_try_number,
    fault_point,
    parse_fault_spec,
)
from imageindex.pipeline.lease import acquire_lease, hold_lease, release_lease
from imageindex.pipeline.report import asset_events, shard_summary
from imageindex.pipeline.runner import run_all, run_shard
from imageindex.pipeline.shards import (
    MANIFEST_SCHEMA,
    MODEL_INPUT_MAX_ROWS,
    MODEL_INPUT_SCHEMA,
    PREPROCESSED_SCHEMA,
    iter_manifest,
)
from imageindex.pipeline.stages.finalize import finalize
from imageindex.pipeline.stages.plan import (
    MODES,
    current_definitions_hash,
    load_plan,
    plan,
    shard_plan,
)
from imageindex.pipeline.stages.preprocess import preprocess
from imageindex.pipeline.stages.tag_embed import tag_embed
from imageindex.pipeline.stages.upsert import upsert

__all__ = [
    "FAULT_STAGES",
    "MANIFEST_SCHEMA",
    "MODEL_INPUT_MAX_ROWS",
    "MODEL_INPUT_SCHEMA",
    "MODES",
    "PREPROCESSED_SCHEMA",
    "RunContext",
    "StageClock",
    "acquire_lease",
    "asset_events",
    "current_definitions_hash",
    "current_try_number",
    "embedder_for",
    "fault_point",
    "finalize",
    "hold_lease",
    "iter_manifest",
    "load_plan",
    "open_dataset",
    "open_run",
    "parse_fault_spec",
    "plan",
    "preprocess",
    "release_lease",
    "run_all",
    "run_shard",
    "shard_plan",
    "shard_summary",
    "tag_embed",
    "tagger_for",
    "upsert",
]
