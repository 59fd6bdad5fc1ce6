"""The context every stage works in: one dataset version, its staging, store, source and models,
and, for plan and finalize, the run's folder. Paths come from :mod:`imageindex.layout`, the
connection id too; a stage never builds either itself.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property

from imageindex import layout
from imageindex.layout import RunFolder, StagingLayout
from imageindex.registry import load_registry
from imageindex.specs import DatasetSpec


class StageClock:
    """Seconds per named part of a stage (``open_store``, ``load_state``, …), for benchmarks
    and profiling: pass one as ``clock=`` to :func:`plan` or :func:`finalize` and read
    :attr:`seconds` afterwards; ``on_part(name)`` is called as each part ends (e.g. to sample
    memory there). Without one, a stage keeps its own and nobody reads it."""

    def __init__(self, on_part: Callable[[str], None] | None = None):
        self.seconds: Counter = Counter()
        self.on_part = on_part

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0
            if self.on_part is not None:
                self.on_part(name)


@dataclass
class RunContext:
    """One dataset version as a stage sees it; ``run`` is the run's folder where the stage
    knows the run (plan, finalize), None in the shard stages (they get their shard's files)."""

    dataset: DatasetSpec
    version: str
    run: RunFolder | None = None
    clock: StageClock = field(default_factory=StageClock)

    @property
    def layout(self) -> StagingLayout:
        return StagingLayout.current()

    @property
    def run_dir(self) -> str:
        if self.run is None:
            raise AttributeError("this stage context has no run folder (a shard stage's)")
        return self.run.uri

    @property
    def s3_conn_id(self) -> str:
        return layout.s3_conn_id(self.dataset)

    @cached_property
    def staging(self):
        """The staging root, opened with the dataset's connection."""
        return layout.open_dataset_staging(self.dataset)

    def store(self):
        from imageindex.stores import open_store

        with self.clock.part("open_store"):  # the first one imports the store's client
            return open_store(self.dataset.store_uri, spec=self.dataset.store)

    def source(self):
        from imageindex.sources import open_version_source

        return open_version_source(
            self.dataset.version(self.version),
            s3_conn_id=self.s3_conn_id,
            fingerprint=self.dataset.fingerprint,
        )

    def embedder(self):
        return embedder_for(self.dataset)

    def tagger(self, embedder):
        return tagger_for(self.dataset, embedder)


def open_dataset(
    dataset_id: str,
    version: str | None,
    *,
    registry_path: str | None = None,
    clock: StageClock | None = None,
) -> RunContext:
    """The context of a shard stage: the dataset version as given (plan resolved it), no run
    folder."""
    dataset = load_registry(registry_path).get(dataset_id)
    version = version or dataset.current_version
    return RunContext(dataset=dataset, version=version, clock=clock or StageClock())


def open_run(
    dataset_id: str,
    version: str | None,
    run_id: str,
    *,
    registry_path: str | None = None,
    clock: StageClock | None = None,
) -> RunContext:
    """The context of ``run_id`` on the version (the current one when None), with its folder."""
    dataset = load_registry(registry_path).get(dataset_id)
    version = dataset.version(version).name
    run = StagingLayout.current().run(dataset.id, version, run_id)
    return RunContext(dataset=dataset, version=version, run=run, clock=clock or StageClock())


def embedder_for(dataset: DatasetSpec):
    """The dataset's embedder (cached per process)."""
    from imageindex.embedders import get_embedder

    return get_embedder(dataset.embedder)


def tagger_for(dataset: DatasetSpec, embedder):
    """The dataset's tagger over ``embedder`` (cached per process)."""
    from imageindex.taggers import get_tagger

    return get_tagger(dataset.tagger, embedder, base_dir=dataset.base_dir)


def check_model(ctx: RunContext, store) -> None:
    """Refuse early, before any work, when the index holds vectors of another model."""
    with ctx.clock.part("check_model"):
        if store.table_info(ctx.dataset.id) is None:
            return
        with ctx.clock.part("check_model.embedder_init"):
            embedder = ctx.embedder()
        store.ensure_table(ctx.dataset.id, model=embedder.name, dim=embedder.dim)
