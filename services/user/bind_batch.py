"""Binding by promoter code with the four bind modes (ARCHITECTURE §4), a batch at a time.

Binds arrive as many small, independent requests. ``BindQueue`` gives them group commit:
while one transaction is being written, the requests that arrive meanwhile wait, and the next
transaction takes all of them. ``bind_many`` decides each request of a batch exactly as it
would be decided alone, in order, with a handful of set-based reads and writes for the whole
batch, so a bind costs a fraction of a statement instead of fourteen. A request that depends
on an earlier one of the same batch (the same user, a parent bound in it, a user whose team
grew or shrank in it), and every request
after it or after one that moves a whole team, is deferred to the next batch, so the outcomes
equal those of running the requests one by one, in order
(docs/decisions/0104-bind-group-commit.md).

Every refusal has its own code and leaves nothing written for that request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from libs.common.db.engine import Tx
from libs.common.db.global_index import lookup_many
from libs.common.errors import Conflict, NotFound, TuikeError
from libs.common.ids import IdGenerator
from libs.common.messaging.outbox import utcnow
from services.user.attaching import (
    Attached,
    Plan,
    apply_plans,
    plan_attach,
    rows_by_key,
    team_row,
)
from services.user.binding import require_approved
from services.user.models import promoters, relations, team_counts, users
from services.user.promoters import CODE_INDEX, normalise_code
from services.user.relations import active_rewrites, effective_path, is_active, relation_view
from services.user.settings import UserSettings
from services.user.users import registered_within

log = logging.getLogger("tuike.user.binds")


@dataclass(frozen=True)
class BindRequest:
    user_id: int
    code: str
    source: str


class Deferred:
    """The request depends on an earlier one of its batch: it goes into the next batch."""


DEFERRED = Deferred()
Outcome = Attached | TuikeError | Deferred


async def bind_many(
    tx: Tx, ids: IdGenerator, settings: UserSettings, requests: Sequence[BindRequest]
) -> list[Outcome]:
    """Decide and write a batch of binds in this transaction; one outcome per request.

    Per request, in this order: an unknown user (``user.not_found``), an unknown code
    (``promoter.code_not_found``), a promoter not approved or disabled, binding to oneself
    (``relation.self_bind``); binding again under the same parent is a no-op (the relation as
    it is); under another parent, ``first``, ``register_only`` and an unexpired ``expiring``
    bind refuse with ``relation.already_bound`` while ``override`` rebinds; ``register_only``
    refuses users registered more than ``register_window_minutes`` ago; a parent in the user's
    team is ``relation.cycle``."""
    now = utcnow()
    main = await tx.main()
    normalised = {r.code: normalise_code(r.code) for r in requests}
    owners = await lookup_many(main, CODE_INDEX, (c for c in normalised.values() if c))
    parent_of = {code: owners.get(n) if n else None for code, n in normalised.items()}
    user_ids = {r.user_id for r in requests}
    parent_ids = {p for p in parent_of.values() if p is not None}
    found_users = await rows_by_key(tx, users, "id", user_ids)
    found_promoters = await rows_by_key(tx, promoters, "user_id", parent_ids)
    found_relations = await rows_by_key(tx, relations, "user_id", user_ids | parent_ids)
    teams = await rows_by_key(tx, team_counts, "user_id", user_ids)
    rewrites = await active_rewrites(main)
    ttl = timedelta(days=settings.bind_ttl_days) if settings.bind_mode == "expiring" else None

    outcomes: list[Outcome] = []
    plans: list[Plan] = []
    planned_at: list[int] = []
    changing: set[int] = set()  # users this batch binds
    counted: set[int] = set()  # users whose level counts (the team a user takes along) change
    # Set once a request is deferred or moves a team: every later request then waits for the
    # next batch too, which keeps the outcomes those of running the requests in order.
    blocked = False
    for request in requests:
        user_id = request.user_id
        try:
            user = found_users.get(user_id)
            if user is None:
                raise NotFound(f"user {user_id} not found", code="user.not_found")
            parent_id = parent_of[request.code]
            if parent_id is None:
                raise NotFound("no promoter has this code", code="promoter.code_not_found")
            require_approved(found_promoters.get(parent_id))
            if parent_id == user_id:
                raise Conflict("a user cannot be bound under itself", code="relation.self_bind")
            if blocked or user_id in changing or user_id in counted or parent_id in changing:
                blocked = True
                outcomes.append(DEFERRED)
                continue
            current = found_relations.get(user_id)
            if is_active(current, now):
                assert current is not None
                if current["parent_id"] == parent_id:
                    path = effective_path(user_id, current, rewrites)
                    outcomes.append(Attached(relation_view(user_id, current, path, now), False))
                    continue
                if settings.bind_mode != "override":
                    raise Conflict(
                        "the user is already bound",
                        code="relation.already_bound",
                        details={
                            "parent_id": str(current["parent_id"]),
                            "bind_mode": settings.bind_mode,
                        },
                    )
            if settings.bind_mode == "register_only" and not registered_within(
                user, now, settings.register_window_minutes
            ):
                raise Conflict(
                    "only newly registered users can be bound",
                    code="relation.register_window_closed",
                    details={"register_window_minutes": settings.register_window_minutes},
                )
            plan = plan_attach(
                user_id,
                parent_id,
                parent_path=effective_path(parent_id, found_relations.get(parent_id), rewrites),
                current=current,
                old_path=effective_path(user_id, current, rewrites),
                subtree=team_row(teams, user_id),
                now=now,
                source=request.source,
                kind="rebind" if current else "bind",
                ttl=ttl,
            )
        except TuikeError as refusal:
            outcomes.append(refusal)
            continue
        changing.add(user_id)
        counted |= plan.counted_ancestors
        blocked = plan.moves_a_team
        planned_at.append(len(outcomes))
        outcomes.append(DEFERRED)  # replaced below once written
        plans.append(plan)
    if plans:
        for index, attached in zip(planned_at, await apply_plans(tx, ids, plans, now), strict=True):
            outcomes[index] = attached
    return outcomes


async def bind_by_code(
    tx: Tx, ids: IdGenerator, settings: UserSettings, user_id: int, code: str, source: str
) -> Attached:
    """Bind one user by code in this transaction (a batch of one; rules of ``bind_many``)."""
    (outcome,) = await bind_many(tx, ids, settings, [BindRequest(user_id, code, source)])
    if isinstance(outcome, TuikeError):
        raise outcome
    assert isinstance(outcome, Attached)  # the first request of a batch is never deferred
    return outcome


RunBatch = Callable[[list[BindRequest]], Awaitable[list[Outcome]]]


class BindQueue:
    """Group commit for binds: requests that arrive while a batch is being written share the
    next transaction. An idle queue starts a batch at once, so a lone bind waits for nothing.

    ``run_batch`` runs ``bind_many`` for a batch in one transaction. When a batch fails as a
    whole (a concurrent writer in another process changed one of its users), each request is
    retried in its own transaction, so one request never fails another."""

    def __init__(self, run_batch: RunBatch, max_batch: int = 256) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._waiting: list[tuple[BindRequest, asyncio.Future[Attached]]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def bind(self, request: BindRequest) -> Attached:
        future: asyncio.Future[Attached] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._waiting:
            # One turn of the loop first: the callers answered by the last batch get their
            # responses out, and requests already in the sockets join this batch instead of
            # waiting a whole transaction for the next one.
            await asyncio.sleep(0)
            batch = self._waiting[: self._max_batch]
            del self._waiting[: len(batch)]
            try:
                outcomes = await self._outcomes([request for request, _ in batch])
            except BaseException as exc:  # shutdown: nobody may wait forever
                for _, future in batch + self._waiting:
                    if not future.done():
                        future.set_exception(exc)
                self._waiting.clear()
                raise
            deferred = []
            for (request, future), outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, Deferred):
                    deferred.append((request, future))
                elif future.done():  # the caller went away
                    continue
                elif isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
            self._waiting[:0] = deferred

    async def _outcomes(self, requests: list[BindRequest]) -> list[Outcome | Exception]:
        try:
            return list(await self._run_batch(requests))
        except Exception as exc:
            if len(requests) == 1:
                return [exc]
            log.info("a batch of %d binds failed (%s); retrying one by one", len(requests), exc)
        outcomes: list[Outcome | Exception] = []
        for request in requests:
            try:
                outcomes.extend(await self._run_batch([request]))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes
