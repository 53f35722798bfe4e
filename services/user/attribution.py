"""Who earns on a buyer's order (ARCHITECTURE §5): the buyer's current binding wins; a
promoter code decides only when the buyer has no binding (and binds the buyer, if the bind
mode allows) or when the bind mode is ``override`` (and rebinds the buyer)."""

from __future__ import annotations

from typing import Any

from libs.common.db.engine import Tx
from libs.common.errors import TuikeError
from libs.common.ids import IdGenerator, shard_of
from libs.common.messaging.outbox import utcnow
from services.user import paths
from services.user.bind_batch import bind_by_code
from services.user.binding import approved_promoter_for_code
from services.user.relations import (
    active_rewrites,
    ancestors_of,
    effective_path,
    is_active,
    load_relation,
)
from services.user.settings import UserSettings
from services.user.users import require_user

# Refusals after which the code is simply ignored: the binding (or nobody) decides.
_CODE_IGNORED = {
    "promoter.code_not_found",
    "promoter.disabled",
    "promoter.not_approved",
    "relation.self_bind",
    "relation.cycle",
    "relation.already_bound",
    "relation.changed",
}


async def attribute(
    tx: Tx,
    ids: IdGenerator,
    settings: UserSettings,
    buyer_id: int,
    promoter_code: str | None,
    levels: int,
) -> dict[str, Any]:
    """The attributed promoter and the beneficiary chain (level 1 = the buyer's parent).

    A code that cannot bind the buyer because the ``register_only`` window has passed still
    attributes this one order to its promoter (and the promoter's upline), without a bind:
    the promoter did bring the sale (docs/decisions/0102-attribution.md)."""
    shard = await tx.shard(shard_of(buyer_id))
    await require_user(shard, buyer_id)
    now = utcnow()
    current = await load_relation(shard, buyer_id)
    bound = rebound = False
    chain_path: str | None = None
    if promoter_code and (not is_active(current, now) or settings.bind_mode == "override"):
        try:
            attached = await bind_by_code(tx, ids, settings, buyer_id, promoter_code, "code")
        except TuikeError as refusal:
            if refusal.code == "relation.register_window_closed":
                chain_path = await _promoter_chain(tx, promoter_code)
            elif refusal.code not in _CODE_IGNORED:
                raise
            else:
                # Another request may have bound the buyer meanwhile: its binding decides.
                current = await load_relation(shard, buyer_id)
        else:
            if attached.changed:
                rebound = current is not None and is_active(current, now)
                bound = not rebound
            current = await load_relation(shard, buyer_id)
    if chain_path is not None:
        # Attributed without a bind: the promoter itself is level 1, then its upline.
        chain = paths.ids_of(chain_path)
        chain.reverse()
        beneficiaries = [] if buyer_id in chain else chain[:levels]
    elif is_active(current, now):
        rewrites = await active_rewrites(await tx.main())
        beneficiaries = ancestors_of(effective_path(buyer_id, current, rewrites), levels)
    else:
        beneficiaries = []
    return {
        "buyer_user_id": buyer_id,
        "promoter_id": beneficiaries[0] if beneficiaries else None,
        "beneficiaries": [
            {"level": level, "user_id": user_id}
            for level, user_id in enumerate(beneficiaries, start=1)
        ],
        "rebound": rebound,
        "bound": bound,
    }


async def _promoter_chain(tx: Tx, promoter_code: str) -> str:
    promoter_id = await approved_promoter_for_code(tx, promoter_code)
    relation = await load_relation(await tx.shard(shard_of(promoter_id)), promoter_id)
    return effective_path(promoter_id, relation, await active_rewrites(await tx.main()))
