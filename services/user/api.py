"""HTTP routes of the user service: parse, authorize, call one service function, map."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import Field, TypeAdapter
from starlette.responses import Response as StarletteResponse

from libs.common.auth import Caller, authenticate
from libs.common.db.engine import Tx
from libs.common.errors import Forbidden
from libs.common.lean_routes import json_answer, json_body, plain_answer, query_parameter
from libs.common.masking import mask_phone
from libs.common.messaging.outbox import utcnow
from libs.common.runtime import Runtime, get_caller, get_runtime, runtime_of
from libs.common.schemas import parse_id
from services.user import moves, promoters, relations, users
from services.user.attribution import attribute
from services.user.bind_batch import BindQueue, BindRequest, Outcome, bind_many
from services.user.history import get_history
from services.user.pii import pii_of
from services.user.schemas import (
    AncestorsOut,
    Attribution,
    AttributionOut,
    Bind,
    BindOut,
    ChildrenOut,
    CreatePromoter,
    CreateUser,
    HistoryPage,
    Move,
    MoveJobOut,
    MoveOut,
    PromoterOut,
    RelationOut,
    TeamOut,
    UserOut,
    UserPage,
)
from services.user.settings import UserSettings

router = APIRouter(prefix="/api/v1", tags=["user"])
T = TypeVar("T")


def _self_or_platform(caller: Caller, user_id: int) -> None:
    """The user itself (any role), a platform, or an admin."""
    if caller.user_id is not None and caller.user_id == user_id:
        return
    caller.require("platform")


def _user_out(user: dict[str, Any], caller: Caller) -> UserOut:
    out = UserOut.model_validate(user)
    if not caller.may_read_pii():
        out.phone = mask_phone(out.phone)
    return out


async def _settings(runtime: Runtime, tx: Tx) -> UserSettings:
    # Read inside the write: on SQLite a separate "fresh" read would take the write lock too.
    settings: UserSettings = await runtime.business.in_tx(tx)
    return settings


_sqlite_writer = asyncio.Lock()


async def _write(runtime: Runtime, work: Callable[[Tx], Awaitable[T]]) -> T:
    """Run a write transaction. SQLite has one writer: queueing this process's writers here
    costs less than letting them poll the file lock (its busy handler sleeps up to 100 ms)."""
    if not runtime.db.is_sqlite:
        return await runtime.db.run(work)
    async with _sqlite_writer:
        return await runtime.db.run(work)


# -- users ------------------------------------------------------------------------------------
@router.post("/users", response_model=UserOut, status_code=201)
async def create_user(
    body: CreateUser,
    response: Response,
    runtime: Runtime = Depends(get_runtime),
    caller: Caller = Depends(get_caller),
) -> UserOut:
    caller.require("platform")
    new = users.NewUser(**body.model_dump())
    pii = pii_of(runtime)

    async def work(tx: Tx) -> tuple[dict[str, Any], bool]:
        return await users.create_user(tx, runtime.id_generator, new, pii)

    user, created = await _write(runtime, work)
    if not created:
        response.status_code = 200
    return _user_out(user, caller)


@router.get("/users/{user_id}", response_model=UserOut)
async def get_user(
    user_id: str, runtime: Runtime = Depends(get_runtime), caller: Caller = Depends(get_caller)
) -> UserOut:
    uid = parse_id(user_id)
    _self_or_platform(caller, uid)
    return _user_out(await users.get_user(runtime.db, uid, pii_of(runtime)), caller)


@router.get("/users", response_model=UserPage)
async def find_users(
    phone: str = Query(min_length=1, max_length=64),
    platform: str | None = Query(default=None, max_length=32),
    runtime: Runtime = Depends(get_runtime),
    caller: Caller = Depends(get_caller),
) -> UserPage:
    """Users by phone (any formatting): a platform sees its own users, an admin any
    platform's (or the one named)."""
    caller.require("platform")
    if not caller.is_admin:
        if caller.platform is None or platform not in (None, caller.platform):
            raise Forbidden("a platform may look up only its own users", code="user.other_platform")
        platform = caller.platform
    found = await users.find_users_by_phone(runtime.db, pii_of(runtime), phone, platform=platform)
    return UserPage(items=[_user_out(user, caller) for user in found])


# -- promoters --------------------------------------------------------------------------------
@router.post("/promoters", response_model=PromoterOut, status_code=201)
async def create_promoter(
    body: CreatePromoter,
    response: Response,
    runtime: Runtime = Depends(get_runtime),
    caller: Caller = Depends(get_caller),
) -> PromoterOut:
    if not caller.is_admin and caller.user_id != body.user_id:
        raise Forbidden("a user may only apply for itself")

    async def work(tx: Tx) -> tuple[dict[str, Any], bool]:
        return await promoters.become_promoter(
            tx,
            body.user_id,
            await _settings(runtime, tx),
            by_admin=caller.is_admin,
            apply_only=body.apply,
        )

    promoter, created = await _write(runtime, work)
    if not created:
        response.status_code = 200
    return PromoterOut.model_validate(promoter)


@router.get("/promoters/by-code/{code}", response_model=PromoterOut)
async def promoter_by_code(
    code: str, runtime: Runtime = Depends(get_runtime), caller: Caller = Depends(get_caller)
) -> PromoterOut:
    return PromoterOut.model_validate(await promoters.promoter_by_code(runtime.db, code))


@router.get("/promoters/{user_id}", response_model=PromoterOut)
async def get_promoter(
    user_id: str, runtime: Runtime = Depends(get_runtime), caller: Caller = Depends(get_caller)
) -> PromoterOut:
    return PromoterOut.model_validate(await promoters.get_promoter(runtime.db, parse_id(user_id)))


def _promoter_action(action: str) -> Any:
    async def change(
        user_id: str, runtime: Runtime = Depends(get_runtime), caller: Caller = Depends(get_caller)
    ) -> PromoterOut:
        uid = parse_id(user_id)
        caller.require()

        async def work(tx: Tx) -> dict[str, Any]:
            return await promoters.change_promoter(tx, uid, action)

        return PromoterOut.model_validate(await _write(runtime, work))

    change.__name__ = f"{action}_promoter"
    return change


for _action in ("approve", "reject", "disable", "enable"):
    router.add_api_route(
        f"/promoters/{{user_id}}/{_action}",
        _promoter_action(_action),
        methods=["POST"],
        response_model=PromoterOut,
        name=f"{_action}_promoter",
    )


# -- relations --------------------------------------------------------------------------------
_bind_queues: weakref.WeakKeyDictionary[Runtime, BindQueue] = weakref.WeakKeyDictionary()


def _bind_queue(runtime: Runtime) -> BindQueue:
    queue = _bind_queues.get(runtime)
    if queue is None:

        async def run_batch(requests: list[BindRequest]) -> list[Outcome]:
            # The cached settings (at most 0.5 s old, reset at once by a change made through
            # this process): one statement less in every batch.
            settings: UserSettings = await runtime.business.current()

            async def work(tx: Tx) -> list[Outcome]:
                return await bind_many(tx, runtime.id_generator, settings, requests)

            return await _write(runtime, work)

        queue = _bind_queues[runtime] = BindQueue(run_batch)
    return queue


@router.post("/relations/bind", response_model=BindOut)
async def bind(
    body: Bind, runtime: Runtime = Depends(get_runtime), caller: Caller = Depends(get_caller)
) -> BindOut:
    """The contract of binding; requests are served by ``bind_lean`` (same steps)."""
    return await _bind(runtime, caller, body)


async def bind_lean(request: Request) -> StarletteResponse:
    """POST /relations/bind as a lean route (libs/common/lean_routes.py): the hottest write of
    the suite, where FastAPI's per-request work would cost as much as the bind itself."""
    runtime = runtime_of(request)
    caller = authenticate(request, runtime.settings)
    return json_answer(await _bind(runtime, caller, await json_body(request, Bind)))


async def _bind(runtime: Runtime, caller: Caller, body: Bind) -> BindOut:
    _self_or_platform(caller, body.user_id)
    attached = await _bind_queue(runtime).bind(
        BindRequest(body.user_id, body.promoter_code, body.source)
    )
    return BindOut(**attached.relation, changed=attached.changed)


@router.post("/relations/attribution", response_model=AttributionOut)
async def attribution(
    body: Attribution,
    runtime: Runtime = Depends(get_runtime),
    caller: Caller = Depends(get_caller),
) -> AttributionOut:
    caller.require("platform")

    async def work(tx: Tx) -> dict[str, Any]:
        return await attribute(
            tx,
            runtime.id_generator,
            await _settings(runtime, tx),
            body.buyer_user_id,
            body.promoter_code,
            body.levels,
        )

    return AttributionOut.model_validate(await _write(runtime, work))


@router.get("/relations/moves/{job_id}", response_model=MoveJobOut)
async def get_move(
    job_id: str, runtime: Runtime = Depends(get_runtime), caller: Caller = Depends(get_caller)
) -> MoveJobOut:
    caller.require()
    return MoveJobOut.model_validate(await moves.get_move_job(runtime.db, parse_id(job_id)))


@router.get("/relations/{user_id}", response_model=RelationOut)
async def get_relation(
    user_id: str, runtime: Runtime = Depends(get_runtime), caller: Caller = Depends(get_caller)
) -> RelationOut:
    uid = parse_id(user_id)
    _self_or_platform(caller, uid)
    return RelationOut.model_validate(await relations.get_relation(runtime.db, uid, utcnow()))


# The query parameters of the relation reads, shared by their FastAPI declarations (the
# OpenAPI document) and their lean routes (the requests).
ANCESTOR_LEVELS_DEFAULT, ANCESTOR_LEVELS_MAX = 3, 10_000
CHILDREN_LIMIT_DEFAULT, CHILDREN_LIMIT_MAX = 50, 500
_LEVELS = TypeAdapter(Annotated[int, Field(ge=1, le=ANCESTOR_LEVELS_MAX)])
_LIMIT = TypeAdapter(Annotated[int, Field(ge=1, le=CHILDREN_LIMIT_MAX)])
_CURSOR: TypeAdapter[str | None] = TypeAdapter(str | None)


