"""The unit of work: the one owner of a transaction's commit and of what is sent after it.

Routes, tasks, the sweeper and the commands open one (`session_scope`, `run_retrying`, or the
request's session in app/api/deps.py, which ends with `commit`); services work inside it and
only flush. What a service wants sent once its writes are visible it queues on the session:

- `send_after_commit(session, Message(...))`: a broker message (a job's plan, a shard, an
  assembly, a model's validation, a webhook delivery);
- `run_after_commit(session, key, work)`: a follow-up transaction, run once per key in a unit
  of work of its own (a capped tenant's held jobs released once one of its jobs has ended).

`commit` commits, then sends the messages, then runs the follow-ups; a rollback forgets both.
Nothing else publishes or commits for a service, and no global `Session` event hook exists:
a transaction opened some other way and committed would lose its messages, so none is.

A publish that fails after the commit loses nothing: every message names a row the commit
made (`dispatched_at` set), and the sweeper sends again what the broker does not hold
(app/sweeper.py). A message may say what to write when the broker refuses it (`refused`:
take the dispatch mark back, so the sweeper sends it at once); that runs in a unit of work of
its own. docs/decisions/0018-unit-of-work.md has the whole story.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.db import get_sessionmaker, is_lock_conflict

log = logging.getLogger(__name__)

T = TypeVar("T")

#: session.info keys: the messages and the follow-ups queued by this transaction
MESSAGES = "modelfarm_messages"
FOLLOW_UPS = "modelfarm_follow_ups"

Work = Callable[[Session], object]


@dataclass(frozen=True)
class Message:
    """A broker message to send once the transaction that queued it commits."""

    task: str
    args: list[Any]
    queue: str
    priority: str | None = None  # `high` or `normal` for a job's plan and shards
    countdown: float | None = None
    #: written (in a unit of work of its own) when the broker refuses the message
    refused: Work | None = field(default=None, compare=False)
    #: run (no transaction) once the commit is done, sent or not: a counter, say
    committed: Callable[[], None] | None = field(default=None, compare=False)


def send_after_commit(session: Session, message: Message) -> None:
    """Queue `message` to go once this transaction commits (never if it rolls back)."""
    session.info.setdefault(MESSAGES, []).append(message)


def run_after_commit(session: Session, key: Hashable, work: Work) -> None:
    """Run `work(session)` in a unit of work of its own once this transaction commits; the
    first `work` queued under `key` is the one run."""
    session.info.setdefault(FOLLOW_UPS, {}).setdefault(key, work)


def queued_messages(session: Session) -> list[Message]:
    """What this transaction will send when it commits (for tests and assertions)."""
    return list(session.info.get(MESSAGES, ()))


def commit(session: Session) -> None:
    """Commit the transaction, then send what it queued and run its follow-ups."""
    session.commit()
    messages: list[Message] = session.info.pop(MESSAGES, [])
    follow_ups: dict[Hashable, Work] = session.info.pop(FOLLOW_UPS, {})
    deliver(messages)
    for key, work in follow_ups.items():
        try:
            run_retrying(work)
        except Exception:  # the database or the broker went away: the sweeper does it later
            log.warning("the follow-up %r of a commit failed", key, exc_info=True)


def rollback(session: Session) -> None:
    """Roll back and forget what the transaction queued."""
    session.info.pop(MESSAGES, None)
    session.info.pop(FOLLOW_UPS, None)
    session.rollback()


def deliver(messages: list[Message]) -> None:
    """Send committed messages: plan messages of jobs in one round trip, the others one by
    one. A refused message's `refused` write runs in a unit of work of its own."""
    if not messages:
        return
    from app.broker.dispatch import TASK_PLAN_JOB, publish, publish_jobs

    # A plan message's `priority` is its job's: publish_jobs picks the message's from it.
    for message in messages:
        if message.committed is not None:
            message.committed()
    plans = [m for m in messages if m.task == TASK_PLAN_JOB]
    refused: list[Message] = []
    if plans:
        jobs = [(str(m.args[0]), m.queue, m.priority or "normal") for m in plans]
        failed = set(publish_jobs(jobs))
        refused += [m for m in plans if str(m.args[0]) in failed]
    for message in messages:
        if message.task == TASK_PLAN_JOB:
            continue
        if not publish(
            message.task, message.args, message.queue, message.countdown, message.priority
        ):
            refused.append(message)
    for message in refused:
        if message.refused is None:
            continue
        try:
            run_retrying(message.refused)
        except Exception:  # the mark stays: the sweeper's broker scan finds the message missing
            log.warning("could not record the refusal of %s%s", message.task, message.args)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A unit of work for tasks, the sweeper and commands: commit (then send) on success,
    roll back (and send nothing) on error."""
    session = get_sessionmaker()()
    try:
        yield session
        commit(session)
    except BaseException:
        rollback(session)
        raise
    finally:
        session.close()


def run_retrying(work: Callable[[Session], T], attempts: int = 5) -> T:
    """Run `work` in a unit of work of its own, again (up to `attempts` times in all) when it
    loses a lock race: a request answers what it asked, never a 503 for a deadlock."""
    for attempt in range(attempts):
        try:
            with session_scope() as session:
                return work(session)
        except OperationalError as exc:
            if not is_lock_conflict(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.01 * 2**attempt)
    raise AssertionError("unreachable")
