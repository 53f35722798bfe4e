"""The data of every event Tuike publishes: the contract between services (ARCHITECTURE §8).

An event's envelope ``data`` is ``Model.model_dump(mode="json")`` of the model named by its
type; consumers read it back with ``Model.model_validate(envelope.data)``. Ids inside ``data``
are decimal strings (as in the REST API), except in the compact relation paths of
``UserBound`` (base 36, libs/common/relation_path.py). Amounts are integers of the minor unit.
Add fields freely (consumers ignore what they do not know); never rename or remove one
without a new ``version``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from libs.common import relation_path
from libs.common.schemas import Id

# A compact relation path (``relation_path.WELL_FORMED``), checked once per distinct value.
CompactPath = Annotated[str, AfterValidator(relation_path.checked)]


class EventData(BaseModel):
    model_config = ConfigDict(extra="ignore")


# -- user.events (key: user id) -------------------------------------------------------------
class UserRegistered(EventData):  # user.registered
    user_id: Id
    platform: str
    external_id: str
    registered_at: datetime


class PromoterApproved(EventData):  # promoter.approved
    user_id: Id
    code: str
    tier: str | None = None
    approved_at: datetime


class PromoterStatusChanged(EventData):  # promoter.disabled, promoter.enabled
    user_id: Id
    status: str  # approved (enabled again) | disabled
    tier: str | None = None
    changed_at: datetime


class UserBound(EventData):  # user.bound, user.rebound, user.moved
    """Version 2 carries the ancestors as compact paths (``ancestor_path``); version 1 carried
    them as lists of decimal ids (``ancestor_ids``), which consumers still read
    (docs/decisions/0108-bind-event-ancestor-path.md). Use ``ancestors()`` and
    ``previous_ancestors()``, which read either."""

    user_id: Id
    parent_id: Id
    previous_parent_id: Id | None = None
    level: int
    bind_source: str
    bound_at: datetime
    # Version 2. The ancestors after the change, root first, the parent last, ids in base 36
    # (libs/common/relation_path.py): ",<root>,...,<parent>,".
    ancestor_path: CompactPath | None = None
    # Version 2. The ancestors before the change, the same way (None for a first bind):
    # whose team shrinks.
    previous_ancestor_path: CompactPath | None = None
    # Version 1: the same as decimal ids, nearest first (parent, grandparent, ...). A factory,
    # not ``= []``: pydantic deep-copies a mutable default for every event it reads.
    ancestor_ids: list[Id] = Field(default_factory=list)
    previous_ancestor_ids: list[Id] = Field(default_factory=list)

    def ancestors(self) -> list[int]:
        """The ancestors after the change, nearest first."""
        if self.ancestor_path is not None:
            return list(reversed(relation_path.parse(self.ancestor_path)))
        return list(self.ancestor_ids)

    def previous_ancestors(self) -> list[int]:
        """The ancestors before the change, nearest first (none for a first bind)."""
        if self.previous_ancestor_path is not None:
            return list(reversed(relation_path.parse(self.previous_ancestor_path)))
        return list(self.previous_ancestor_ids)


# -- order.events (key: order id) -----------------------------------------------------------
class Beneficiary(EventData):
    level: int  # 1 = the buyer's parent (or the promoter whose code was used); 0 = self-purchase
    user_id: Id


class OrderItemData(EventData):
    item_id: Id
    sku: str
    category: str
    quantity: int
    unit_price_amount: int
    paid_amount: int
    refunded_amount: int = 0


class OrderData(EventData):  # order.created, order.paid
    order_id: Id
    platform: str
    order_no: str
    buyer_user_id: Id
    currency: str
    promoter_id: Id | None
    beneficiaries: list[Beneficiary]
    attribution_status: str  # resolved | pending | none
    items: list[OrderItemData]
    shipping_amount: int
    status: str
    created_at: datetime
    paid_at: datetime | None = None


class RefundedItem(EventData):
    item_id: Id
    sku: str
    refunded_amount: int  # by this refund
    remaining_paid_amount: int  # paid_amount minus every refund so far


class OrderRefunded(EventData):  # order.refunded
    order_id: Id
    refund_id: Id
    refund_no: str
    currency: str
    items: list[RefundedItem]
    refunded_at: datetime


class OrderCompleted(EventData):  # order.completed
    order_id: Id
    completed_at: datetime
    automatic: bool = False


class OrderClosed(EventData):  # order.closed
    order_id: Id
    closed_at: datetime


# -- commission.events (key: order id, or promoter id for withdrawals) ------------------------
class CommissionLine(EventData):
    record_id: Id
    order_id: Id
    item_id: Id
    level: int
    beneficiary_id: Id
    amount: int  # the change this event makes (positive accrued, positive reversed, ...)
    currency: str


class CommissionsChanged(EventData):
    """commission.accrued | commission.reversed | commission.settled: lines of one order."""

    order_id: Id
    lines: list[CommissionLine]
    occurred_at: datetime


class WithdrawalChanged(EventData):
    """withdrawal.requested | approved | rejected | paid | failed | cancelled."""

    withdrawal_id: Id
    promoter_id: Id
    amount: int
    fee_amount: int
    tax_amount: int
    net_amount: int
    currency: str
    status: str
    occurred_at: datetime
