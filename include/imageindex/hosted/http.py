"""The retry policy every hosted model call goes through.

One :class:`ProviderClient` per model instance (so per Airflow task process) applies:

* **throttling** (HTTP 429, or a DashScope error code ``Throttling.*`` such as
  ``Throttling.RateQuota`` / ``Throttling.AllocationQuota`` whatever the status): retry after
  ``Retry-After`` when the reply has one, else exponential backoff with full jitter;
* **5xx, timeouts, dropped connections**: retry with the same backoff;
* **401 / 403**: :class:`~imageindex.errors.AuthError` at once, naming the Airflow connection;
  every later call of the same client fails the same way without a request, and
  :meth:`ProviderClient.map` sends its first item alone, so a bad key costs one request however
  high the concurrency;
* **400 / 413 / 422**: returned to the caller, which records the input's own error (a refused
  image fails that file only);
* other 4xx (404: wrong URL or model): :class:`~imageindex.errors.ProviderError` at once.

After ``max_retries`` retries the call raises :class:`~imageindex.errors.ProviderError`: the task
fails and Airflow's own retries take over, rather than marking healthy files failed.

A :class:`threading.BoundedSemaphore` caps requests in flight per client (``concurrency``), also
when several threads of one task share it. :attr:`ProviderClient.stats` counts requests, retries,
throttles, failures and images for the run report.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

from imageindex.connections import redact
from imageindex.embedders.base import Embedder, ImageEmbeddings
from imageindex.errors import AuthError, ConfigError, ImageIndexError, ProviderError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: Replies that are about the input, not the service: returned to the caller.
REJECTED_STATUSES = frozenset({400, 413, 422})
#: DashScope's rate-limit codes; they come with 429 and, for some quotas, other statuses.
THROTTLE_CODES = frozenset(
    {"Throttling", "Throttling.RateQuota", "Throttling.AllocationQuota", "Throttling.BurstRate"}
)
STAT_KEYS = ("requests", "retries", "throttles", "failures", "images")
# Error text kept in messages: enough to act on, short enough for a report line.
_MAX_MESSAGE = 300


@dataclass(frozen=True)
class RetryPolicy:
    """``max_retries`` retries after the first attempt; delays in seconds."""

    max_retries: int = 5
    base_delay: float = 1.0
    max_delay: float = 60.0
    #: Per request (connect and read).
    timeout: float = 60.0
    #: A longer ``Retry-After`` is shortened to this, so one reply cannot park a task for hours.
    max_retry_after: float = 120.0

    def __post_init__(self):
        if (
            not isinstance(self.max_retries, int)
            or isinstance(self.max_retries, bool)
            or not 0 <= self.max_retries <= 50
        ):
            raise ConfigError(f"max_retries must be an integer in 0..50, got {self.max_retries!r}")
        for key in ("base_delay", "max_delay", "timeout", "max_retry_after"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"{key} must be a number >= 0 (seconds), got {value!r}")
        if self.timeout <= 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {self.timeout!r}")

    def backoff(self, retry: int) -> float:
        """Full jitter: uniform in ``[0, min(max_delay, base_delay * 2**retry)]``."""
        return random.uniform(0.0, min(self.max_delay, self.base_delay * (2**retry)))


class Reply:
    """An HTTP reply: status, headers and body, with the JSON parsed on demand."""

    __slots__ = ("status", "headers", "content", "_json", "_parsed")

    def __init__(self, status: int, headers: Mapping[str, str] | None, content: bytes | None):
        self.status = int(status)
        # Header names are case-insensitive; keep one spelling.
        self.headers = {str(k).lower(): str(v) for k, v in (headers or {}).items()}
        self.content = content or b""
        self._json: Any = None
        self._parsed = False

    @classmethod
    def from_response(cls, response) -> Reply:
        """From a ``requests.Response`` (or anything with status_code, headers, content)."""
        return cls(response.status_code, response.headers, response.content)

    def json(self) -> Any:
        """The parsed body; ``None`` when it is not JSON."""
        if not self._parsed:
            self._parsed = True
            try:
                self._json = json.loads(self.content.decode("utf-8")) if self.content else None
            except (ValueError, UnicodeDecodeError):
                self._json = None
        return self._json

    @property
    def code(self) -> str:
        """The service's error code (``"InvalidApiKey"``, ``"Throttling.RateQuota"``, ...)."""
        body = self.json()
        if isinstance(body, dict):
            value = body.get("code") or body.get("error_code")
            if isinstance(value, str):
                return value
        return ""

    @property
    def message(self) -> str:
        """The service's error message, redacted and shortened."""
        body = self.json()
        text: object = ""
        if isinstance(body, dict):
            text = body.get("message") or body.get("msg") or body.get("error") or ""
        elif not self.content.lstrip().startswith((b"{", b"[")):
            text = self.content[:_MAX_MESSAGE].decode("utf-8", "replace").strip()
        if isinstance(text, list):
            text = "; ".join(str(t) for t in text)
        return shorten(redact(text))

    def describe(self) -> str:
        parts = [f"HTTP {self.status}"]
        if self.code:
            parts.append(self.code)
        message = self.message
        return " ".join(parts) + (f": {message}" if message else "")

    @property
    def throttled(self) -> bool:
        code = self.code
        return self.status == 429 or code in THROTTLE_CODES or code.startswith("Throttling")

    def retry_after(self) -> float | None:
        raw = self.headers.get("retry-after")
        if not raw:
            return None
        try:
            return max(0.0, float(raw))
        except ValueError:
            pass
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())


