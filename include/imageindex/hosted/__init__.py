"""Plumbing shared by hosted model services: credentials from Airflow connections
(:mod:`~imageindex.providers.connections`) and the retry / concurrency policy of their HTTP calls
(:mod:`~imageindex.providers.http`).

Importing this package needs no SDK; ``dashscope`` and ``requests`` are imported at the first
request.
"""

from __future__ import annotations

from imageindex.providers.connections import (
    Credentials,
    SecretsFilter,
    get_credentials,
    install_log_filter,
    redact,
    register_secret,
)
from imageindex.providers.http import ProviderClient, Reply, RetryPolicy

__all__ = [
    "Credentials",
    "ProviderClient",
    "Reply",
    "RetryPolicy",
    "SecretsFilter",
    "get_credentials",
    "install_log_filter",
    "redact",
    "register_secret",
]
