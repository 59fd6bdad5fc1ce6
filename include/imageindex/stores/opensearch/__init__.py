"""The OpenSearch store: an implementation of :class:`~imageindex.stores.base.VectorStore`.

One index per dataset, ``<index_prefix>-images-<dataset id, lowercased>``, created with the
mapping :func:`index_body` returns; ``_meta`` records the embedder's model and dim (and the
exact dataset id), so a mismatching embedder is refused before anything is written.

Design decisions:

- **Engine**: HNSW on the ``lucene`` engine with ``cosinesimil``. It runs the filter inside the
  k-NN search (efficient filtering, OpenSearch 2.4+) and switches to exact search by itself when
  the filter leaves few documents, so "top k of the filtered set" holds for selective filters.
  Faiss filters efficiently too (2.9+) but changed its cosine score formula in 2.19, and lucene's
  has never changed.
- **Scores**: lucene scores cosinesimil as ``(1 + cos) / 2``; hits carry ``2 * score - 1``, the
  cosine in [-1, 1], so scores and thresholds mean the same as on LanceDB.
- **Failed documents** are stored without a vector: cosinesimil rejects zero vectors, and vector
  search must never return them anyway (every k-NN query also filters on ``status = ok``).
- **User tags**: every row is an ``update`` with ``doc_as_upsert``: the row's columns, nulls
  included, are merged into the stored document, and a null ``tags_user`` is left out so the
  stored one stays. The merge runs on the shard under the document's version check (no
  read-then-write window in which a user's tag could be lost), an unchanged document is a cheap
  ``noop``, and no script runs: 30 % less node CPU than the Painless upsert it replaced
  (0.74 against 1.06 s per 1,000 new 384-d documents on OpenSearch 2.19).
- **Rejected documents**: :meth:`OpenSearchStore.upsert` writes every chunk, sends again the
  items OpenSearch was too busy for (429) or whose update kept losing a race (409, after the
  node's own ``retry_on_conflict``), counted in ``stats``, then raises :class:`BulkWriteError`
  (a StoreError) naming the rejected ids and reasons; the rest have landed. ``last_errors``
  keeps the list.
- **Refresh**: writes wait for the next refresh by default (``refresh="wait_for"``), so reads
  see them; bulk loaders can pass ``refresh=False`` and rely on :meth:`~OpenSearchStore.optimize`
  (which the indexing DAG's finalize step runs) to refresh once at the end.
- **Dates** are mapped as ``date`` (millisecond precision in queries and sorting); ``_source``
  keeps the microseconds, so documents and hits read back exactly what was written.
- The managed-service schema's ``file_meta_id`` and ``index_set_id`` are field aliases of ``id``
  and ``dataset_id``. ``file_vector`` is not aliased: k-NN queries against an alias silently
  return nothing on current releases (opensearch-project/k-NN#3484).

The client is an ``opensearchpy.OpenSearch`` given to the constructor, built from a URL, or
built on first use from an Airflow connection (:func:`from_uri` with ``opensearch+conn://``).
Nothing here imports Airflow at module level, and nothing touches the network before the first
store call.

Modules:

- :mod:`.store`: :class:`OpenSearchStore` (indexes, reads, the native search calls).
- :mod:`.bulk`: its writes (upserts, deletes, user tags) as bulk requests.
- :mod:`.mapping`: the index mapping and body, whether an index gives cosine scores, dates.
- :mod:`.client`: clients from a URL, an Airflow connection or a connection id.
- :mod:`.uri`: the store a registry ``store:`` entry names.
- :mod:`.compile`: the query-language AST as an OpenSearch DSL clause.
"""

from __future__ import annotations

from imageindex.stores.opensearch.bulk import BulkWriteError
from imageindex.stores.opensearch.client import (
    build_client,
    client_for_conn_id,
    client_from_connection,
)
from imageindex.stores.opensearch.compile import (
    KEYWORD_SUBFIELDS,
    case_insensitive,
    compile_opensearch,
    wildcard_escape,
)
from imageindex.stores.opensearch.mapping import (
    index_body,
    index_properties,
    to_cosine,
    to_os_score,
)
from imageindex.stores.opensearch.store import OpenSearchStore
from imageindex.stores.opensearch.uri import SPEC_OPTIONS, from_uri, is_opensearch_uri

__all__ = [
    "KEYWORD_SUBFIELDS",
    "SPEC_OPTIONS",
    "BulkWriteError",
    "OpenSearchStore",
    "build_client",
    "case_insensitive",
    "client_for_conn_id",
    "client_from_connection",
    "compile_opensearch",
    "from_uri",
    "index_body",
    "index_properties",
    "is_opensearch_uri",
    "to_cosine",
    "to_os_score",
    "wildcard_escape",
]
