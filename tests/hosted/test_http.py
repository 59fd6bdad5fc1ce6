"""The retry / concurrency policy of hosted model calls, without a server."""

from __future__ import annotations

import json
import threading
import time
from email.utils import formatdate

import pytest
import requests

from imageindex.errors import AuthError, ConfigError, ProviderError
from imageindex.hosted import ProviderClient, Reply, RetryPolicy


def reply(status: int, body: object = None, headers: dict | None = None) -> Reply:
    content = json.dumps(body).encode() if body is not None else b""
    return Reply(status, headers or {}, content)


def client(max_retries: int = 4, concurrency: int = 5, sleeps: list | None = None):
    policy = RetryPolicy(max_retries=max_retries, base_delay=0.001, max_delay=0.01, timeout=5)
    record = sleeps.append if sleeps is not None else (lambda s: None)
    return ProviderClient("Svc", "svc_conn", policy=policy, concurrency=concurrency, sleep=record)


def script(*outcomes):
    """An attempt() that plays ``outcomes`` (replies or exceptions) and counts its calls."""
    queue = list(outcomes)
    calls = []

    def attempt():
        calls.append(1)
        item = queue.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    attempt.calls = calls
    return attempt


# ------------------------------------------------------------------------------------------------
# classification


def test_throttled_then_ok_honours_retry_after():
    sleeps: list[float] = []
    c = client(sleeps=sleeps)
    attempt = script(
        reply(429, {"code": "Throttling.RateQuota", "message": "slow down"}, {"Retry-After": "2"}),
        reply(200, {"output": {}}),
    )
    assert c.send(attempt, what="x").status == 200
    assert len(attempt.calls) == 2
    assert sleeps and 2.0 <= sleeps[0] <= 2.01  # Retry-After plus at most base_delay of jitter
    assert c.stats == {"requests": 2, "retries": 1, "throttles": 1, "failures": 0, "images": 0}


def test_retry_after_as_http_date_and_capped():
    later = formatdate(time.time() + 30, usegmt=True)
    assert 25 <= reply(429, headers={"Retry-After": later}).retry_after() <= 31
    assert reply(429, headers={"retry-after": "junk"}).retry_after() is None
    sleeps: list[float] = []
    c = ProviderClient(
        "Svc",
        "svc_conn",
        policy=RetryPolicy(max_retries=1, base_delay=0.0, max_retry_after=0.5),
        sleep=sleeps.append,
    )
    c.send(script(reply(429, headers={"Retry-After": "3600"}), reply(200, {})), what="x")
    assert sleeps == [0.5]


@pytest.mark.parametrize("code", ["Throttling.AllocationQuota", "Throttling.RateQuota"])
def test_dashscope_throttling_codes_are_retried_whatever_the_status(code):
    c = client()
    attempt = script(reply(403, {"code": code, "message": "quota"}), reply(200, {}))
    assert c.send(attempt, what="x").status == 200
    assert c.stats["throttles"] == 1 and c.stats["retries"] == 1


def test_5xx_and_timeouts_are_retried_with_jittered_backoff():
    sleeps: list[float] = []
    c = client(sleeps=sleeps)
    attempt = script(
        reply(500, {"code": "InternalError"}),
        requests.ReadTimeout("read timed out"),
        requests.ConnectionError("reset"),
        reply(503, None),
        reply(200, {}),
    )
    assert c.send(attempt, what="x").status == 200
    assert len(sleeps) == 4
    # Full jitter: each delay within [0, min(max_delay, base * 2**n)].
    assert all(0 <= s <= min(0.01, 0.001 * 2**n) for n, s in enumerate(sleeps))
    assert c.stats["retries"] == 4 and c.stats["throttles"] == 0


def test_backoff_is_full_jitter():
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0)
    samples = [policy.backoff(5) for _ in range(500)]
    assert 0 <= min(samples) < 1.0 and 7.0 < max(samples) <= 8.0


def test_gives_up_after_max_retries():
    c = client(max_retries=2)
    attempt = script(*[reply(503, {"message": "busy"})] * 3)
    with pytest.raises(ProviderError, match=r"still failing after 3 attempt\(s\): HTTP 503"):
        c.send(attempt, what="embedding 2 images")
    assert len(attempt.calls) == 3
    assert c.stats["failures"] == 1


def test_401_raises_at_once_and_stops_later_calls():
    c = client()
    attempt = script(reply(401, {"code": "InvalidApiKey", "message": "Invalid API-key provided."}))
    with pytest.raises(AuthError, match="check the API key in Airflow connection 'svc_conn'"):
        c.send(attempt, what="x")
    assert len(attempt.calls) == 1 and c.stats["retries"] == 0
    later = script(reply(200, {}))
    with pytest.raises(AuthError):
        c.send(later, what="x")
    assert later.calls == []  # no retry storm: nothing more is sent


def test_403_without_throttling_code_is_auth():
    c = client()
    with pytest.raises(AuthError, match="may use this model"):
        c.send(script(reply(403, {"code": "AccessDenied", "message": "denied"})), what="x")


def test_rejected_input_is_returned_other_4xx_raise():
    c = client()
    assert c.send(script(reply(400, {"code": "InvalidParameter"})), what="x").status == 400
    assert c.send(script(reply(413, None)), what="x").status == 413
    with pytest.raises(ProviderError, match="HTTP 404 .*check the URL in Airflow connection"):
        c.send(script(reply(404, {"code": "ModelNotFound", "message": "no"})), what="x")


def test_unexpected_exception_is_a_provider_error_without_retry():
    c = client()
    attempt = script(ValueError("bad input"))
    with pytest.raises(ProviderError, match="ValueError: bad input"):
        c.send(attempt, what="x")
    assert len(attempt.calls) == 1


# ------------------------------------------------------------------------------------------------
# concurrency


def test_concurrency_is_capped_by_the_semaphore():
    c = client(concurrency=3)
    lock = threading.Lock()
    state = {"now": 0, "max": 0}

    def attempt():
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.02)
        with lock:
            state["now"] -= 1
        return reply(200, {})

    # More threads than slots: the semaphore, not the pool, is what caps requests in flight.
    threads = [threading.Thread(target=lambda: c.send(attempt, what="x")) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert state["max"] == 3
    assert c.stats["requests"] == 10


def test_map_keeps_order_runs_in_parallel_and_probes_first():
    c = client(concurrency=4)
    active = []
    lock = threading.Lock()
    peak = [0]

    def fn(i):
        with lock:
            active.append(i)
            peak[0] = max(peak[0], len(active))
        time.sleep(0.01)
        with lock:
            active.remove(i)
        return i * i

    assert c.map(fn, range(12)) == [i * i for i in range(12)]
    assert 1 < peak[0] <= 4


def test_map_probe_makes_a_bad_key_cost_one_request():
    c = client(concurrency=5)
    calls = []

    def fn(i):
        return c.send(
            lambda: calls.append(i) or reply(401, {"code": "InvalidApiKey"}), what=f"item {i}"
        )

    with pytest.raises(AuthError):
        c.map(fn, range(20))
    assert calls == [0]


# ------------------------------------------------------------------------------------------------
# policy


def test_policy_validation():
    with pytest.raises(ConfigError, match="max_retries"):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ConfigError, match="timeout"):
        RetryPolicy(timeout=0)
    with pytest.raises(ConfigError, match="concurrency"):
        ProviderClient("Svc", "c", concurrency=0)
