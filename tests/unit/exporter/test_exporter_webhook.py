"""The webhook's queue and delivery thread against real loopback servers: delivered in order,
retried on 5xx, dropped on 4xx, the oldest dropped when the queue is full, and submit never
waits for a webhook that hangs."""

from __future__ import annotations

import time

import pytest
from exporter_servers import DeadWebhook, WebhookReceiver, wait_until

from appliance.exporter.config import WebhookConfig
from appliance.exporter.webhook import DeliveryError, WebhookSender, post_json, redacted


@pytest.fixture
def receiver():
    r = WebhookReceiver()
    yield r
    r.close()


def sender(url: str, **kw) -> WebhookSender:
    cfg = WebhookConfig(url=url, timeout_s=kw.pop("timeout_s", 2.0),
                        queue_size=kw.pop("queue_size", 100))
    s = WebhookSender(cfg, backoff_s=0.01, backoff_max_s=0.05, **kw)
    s.start()
    return s


def test_events_are_posted_in_order(receiver):
    s = sender(receiver.url)
    try:
        for i in range(5):
            s.submit({"alert": "LinkDown", "state": "raised", "n": i})
        # The receiver holds an event before its 200 reaches the delivery thread: wait for
        # the sender's count, not the receiver's.
        wait_until(lambda: s.status()["delivered"] == 5, 10, "5 deliveries")
        st = s.status()
    finally:
        s.stop()
    assert [b["n"] for b in receiver.received()] == [0, 1, 2, 3, 4]
    assert (st["delivered"], st["queued"], st["dropped"], st["failed_attempts"]) == (5, 0, 0, 0)
    assert st["last_delivered_at"] is not None and st["last_error"] is None


def test_a_5xx_is_retried_and_a_4xx_dropped():
    r = WebhookReceiver(answers=[503, 500])
    s = sender(r.url)
    try:
        s.submit({"n": 1})             # 503, 500, then delivered
        wait_until(lambda: r.received(), 10, "the retried delivery")
        r.answers = [404]
        s.submit({"n": 2})             # 404: never delivered
        s.submit({"n": 3})
        wait_until(lambda: s.status()["delivered"] == 2, 10, "the event after the refused one")
        st = s.status()
    finally:
        s.stop()
        r.close()
    assert [b["n"] for b in r.received()] == [1, 3]
    assert (st["delivered"], st["failed_attempts"], st["dropped"]) == (2, 3, 1)


def test_a_full_queue_drops_the_oldest_and_submit_never_waits_for_a_hung_webhook():
    dead = DeadWebhook()
    s = sender(dead.url, timeout_s=30.0, queue_size=3)
    try:
        started = time.monotonic()
        for i in range(10):
            s.submit({"n": i})
        took = time.monotonic() - started
        wait_until(lambda: dead.accepted, 10, "the webhook connection")
        st = s.status()
        queued = list(s._queue)
    finally:
        dead.close()
        s.stop(timeout=5)
    print(f"10 submits to a hung webhook took {took * 1000:.2f} ms")
    assert took < 0.5
    assert st["queued"] == 3 and st["dropped"] == 7 and st["delivered"] == 0
    assert [e["n"] for e in queued] == [7, 8, 9]


def test_a_hung_webhook_times_out_into_a_retry():
    dead = DeadWebhook()
    s = sender(dead.url, timeout_s=0.3)
    try:
        s.submit({"n": 1})
        wait_until(lambda: s.status()["failed_attempts"] >= 2, 10, "two timed-out attempts")
        st = s.status()
    finally:
        dead.close()
        s.stop()
    assert st["queued"] == 1 and st["delivered"] == 0
    assert "timed out" in st["last_error"]


def test_post_json_errors_say_what_happened():
    with pytest.raises(DeliveryError, match="cannot reach the webhook") as err:
        post_json("http://127.0.0.1:1/hook", {}, 1.0)       # nothing listens on port 1
    assert not err.value.permanent


def test_the_secrets_a_webhook_url_carries_are_not_shown():
    assert redacted("https://ops:s3cret@ops.example:8443/hook?x=1") == (
        "https://ops:***@ops.example:8443/hook?x=***")
    assert redacted("https://ops.example/hook") == "https://ops.example/hook"
    assert redacted("http://10.0.2.2:8080/") == "http://10.0.2.2:8080/"
    # A chat service's token in the path, an incident service's in the query.
    assert redacted("https://hooks.example/services/T01/B02/xoxsecret") == (
        "https://hooks.example/services/***")
    assert redacted("https://events.example/v2/enqueue?routing_key=abc&severity=x#frag") == (
        "https://events.example/v2/***?routing_key=***&severity=***")
