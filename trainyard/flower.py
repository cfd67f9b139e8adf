"""`trainyard flower`: Flower on trainyard's Celery app, never anonymous unless asked to be.

Flower shows every task's arguments and can revoke tasks and shut workers down, so it refuses to
start without basic-auth credentials (`--basic-auth user:pass` or FLOWER_BASIC_AUTH) unless
`--no-auth` says so (CVE-2022-30034 was an unauthenticated Flower). The credentials reach Flower
through its environment, never its command line, where any local user could read them.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

from trainyard import transport
from trainyard.config import Settings

AUTH_ENV = "FLOWER_BASIC_AUTH"
DEFAULT_PORT = 5555
# The tasks page shows each part's kwargs: job id, name, attempt and rank are what operators look for.
TASKS_COLUMNS = "name,uuid,state,kwargs,received,started,runtime,worker"


class FlowerAuthMissing(ValueError):
    """Flower was asked to start without credentials and without `--no-auth`."""


def resolve_basic_auth(flag: str | None, configured: str | None, no_auth: bool) -> str | None:
    """The `user:pass[,user2:pass2]` credentials to use (the flag, else Settings.flower_basic_auth), or
    None when running open on purpose."""
    credentials = flag or configured or None
    if credentials is None:
        if no_auth:
            return None
        raise FlowerAuthMissing(
            "Flower refuses to start without credentials: pass --basic-auth user:pass, "
            f"set {AUTH_ENV}, or run it open on purpose with --no-auth"
        )
    for pair in credentials.split(","):
        user, _, password = pair.partition(":")
        if not user or not password:
            raise FlowerAuthMissing("basic auth credentials must read user:password (several: comma-separated)")
    return credentials


def flower_argv(address: str, port: int) -> list[str]:
    # --conf names no file: Flower would otherwise execute a flowerconfig.py from the current directory.
    return ["flower", f"--address={address}", f"--port={port}", "--conf=/dev/null", f"--tasks_columns={TASKS_COLUMNS}"]


def run_flower(settings: Settings, address: str, port: int, basic_auth: str | None) -> NoReturn:
    """Serve Flower in this process until it is stopped, then end the process."""
    if basic_auth:
        os.environ[AUTH_ENV] = basic_auth
    else:
        os.environ.pop(AUTH_ENV, None)
    app = transport.make_celery(
        settings.redis_url.get_secret_value(),
        visibility_timeout_s=settings.broker_visibility_timeout_s,
        lean_transport=False,
    )
    code = int(app.start(argv=flower_argv(address, port)) or 0)
    # Flower's pool threads may still be retrying a broadcast to a Redis that is gone, and the
    # interpreter would wait for them forever; Flower keeps nothing to save, so leave at once.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
