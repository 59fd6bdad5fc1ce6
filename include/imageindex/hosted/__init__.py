"""Hosted model services (DashScope, GME on PAI-EAS, Qwen-VL): the retry / concurrency policy of
their HTTP calls (:mod:`~imageindex.hosted.http`).

Their credentials come from Airflow connections through :mod:`imageindex.connections`, the module
S3 and OpenSearch use too. Importing this package needs no SDK; ``dashscope`` and ``requests``
are imported at the first request.
"""

from __future__ import annotations

from imageindex.hosted.http import HostedEmbedder, ProviderClient, Reply, RetryPolicy

__all__ = ["HostedEmbedder", "ProviderClient", "Reply", "RetryPolicy"]
