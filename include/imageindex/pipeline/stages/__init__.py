"""One module per pipeline stage, named as the stage (task id, log, report key): ``plan``,
``preprocess``, ``tag_embed``, ``upsert``, ``finalize``. The stage functions are exported by
:mod:`imageindex.pipeline`; this package exports nothing, so ``imageindex.pipeline.stages.plan``
is always the module and ``imageindex.pipeline.plan`` the function.

``stages.preprocess`` is the stage (a shard's files in, staging files out); the image decoding
it calls is the library module :mod:`imageindex.preprocess`, which knows nothing of shards.
"""
