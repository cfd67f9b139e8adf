"""The notifier: a thread of the API process that sends the webhook outbox (trainyard/db/notifications.py).

It runs beside the API, never in the scheduler, so a receiver that is slow or down delays
nothing but other webhooks. Rows are claimed compare-and-set, sent with httpx, and their outcome
recorded: delivered on a 2xx; tried again with exponential backoff on connection errors, 408,
429 and 5xx; failed after `max_tries`, or at once on any other answer. The outbox is in the
database, so a restart loses nothing; a crash between a send and its record sends it again
(at-least-once: receivers dedupe on X-Trainyard-Delivery).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy.orm import Session, sessionmaker

from trainyard import notify
from trainyard.crypto import InvalidToken, decrypt_secrets
from trainyard.db import notifications
from trainyard.db.jobs import load_job_dict
from trainyard.db.models import Sweep, WorkspaceSettings, utcnow
from trainyard.db.sweep_queries import load_sweep_dict
from trainyard.retrying import Backoff

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NotifierSettings:
    max_tries: int = notify.DEFAULT_MAX_TRIES
    backoff: Backoff = notify.DELIVERY_BACKOFF
    poll_period_s: float = 0.5
    timeout_s: float = 10.0
    batch: int = 20
    claim_s: float = 300.0  # outlives a whole batch of sends (batch times timeout_s): no second sender overlaps


class Notifier:
    """Sends due outbox rows one after another (a database error leaves the row's claim to expire:
    it is tried again later)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        secret_key: str | None,
        settings: NotifierSettings | None = None,
        now: Callable[[], datetime] = utcnow,
        transport: httpx.BaseTransport | None = None,
    ):
        self.sessions, self.secret_key = sessions, secret_key
        self.settings = settings or NotifierSettings()
        self.now = now
        self.http = httpx.Client(timeout=self.settings.timeout_s, transport=transport, follow_redirects=False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="trainyard-notifier", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.timeout_s + 1)
        self.http.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sent = self.run_once()
            except Exception:  # the database may be away for a while: the outbox waits in it
                log.exception("notifier pass failed")
                sent = 0
            if not sent:
                self._stop.wait(self.settings.poll_period_s)

    def run_once(self) -> int:
        """Send what is due now; returns how many tries were made."""
        with self.sessions.begin() as session:
            due = notifications.claim_due(session, self.now(), self.settings.claim_s, self.settings.batch)
        for row in due:
            self._deliver(row)
        return len(due)

    def _deliver(self, row: notifications.Due) -> None:
        try:
            body, key = self._prepare(row)
        except (LookupError, RuntimeError) as exc:  # no body or no key can be made: trying again would not help
            log.warning("webhook %s to %s cannot be sent: %s", row.id, row.url, exc)
            self._record(row, delivered=False, give_up=True, status_code=None, error=str(exc))
            return
        timestamp = int(time.time())
        headers = notify.headers(key, timestamp, body, row.event, row.id)
        try:
            answer = self.http.post(row.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            self._record(row, delivered=False, give_up=False, status_code=None, error=f"{type(exc).__name__}: {exc}")
            return
        if answer.is_success:
            self._record(row, delivered=True, give_up=False, status_code=answer.status_code, error=None)
            return
        give_up = not notify.retryable_status(answer.status_code)
        self._record(row, delivered=False, give_up=give_up, status_code=answer.status_code,
                     error=f"HTTP {answer.status_code}")  # fmt: skip

    def _record(self, row: notifications.Due, *, delivered: bool, give_up: bool, status_code: int | None,
                error: str | None) -> None:  # fmt: skip
        now = self.now()
        tries = row.attempts + 1
        next_at: datetime | None = None
        if not delivered and not give_up and tries < self.settings.max_tries:
            next_at = now + timedelta(seconds=notify.retry_delay_s(tries, self.settings.backoff))
        if not delivered and next_at is None:
            log.warning("webhook %s to %s failed after %d tries: %s", row.id, row.url, tries, error)
        with self.sessions.begin() as session:
            notifications.record_try(session, row.id, delivered=delivered, next_at=next_at, now=now,
                                     status_code=status_code, error=error)  # fmt: skip

    def _prepare(self, row: notifications.Due) -> tuple[bytes, bytes]:
        with self.sessions() as session:
            if row.subject_kind == "job":
                job = load_job_dict(session, row.subject_id)
                if job is None:
                    raise LookupError(f"job {row.subject_id} is gone")
                body = notify.job_payload(job, row.event, row.id)
            else:
                body = notify.sweep_payload(_sweep_dict(session, row.subject_id), row.event, row.id)
            return notify.encode(body), self.signing_key(session, row.workspace)

    def signing_key(self, session: Session, workspace: str) -> bytes:
        return signing_key(session, workspace, self.secret_key)


def signing_key(session: Session, workspace: str, secret_key: str | None) -> bytes:
    """The workspace's key: the one an admin set (stored encrypted), else derived from the secret key."""
    if not secret_key:
        raise RuntimeError("TRAINYARD_SECRET_KEY is not set: webhooks cannot be signed")
    settings = session.get(WorkspaceSettings, workspace)
    if settings is not None and settings.signing_key_enc:
        try:
            return decrypt_secrets(settings.signing_key_enc, secret_key)["signing_key"].encode()
        except InvalidToken as exc:
            raise RuntimeError("the workspace's signing key was stored under another secret key") from exc
    return notify.workspace_key(workspace, secret_key)


def _sweep_dict(session: Session, sweep_id: str) -> dict[str, Any]:
    sweep = session.get(Sweep, sweep_id)
    if sweep is None:
        raise LookupError(f"sweep {sweep_id} is gone")
    data = load_sweep_dict(session, sweep)
    data["state"] = notifications.sweep_state(session, sweep_id)
    return data