def shorten(text: str, limit: int = _MAX_MESSAGE) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _transient(exc: BaseException) -> bool:
    """Timeouts and dropped connections: worth another attempt."""
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    try:
        import requests
    except ImportError:  # pragma: no cover - requests comes with the dashscope SDK
        return False
    return isinstance(
        exc,
        requests.Timeout | requests.ConnectionError | requests.exceptions.ChunkedEncodingError,
    )


class ProviderClient:
    """Retrying, concurrency-limited calls to one hosted service through one connection."""

    def __init__(
        self,
        provider: str,
        conn_id: str,
        *,
        policy: RetryPolicy | None = None,
        concurrency: int = 5,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if (
            not isinstance(concurrency, int)
            or isinstance(concurrency, bool)
            or not 1 <= concurrency <= 256
        ):
            raise ConfigError(
                f"{provider}: concurrency must be an integer in 1..256, got {concurrency!r}"
            )
        self.provider = provider
        self.conn_id = conn_id
        self.policy = policy or RetryPolicy()
        self.concurrency = concurrency
        self._sleep = sleep
        self._slots = threading.BoundedSemaphore(concurrency)
        self._stats_lock = threading.Lock()
        self._stats = dict.fromkeys(STAT_KEYS, 0)
        self._auth_error: AuthError | None = None
        self._probe_lock = threading.Lock()
        self._probed = False

    # -- counters ---------------------------------------------------------------------------

    @property
    def stats(self) -> dict[str, int]:
        """A snapshot: requests, retries, throttles, failures, images (plus any model counters)."""
        with self._stats_lock:
            return dict(self._stats)

    def count(self, **deltas: int) -> None:
        with self._stats_lock:
            for key, delta in deltas.items():
                self._stats[key] = self._stats.get(key, 0) + delta

    def reset_stats(self) -> None:
        with self._stats_lock:
            self._stats = dict.fromkeys(STAT_KEYS, 0)

    # -- one call ---------------------------------------------------------------------------

    def send(self, attempt: Callable[[], Reply], *, what: str) -> Reply:
        """Run ``attempt`` (one HTTP request) until the policy accepts its reply.

        Returns a 2xx reply or a rejected one (400/413/422, about the input); raises
        :class:`AuthError` for 401/403 and :class:`ProviderError` for anything else that
        retries did not fix. ``what`` names the call in messages ("embedding 8 images").
        """
        policy = self.policy
        retry = 0
        while True:
            if self._auth_error is not None:
                raise AuthError(str(self._auth_error))
            wait: float | None = None
            with self._slots:
                self.count(requests=1)
                try:
                    reply = attempt()
                except ImageIndexError:
                    raise
                except Exception as exc:
                    if not _transient(exc):
                        self.count(failures=1)
                        raise ProviderError(
                            f"{self.provider} {what} failed: {type(exc).__name__}: "
                            f"{shorten(redact(exc))}"
                        ) from None
                    reply = None
                    problem = f"{type(exc).__name__} (timeout or network)"
            if reply is not None:
                if self._accepted(reply, what):
                    return reply
                problem = reply.describe()
                if reply.throttled:
                    self.count(throttles=1)
                    wait = reply.retry_after()
            if retry >= policy.max_retries:
                self.count(failures=1)
                raise ProviderError(
                    f"{self.provider} {what} still failing after {retry + 1} attempt(s): "
                    f"{problem}. The service is down or throttling; retry the task later, or "
                    "lower 'concurrency' / raise 'max_retries' in the model spec"
                )
            if wait is None:
                delay = policy.backoff(retry)
            else:
                # Retry-After is the earliest useful moment; jitter spreads the threads out.
                delay = min(wait, policy.max_retry_after) + random.uniform(
                    0.0, min(policy.base_delay, policy.max_delay)
                )
            retry += 1
            self.count(retries=1)
            log.info(
                "%s %s: %s; retry %d/%d in %.2fs",
                self.provider,
                what,
                problem,
                retry,
                policy.max_retries,
                delay,
            )
            self._sleep(delay)

    def _accepted(self, reply: Reply, what: str) -> bool:
        """True for a reply to hand back, False for one to retry; raises for the rest."""
        if reply.throttled or reply.status >= 500:
            return False
        if 200 <= reply.status < 300 or reply.status in REJECTED_STATUSES:
            return True
        self.count(failures=1)
        if reply.status in (401, 403):
            raise self._refused(reply, what)
        raise ProviderError(
            f"{self.provider} {what} failed with {reply.describe()}: check the URL in Airflow "
            f"connection {self.conn_id!r} and the model name in the spec"
        )

    def _refused(self, reply: Reply, what: str) -> AuthError:
        error = AuthError(
            f"{self.provider} refused {what} ({reply.describe()}): check the API key in Airflow "
            f"connection {self.conn_id!r}"
            + (" and that it may use this model" if reply.status == 403 else "")
        )
        self._auth_error = error
        return error

    # -- many calls -------------------------------------------------------------------------

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """``[fn(item) for item in items]`` with up to ``concurrency`` calls at once, in order.

        The client's very first item runs alone, so a bad key or URL is found with one request
        instead of ``concurrency``. The first exception cancels the items not yet started.
        """
        items = list(items)
        out: list[Any] = [None] * len(items)
        start = 0
        if not self._probed and items:
            with self._probe_lock:
                if not self._probed:
                    out[0] = fn(items[0])
                    self._probed = True
                    start = 1
        rest = range(start, len(items))
        if len(rest) <= 1 or self.concurrency == 1:
            for i in rest:
                out[i] = fn(items[i])
            return out
        pool = ThreadPoolExecutor(
            max_workers=min(self.concurrency, len(rest)), thread_name_prefix=self.provider
        )
        try:
            futures = {i: pool.submit(fn, items[i]) for i in rest}
            for i, future in futures.items():
                out[i] = future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return out


class RecordingSession:
    """Hands an SDK's requests to a ``requests.Session`` and keeps the last raw response.

    SDKs parse replies their own way and raise on bodies they cannot read; the raw response lets
    the policy judge every reply alike (status, ``Retry-After``, error code).
    """

    def __init__(self, session):
        self._session = session
        self.response = None

    def post(self, *args, **kwargs):
        self.response = self._session.post(*args, **kwargs)
        return self.response

    def get(self, *args, **kwargs):
        self.response = self._session.get(*args, **kwargs)
        return self.response


def sdk_reply(call: Callable[[RecordingSession], object], session) -> Reply:
    """Run an SDK ``call(session)`` and return the raw reply it got (see :class:`RecordingSession`).

    Exceptions raised before any response arrived (timeouts, refused connections) propagate, for
    the policy to retry; exceptions raised while the SDK read a response are ignored, because
    the raw reply is judged instead.
    """
    recorder = RecordingSession(session)
    try:
        call(recorder)
    except Exception:
        if recorder.response is None:
            raise
    if recorder.response is None:
        raise ProviderError("the SDK returned without sending a request")
    return Reply.from_response(recorder.response)


def encode_jpeg(image, quality: int = 90) -> bytes:
    """A uint8 RGB array or PIL image as JPEG bytes (for hosted models given pixels)."""
    from io import BytesIO

    import numpy as np
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.ascontiguousarray(image))
    if image.mode != "RGB":
        image = image.convert("RGB")
    buf = BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def data_uri(data: bytes) -> str:
    """``data:image/<format>;base64,...`` for image bytes (format sniffed, JPEG by default)."""
    import base64

    fmt = "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        fmt = "png"
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        fmt = "webp"
    elif data[:2] == b"BM":
        fmt = "bmp"
    return f"data:image/{fmt};base64,{base64.b64encode(data).decode('ascii')}"


