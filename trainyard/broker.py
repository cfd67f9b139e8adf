"""kombu's Redis transport, with two costs of its synchronous side taken out.

kombu builds a new `redis.Redis` client (and its table of some 170 response callbacks) for every
synchronous command it sends: each acknowledgement, each published message, each batch of Celery
events. Here a channel keeps one client for those (redis-py clients are thread-safe; each command
takes a connection from the channel's pool). And a message consumed without acknowledgement (our
node queues, see workers/service.py) is not "acknowledged" with a Redis round trip that removes
nothing: kombu holds no unacked copy of it.

Selected with Celery's `broker_transport` setting (transport.make_celery); the URLs stay
`redis://` and `rediss://`.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis

TRANSPORT = "trainyard.broker:Transport"


class Channel(kombu_redis.Channel):
    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        if self._sync_client is None:
            self._sync_client = super()._create_client()  # type: ignore[no-untyped-call]
        return self._sync_client

    def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
        if delivery_tag not in self.qos._delivered:  # consumed with no_ack: nothing is held for it
            return
        super().basic_ack(delivery_tag, multiple=multiple)  # type: ignore[no-untyped-call]


class Transport(kombu_redis.Transport):
    Channel = Channel