@router.get("/relations/{user_id}/ancestors", response_model=AncestorsOut)
async def get_ancestors(
    user_id: str,
    levels: int = Query(default=ANCESTOR_LEVELS_DEFAULT, ge=1, le=ANCESTOR_LEVELS_MAX),
    runtime: Runtime = Depends(get_runtime),
    caller: Caller = Depends(get_caller),
) -> StarletteResponse:
    """The contract; requests are served by ``ancestors_lean`` (same steps)."""
    return await _ancestors(runtime, caller, user_id, levels)


async def ancestors_lean(request: Request) -> StarletteResponse:
    runtime = runtime_of(request)
    caller = authenticate(request, runtime.settings)
    levels = query_parameter(request, "levels", _LEVELS, ANCESTOR_LEVELS_DEFAULT)
    return await _ancestors(runtime, caller, request.path_params["user_id"], levels)


async def _ancestors(
    runtime: Runtime, caller: Caller, user_id: str, levels: int
) -> StarletteResponse:
    uid = parse_id(user_id)
    _self_or_platform(caller, uid)
    ancestors = await relations.get_ancestors(runtime.db, uid, levels)
    # AncestorsOut's JSON form, written without a model: validating and serializing a
    # thousand items (twice, with FastAPI's response check) cost ten times the read.
    return plain_answer(
        {"items": [{"user_id": str(a), "level": n} for n, a in enumerate(ancestors, start=1)]}
    )


@router.get("/relations/{user_id}/children", response_model=ChildrenOut)
async def get_children(
    user_id: str,
    cursor: str | None = None,
    limit: int = Query(default=CHILDREN_LIMIT_DEFAULT, ge=1, le=CHILDREN_LIMIT_MAX),
    runtime: Runtime = Depends(get_runtime),
    caller: Caller = Depends(get_caller),
) -> StarletteResponse:
    """The contract; requests are served by ``children_lean`` (same steps)."""
    return await _children(runtime, caller, user_id, cursor, limit)


async def children_lean(request: Request) -> StarletteResponse:
    runtime = runtime_of(request)
    caller = authenticate(request, runtime.settings)
    cursor = query_parameter(request, "cursor", _CURSOR, None)
    limit = query_parameter(request, "limit", _LIMIT, CHILDREN_LIMIT_DEFAULT)
    return await _children(runtime, caller, request.path_params["user_id"], cursor, limit)


async def _children(
    runtime: Runtime, caller: Caller, user_id: str, cursor: str | None, limit: int
) -> StarletteResponse:
    uid = parse_id(user_id)
    _self_or_platform(caller, uid)
    items, next_cursor = await relations.get_children(runtime.db, uid, cursor, limit)
    # Serialized here: FastAPI would validate the page against the model a second time.
    return json_answer(ChildrenOut.model_validate({"items": items, "next_cursor": next_cursor}))


@router.get("/relations/{user_id}/team", response_model=TeamOut)
async def get_team(
    user_id: str, runtime: Runtime = Depends(get_runtime), caller: Caller = Depends(get_caller)
) -> StarletteResponse:
    """The contract; requests are served by ``team_lean`` (same steps)."""
    return await _team(runtime, caller, user_id)


async def team_lean(request: Request) -> StarletteResponse:
    runtime = runtime_of(request)
    return await _team(
        runtime, authenticate(request, runtime.settings), request.path_params["user_id"]
    )


async def _team(runtime: Runtime, caller: Caller, user_id: str) -> StarletteResponse:
    uid = parse_id(user_id)
    _self_or_platform(caller, uid)
    return json_answer(TeamOut.model_validate(await relations.get_team(runtime.db, uid)))


@router.get("/relations/{user_id}/history", response_model=HistoryPage)
async def get_bind_history(
    user_id: str, runtime: Runtime = Depends(get_runtime), caller: Caller = Depends(get_caller)
) -> HistoryPage:
    uid = parse_id(user_id)
    _self_or_platform(caller, uid)
    return HistoryPage.model_validate({"items": await get_history(runtime.db, uid)})


@router.put("/relations/{user_id}/parent", response_model=MoveOut)
async def move(
    user_id: str,
    body: Move,
    runtime: Runtime = Depends(get_runtime),
    caller: Caller = Depends(get_caller),
) -> MoveOut:
    uid = parse_id(user_id)
    caller.require()

    async def work(tx: Tx) -> moves.Attached:
        return await moves.move_user(tx, runtime.id_generator, uid, body.parent_id, body.reason)

    attached = await _write(runtime, work)
    job = None
    if attached.move_job_id is not None:
        job = MoveJobOut.model_validate(await moves.get_move_job(runtime.db, attached.move_job_id))
    return MoveOut(relation=RelationOut.model_validate(attached.relation), job=job)
