"""``ImageIndexOpenSearchHook``: the OpenSearch provider's hook with safer defaults, and a
shortcut to an :class:`~imageindex.stores.opensearch_store.OpenSearchStore` on its connection.

Differences from the provider's ``OpenSearchHook``: the connection id defaults to
``opensearch_default``; the connection is read on first use of ``client`` (the provider's hook
reads it in ``__init__``, i.e. at DAG parse time when built at the top of a DAG file); and
certificates are verified unless the connection's extras say ``"verify_certs": false`` (the
provider's default is not to verify). The client itself is built by the library
(:func:`~imageindex.stores.opensearch_store.client_from_connection`), so stores opened with
``opensearch+conn://<conn_id>`` outside this hook get exactly the same client.
"""

from __future__ import annotations

import json
from functools import cached_property
from typing import Any

from airflow.providers.opensearch.hooks.opensearch import OpenSearchHook


class ImageIndexOpenSearchHook(OpenSearchHook):
    """OpenSearch connection for imageindex stores.

    Connection fields: host (a name, or ``https://name``), port, login, password. Extras:
    ``use_ssl``, ``verify_certs`` (default true), ``ca_certs``, ``timeout`` (seconds),
    ``url_prefix``, ``http_compress`` (default true).
    """

    conn_name_attr = "opensearch_conn_id"
    default_conn_name = "opensearch_default"
    conn_type = "opensearch"
    hook_name = "OpenSearch (imageindex)"

    def __init__(
        self,
        opensearch_conn_id: str = default_conn_name,
        *,
        log_query: bool = False,
        **kwargs: Any,
    ):
        # Skips OpenSearchHook.__init__ on purpose: it reads the connection immediately.
        super(OpenSearchHook, self).__init__(**kwargs)
        self.opensearch_conn_id = opensearch_conn_id
        self.conn_id = opensearch_conn_id
        self.log_query = log_query

    @cached_property
    def client(self):
        """An ``opensearchpy.OpenSearch`` for the connection, built on first use."""
        from imageindex.stores.opensearch_store import client_from_connection

        return client_from_connection(self.conn)

    def get_conn(self):
        return self.client

    def get_store(self, **options: Any):
        """An OpenSearchStore on this connection; ``options`` as for OpenSearchStore."""
        from imageindex.stores.opensearch_store import OpenSearchStore

        return OpenSearchStore(
            client_factory=lambda: self.client,
            where=f"Airflow connection {self.opensearch_conn_id!r}",
            **options,
        )

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema"],
            "relabeling": {"extra": "OpenSearch settings (JSON)"},
            "placeholders": {
                "host": "search.example.com",
                "port": "9200",
                "extra": json.dumps(
                    {
                        "use_ssl": True,
                        "verify_certs": True,
                        "ca_certs": "/path/ca.pem",
                        "timeout": 60,
                    },
                    indent=2,
                ),  # fmt: skip
            },
        }
