"""Bulk writes to an OpenSearch index: upserts (update with ``doc_as_upsert``), deletes and
user-tag scripts, with 429/409 items sent again; :class:`BulkWrites` is the store's write half."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Sequence
from datetime import datetime

import pyarrow as pa

from imageindex.errors import StoreError
from imageindex.stores.base import chunks, conform_rows
from imageindex.stores.opensearch.client import error_reason
from imageindex.stores.opensearch.mapping import VECTOR_FIELD, iso, unique_ids
from imageindex.stores.schema import STATUS_OK, document_schema

log = logging.getLogger(__name__)

# ctx.op = 'none' makes an unchanged document a "noop", which is how changes are counted.
ADD_USER_TAGS = (
    "List cur = ctx._source.tags_user == null ? new ArrayList() "
    ": new ArrayList(ctx._source.tags_user); "
    "boolean changed = false; "
    "for (def t : params.tags) { if (!cur.contains(t)) { cur.add(t); changed = true; } } "
    "if (changed) { ctx._source.tags_user = cur; } else { ctx.op = 'none'; }"
)
REMOVE_USER_TAGS = (
    "if (ctx._source.tags_user == null) { ctx.op = 'none'; } else { "
    "List out = new ArrayList(); "
    "for (def t : ctx._source.tags_user) { if (!params.tags.contains(t)) { out.add(t); } } "
    "if (out.size() != ctx._source.tags_user.size()) { ctx._source.tags_user = out; } "
    "else { ctx.op = 'none'; } }"
)


class BulkWriteError(StoreError):
    """Some documents of an upsert were rejected; the others were written.

    ``errors``: ``[{"id", "status", "type", "reason"}]`` per rejected document; ``written``: how
    many documents landed.
    """

    def __init__(self, message: str, *, errors: list[dict], written: int):
        super().__init__(message)
        self.errors = errors
        self.written = written


#: Stands for a document's vector until its bulk line is text. The vector is the document's last
#: key, so the last occurrence of the token in the line is the vector's (nothing after it holds
#: stored values).
_VEC_TOKEN = "\x00vector\x00"
_VEC_JSON = json.dumps(_VEC_TOKEN)


def ndjson(lines: list[dict]) -> str:
    return "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines)


def _vector_texts(column: pa.ChunkedArray) -> list[str | None]:
    """Each vector as a JSON array, None where null. ``%.9g`` gives every float32 back exactly
    and is 3x faster than json.dumps of the widened doubles, 40 % shorter (5,000 x 384: 0.6 s
    against 1.9 s, 26 MB against 42 MB)."""
    arr = column.combine_chunks()
    n, dim = len(arr), arr.type.list_size
    values = arr.values.to_numpy(zero_copy_only=False)
    values = values[arr.offset * dim : (arr.offset + n) * dim].reshape(n, dim)
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    fmt = "[" + ",".join(["%.9g"] * dim) + "]"
    return [fmt % tuple(v) if ok else None for v, ok in zip(values.tolist(), valid, strict=True)]


class BulkWrites:
    """The write half of :class:`~imageindex.stores.opensearch.store.OpenSearchStore`: upsert,
    delete and user tags as bulk requests. Uses the store's ``client``, ``_call``,
    ``_require``, ``_info``, ``index_name`` and write settings."""

    @property
    def _refresh_param(self) -> str:
        return {True: "true", False: "false"}.get(self.refresh, "wait_for")

    def _bulk(self, name: str, body: str | list[dict], what: str) -> list[dict]:
        """One bulk request (NDJSON text or action lines); returns its items (the
        request-level errors become StoreErrors)."""
        resp = self._call(
            what,
            lambda: self.client.bulk(
                index=name,
                body=body,
                refresh=self._refresh_param,
                request_timeout=self.timeout,
            ),
        )
        return [next(iter(item.values())) for item in resp.get("items") or []]

    def _bulk_with_retries(
        self, name: str, ops: list[tuple[str, str]], what: str
    ) -> list[tuple[str, dict]]:
        """Send ``ops`` (id, its action and source lines as NDJSON text); items rejected as too busy (429) or as a version
        conflict (409) are sent again with backoff, up to ``max_retries`` attempts in all.
        Returns (id, item) for every op, the last attempt's item."""
        results: dict[int, dict] = {}
        pending = list(range(len(ops)))
        delay = self.retry_base_delay
        for attempt in range(1, self.max_retries + 1):
            items = self._bulk(name, "".join(ops[i][1] for i in pending), what)
            if len(items) != len(pending):
                raise StoreError(
                    f"{what}: OpenSearch answered {len(items)} items for {len(pending)} documents"
                )
            again = []
            for i, item in zip(pending, items, strict=True):
                results[i] = item
                status = item.get("status")
                # 429: the node was too busy. 409: a scripted update lost a race more often
                # than retry_on_conflict allows; sent again, the script runs on the new version.
                if status in (429, 409):
                    again.append(i)
                    self.stats["busy_retries" if status == 429 else "conflict_retries"] += 1
            if not again or attempt == self.max_retries:
                break
            log.info(
                "%s: %d document(s) rejected as busy or conflicting, retrying", what, len(again)
            )
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 10.0)
            pending = again
        return [(ops[i][0], results[i]) for i in range(len(ops))]

    # ---------------------------------------------------------------------------- writes

    def _conform(self, dataset_id: str, model: str | None, dim: int, table: pa.Table) -> pa.Table:
        return conform_rows(dataset_id, table, document_schema(dim), model=model, dim=dim)

    @staticmethod
    def _documents(rows: pa.Table) -> list[tuple[dict, str | None]]:
        """(JSON document, vector as JSON text or None) of each row: every column, nulls
        included (they clear stored values when merged), except a null ``tags_user`` (the stored
        one stays); dates as ISO strings; no vector unless the document is ok."""
        vectors = _vector_texts(rows[VECTOR_FIELD])
        docs = []
        for row, vec in zip(rows.drop_columns([VECTOR_FIELD]).to_pylist(), vectors, strict=True):
            doc = {
                key: iso(value) if isinstance(value, datetime) else value
                for key, value in row.items()
                if value is not None or key != "tags_user"
            }
            docs.append((doc, vec if row.get("status") == STATUS_OK else None))
        return docs

    def _upsert_op(self, doc: dict, vector: str | None) -> str:
        """The bulk lines (NDJSON) that merge ``doc`` with ``vector`` (JSON text) into the stored
        document, or index it when there is none."""
        # The vector goes last: its token is then the last one in the text.
        doc = {**doc, VECTOR_FIELD: None if vector is None else _VEC_TOKEN}
        text = ndjson(
            [
                {"update": {"_id": doc["id"], "retry_on_conflict": self.retry_on_conflict}},
                {"doc": doc, "doc_as_upsert": True},
            ]
        )
        if vector is None:
            return text
        head, _, tail = text.rpartition(_VEC_JSON)
        return head + vector + tail

    def upsert(self, dataset_id: str, table: pa.Table) -> int:
        """Write ``table``'s rows (see :meth:`VectorStore.upsert`). Documents OpenSearch rejects
        are collected in ``last_errors`` and raised as one :class:`BulkWriteError` once every
        other document has been written."""
        name = self.index_name(dataset_id)
        model, dim = self._require(dataset_id)
        rows = self._conform(dataset_id, model, dim, table)
        written = 0
        errors: list[dict] = []
        for chunk in chunks(rows, self.bulk_chunk):
            ops = [(d["id"], self._upsert_op(d, v)) for d, v in self._documents(chunk)]
            for doc_id, item in self._bulk_with_retries(name, ops, f"upsert into {name}"):
                if "error" in item:
                    errors.append(
                        {
                            "id": doc_id,
                            "status": item.get("status"),
                            "type": (item["error"] or {}).get("type")
                            if isinstance(item["error"], dict)
                            else None,
                            "reason": error_reason({"error": item["error"]}),
                        }
                    )
                else:
                    written += 1
        self.last_errors = errors
        if errors:
            shown = "; ".join(f"{e['id']}: {e['reason']}" for e in errors[:3])
            more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
            raise BulkWriteError(
                f"dataset {dataset_id!r}: OpenSearch rejected {len(errors)} of {rows.num_rows} "
                f"document(s) in index {name}; the other {written} were written. {shown}{more}. "
                "Fix those files or the index mapping and run the upsert again",
                errors=errors,
                written=written,
            )
        return written

    def delete(self, dataset_id: str, ids: Sequence[str]) -> int:
        name = self.index_name(dataset_id)
        ids = unique_ids(list(ids))
        if not ids or self._info(dataset_id) is None:
            return 0
        deleted = 0
        for chunk in chunks(ids, self.bulk_chunk):
            lines = [{"delete": {"_id": i}} for i in chunk]
            items = self._bulk(name, lines, f"deleting documents of {name}")
            failed = [it for it in items if "error" in it and it.get("status") != 404]
            if failed:
                raise StoreError(
                    f"deleting documents of {name}: {len(failed)} failed, e.g. "
                    f"{failed[0].get('_id')}: {error_reason({'error': failed[0]['error']})}; retry"
                )
            deleted += sum(1 for it in items if it.get("result") == "deleted")
        return deleted

    def _change_user_tags(
        self, dataset_id: str, ids: Sequence[str], tags: Sequence[str], script: str
    ) -> int:
        name = self.index_name(dataset_id)
        self._require(dataset_id)
        ids = unique_ids(list(ids))
        tags = list(dict.fromkeys(str(t) for t in tags))
        changed = 0
        for chunk in chunks(ids, self.bulk_chunk):
            ops = [
                (
                    i,
                    ndjson(
                        [
                            {"update": {"_id": i, "retry_on_conflict": self.retry_on_conflict}},
                            {
                                "script": {
                                    "source": script,
                                    "lang": "painless",
                                    "params": {"tags": tags},
                                }
                            },
                        ]
                    ),
                )
                for i in chunk
            ]
            for doc_id, item in self._bulk_with_retries(name, ops, f"tag update in {name}"):
                if "error" in item:
                    if item.get("status") == 404:
                        continue  # unknown id: skipped, as on every store
                    raise StoreError(
                        f"tag update in {name}: document {doc_id}: "
                        f"{error_reason({'error': item['error']})}; retry"
                    )
                if item.get("result") == "updated":
                    changed += 1
        return changed

    def add_user_tags(self, dataset_id: str, ids: Sequence[str], tags: Sequence[str]) -> int:
        return self._change_user_tags(dataset_id, ids, tags, ADD_USER_TAGS)

    def remove_user_tags(self, dataset_id: str, ids: Sequence[str], tags: Sequence[str]) -> int:
        return self._change_user_tags(dataset_id, ids, tags, REMOVE_USER_TAGS)