def positive_int(provider: str, key: str, value: object, *, maximum: int = 10_000) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise ConfigError(f"{provider}: {key} must be an integer in 1..{maximum}, got {value!r}")
    return value


def policy_from_spec(provider: str, max_retries: object, base_delay: object, timeout: object):
    try:
        return RetryPolicy(max_retries=max_retries, base_delay=base_delay, timeout=timeout)
    except ConfigError as exc:
        raise ConfigError(f"{provider}: {exc}") from None


# ------------------------------------------------------------------------------------------------
# embeddings


#: One input's outcome: its unit vector (a numpy array), or ``None`` and why.
Item = tuple[Any, str | None]


class HostedEmbedder(Embedder):
    """An embedder behind an HTTP API: batching, retries and per-image errors, shared by the hosted embedders.

    Subclasses send one request (:meth:`_send`) and read one reply (:meth:`_items`). Here:
    inputs go in batches of ``batch_size``, ``concurrency`` batches at a time; a batch refused
    with 400/413/422 is sent again one input per request, so only the refused image fails; a
    malformed reply is asked for once more, and so are inputs that came back without an
    embedding; what still fails becomes that image's error. Every vector's length is checked
    against ``dim``; a different length raises (vectors of two sizes cannot share an index).
    """

    wants_jpeg = True
    provider: str = "model service"

    def __init__(
        self,
        *,
        model: str,
        conn_id: str,
        dim: int,
        batch_size: int,
        concurrency: int,
        policy: RetryPolicy,
    ):
        self.model = model
        self.conn_id = conn_id
        self.dim = dim
        self.batch_size = batch_size
        self.client = ProviderClient(self.provider, conn_id, policy=policy, concurrency=concurrency)
        self._session = None
        self._session_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, conn_id={self.conn_id!r})"

    @property
    def stats(self) -> dict[str, int]:
        """Counters for the run report (requests, retries, throttles, failures, images, ...)."""
        return self.client.stats

    def http_session(self):
        if self._session is None:
            with self._session_lock:
                if self._session is None:
                    import requests

                    self._session = requests.Session()
        return self._session

    # -- provider specifics -------------------------------------------------------------------

    def _connection(self) -> tuple[str, str]:
        """``(URL, key)`` from the Airflow connection, resolved at the first call."""
        raise NotImplementedError

    def _send(self, contents: list[dict], what: str) -> Reply:
        """One request for ``contents`` (``[{"image": data_uri}]`` or ``[{"text": ...}]``)."""
        raise NotImplementedError

    def _items(self, reply: Reply, n: int) -> list[tuple[object, str | None]] | str:
        """Per input, ``(raw vector or None, error or None)``; a string when the reply is malformed."""
        raise NotImplementedError

    # -- the interface ------------------------------------------------------------------------

    def embed_images(self, images: Sequence) -> ImageEmbeddings:
        return self.embed_jpegs([encode_jpeg(image) for image in images])

    def embed_jpegs(self, jpegs: Sequence[bytes]) -> ImageEmbeddings:
        import numpy as np

        n = len(jpegs)
        self.client.count(images=n)
        results = self._run([{"image": data_uri(bytes(b))} for b in jpegs], "image")
        vectors = np.zeros((n, self.dim), dtype=np.float32)
        errors: list[str | None] = [None] * n
        for i, (vector, error) in enumerate(results):
            if vector is None:
                errors[i] = error or f"{self.provider} returned no embedding"
            else:
                vectors[i] = vector
        failed = sum(1 for e in errors if e)
        if failed:
            self.client.count(failures=failed)
            log.warning("%s: %d of %d image(s) not embedded", self.name, failed, n)
        return ImageEmbeddings(vectors, errors=errors if failed else None)

    def embed_texts(self, texts: Sequence[str]):
        import numpy as np

        results = self._run([{"text": str(t)} for t in texts], "text")
        out = np.zeros((len(results), self.dim), dtype=np.float32)
        for i, (vector, error) in enumerate(results):
            if vector is None:
                raise ProviderError(
                    f"{self.provider} could not embed text {i + 1} of {len(results)}: {error}"
                )
            out[i] = vector
        return out

    # -- batching -----------------------------------------------------------------------------

    def _run(self, contents: list[dict], kind: str) -> list[Item]:
        if not contents:
            return []
        # A missing connection or key is a setup error: raise it before any request is counted.
        self._connection()
        size = self.batch_size
        batches = [contents[s : s + size] for s in range(0, len(contents), size)]
        done = self.client.map(lambda batch: self._embed_batch(batch, kind, True), batches)
        return [item for batch in done for item in batch]

    def _embed_batch(self, contents: list[dict], kind: str, second_chance: bool) -> list[Item]:
        n = len(contents)
        what = f"embedding {n} {kind}{'s' if n != 1 else ''} with {self.model}"
        reply = self.client.send(lambda: self._send(contents, what), what=what)
        if reply.status in REJECTED_STATUSES:
            if n > 1:
                # The API refuses a whole request for one bad input; one by one finds which.
                return [
                    item for c in contents for item in self._embed_batch([c], kind, second_chance)
                ]
            return [(None, f"{self.provider} refused the {kind}: {reply.describe()}")]
        items = self._items(reply, n)
        if isinstance(items, str):
            self.client.count(malformed=1)
            if second_chance:
                log.info("%s: malformed reply (%s); asking once more", self.name, items)
                return self._embed_batch(contents, kind, False)
            return [(None, f"{self.provider} reply malformed twice: {items}")] * n
        out = [self._check(raw, error) for raw, error in items]
        missing = [i for i, (vector, _) in enumerate(out) if vector is None]
        if missing and second_chance:
            again = self._embed_batch([contents[i] for i in missing], kind, False)
            for i, item in zip(missing, again, strict=True):
                out[i] = item
        return out

    def _check(self, raw: object, error: str | None) -> Item:
        import numpy as np

        if raw is None:
            return None, error or f"{self.provider} returned no embedding"
        try:
            vector = np.asarray(raw, dtype=np.float32)
        except (TypeError, ValueError):
            return None, f"{self.provider} returned an embedding that is not a list of numbers"
        if vector.ndim != 1:
            return None, f"{self.provider} returned an embedding that is not a flat list"
        if vector.shape[0] != self.dim:
            raise ProviderError(
                f"{self.provider} returned a {vector.shape[0]}-dimensional vector from "
                f"{self.model!r}, expected {self.dim}: set the embedder's 'dimension' to what the "
                f"model gives, or check that Airflow connection {self.conn_id!r} points at the "
                "intended model (vectors of different sizes cannot share an index)"
            )
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm == 0.0:
            return None, f"{self.provider} returned a zero or non-finite embedding"
        return vector / norm, None
