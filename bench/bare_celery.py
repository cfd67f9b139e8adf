"""The baseline: a bare Celery runner — one task that runs a command with its output in files.

Same settings a careful Celery user would pick for batch jobs and that trainyard's own transport
uses where they apply: JSON only, prefetch 1, the threads pool; plus acks_late. Workers start as
`celery -A bench.bare_celery worker -P threads -c K -Q bench.bare` with BENCH_REDIS_URL set.
Each finished task increments a Redis counter, which is how the bench sees completion.
"""

from __future__ import annotations

import os
import subprocess
import threading
from typing import Any

import redis
from celery import Celery

QUEUE = "bench.bare"
TASK_NAME = "bench.bare.run"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"

_redis_lock = threading.Lock()
_redis_clients: dict[str, redis.Redis] = {}


def _redis(url: str) -> redis.Redis:
    with _redis_lock:
        if url not in _redis_clients:
            _redis_clients[url] = redis.Redis.from_url(url)
        return _redis_clients[url]


def make_app(redis_url: str) -> Celery:
    """The baseline's Celery app on `redis_url`, with its one task registered."""
    app = Celery("bench_bare", broker=redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_default_queue=QUEUE,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )
    if os.environ.get("BENCH_VISIBILITY_TIMEOUT_S"):  # bench/requeue.py: how soon Celery redelivers
        app.conf.broker_transport_options = {"visibility_timeout": int(os.environ["BENCH_VISIBILITY_TIMEOUT_S"])}

    @app.task(name=TASK_NAME, ignore_result=True)
    def run(argv: list[str], out_prefix: str, done_key: str) -> None:
        with open(out_prefix + ".out", "wb") as out, open(out_prefix + ".err", "wb") as err:
            subprocess.run(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, check=False)
        _redis(redis_url).incr(done_key)

    return app


def send(app: Celery, argv: list[str], out_prefix: str, done_key: str) -> Any:
    return app.send_task(TASK_NAME, args=[argv, out_prefix, done_key], queue=QUEUE)


app = make_app(os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL))
