"""trainyard's kombu transport (trainyard/broker.py) against a real Redis: one client for the
synchronous commands, and messages consumed without acknowledgement acked without a round trip."""

from __future__ import annotations

from typing import Any

import redis
from kombu import Connection
from kombu.entity import Exchange, Queue

from trainyard import broker, transport

DB = 14  # this module's own Redis database


def _url(redis_server: str) -> str:
    return f"{redis_server.rsplit('/', 1)[0]}/{DB}"


def test_celery_apps_use_it_and_flower_keeps_the_stock_transport(redis_server: str) -> None:
    ours = transport.make_celery(_url(redis_server))
    stock = transport.make_celery(_url(redis_server), lean_transport=False)
    with ours.connection_for_write() as conn:
        assert isinstance(conn.transport, broker.Transport)
        channel = conn.default_channel
        assert channel._create_client() is channel._create_client()
    with stock.connection_for_write() as conn:
        assert not isinstance(conn.transport, broker.Transport)
        assert conn.as_uri().startswith("redis://")  # what Flower reads the broker's kind from


def test_a_no_ack_queue_delivers_every_message_once_and_keeps_no_unacked_copy(redis_server: str) -> None:
    url = _url(redis_server)
    client = redis.Redis.from_url(url)
    client.flushdb()
    name = "node.broker-test"
    queue = Queue(name, Exchange(name), routing_key=name, no_ack=True)
    app = transport.make_celery(url)
    with app.producer_or_acquire() as producer:
        for i in range(20):
            app.send_task(transport.RUN_TASK, kwargs={"i": i}, queue=name, producer=producer)
    got: list[int] = []
    with Connection(url, transport=broker.TRANSPORT) as conn:

        def on_message(body: Any, message: Any) -> None:
            got.append(int(body[1]["i"]))
            message.ack()  # what Celery does on receipt: here a no-op, not a Redis round trip

        with conn.Consumer([queue], callbacks=[on_message], accept=["json"]):
            while len(got) < 20:
                conn.drain_events(timeout=10)
        assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
    assert sorted(got) == list(range(20))
    assert client.llen(name) == 0
    client.flushdb()
    client.close()
