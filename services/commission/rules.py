"""Commission rules: default / per category / per product, per level, versioned.

A new rule for a scope (``default``, or a category, or a product's sku) is a new version of
that scope, in force from its ``effective_from``. The rule in force for a scope at moment t is
its latest version with ``effective_from ≤ t``; if that version was deactivated before t the
scope has no rule then (the item falls back to a less specific scope). The most specific scope
that has a rule in force decides all levels of an item (product > category > default).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import orjson
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db.engine import Tx
from libs.common.errors import BadRequest, NotFound
from libs.common.ids import IdGenerator
from libs.common.messaging.outbox import utcnow
from services.commission.compliance import (
    LevelTerms,
    check_rule,
    profile_of,
    validate_levels,
)
from services.commission.models import commission_rules

SCOPES = ("product", "category", "default")


@dataclass(frozen=True)
class Rule:
    id: int
    scope: str
    key: str
    version: int
    levels: list[LevelTerms]
    effective_from: datetime
    created_at: datetime
    deactivated_at: datetime | None

    def terms_for(self, level: int) -> LevelTerms | None:
        for terms in self.levels:
            if terms.level == level:
                return terms
        return None


def _rule_of(row: object) -> Rule:
    mapping = row._mapping  # type: ignore[attr-defined]
    return Rule(
        id=int(mapping["id"]),
        scope=mapping["scope"],
        key=mapping["scope_key"],
        version=int(mapping["version"]),
        levels=[LevelTerms(**terms) for terms in orjson.loads(mapping["levels"])],
        effective_from=mapping["effective_from"],
        created_at=mapping["created_at"],
        deactivated_at=mapping["deactivated_at"],
    )


async def create_rule(
    tx: Tx,
    ids: IdGenerator,
    scope: str,
    key: str | None,
    levels: list[LevelTerms],
    effective_from: datetime | None = None,
) -> Rule:
    """Save a new version of a scope's rule, refused (nothing saved) if the compliance
    profile forbids it."""
    from services.commission.settings import load_settings

    if scope not in SCOPES:
        raise BadRequest(f"unknown scope {scope!r}", code="commission.rule_invalid")
    if scope == "default":
        key = ""
    elif not key:
        raise BadRequest(f"a {scope} rule needs a key", code="commission.rule_invalid")
    validate_levels(levels)
    check_rule(levels, profile_of(await load_settings(tx)))
    conn = await tx.main()
    now = utcnow()
    latest = await conn.scalar(
        select(func.max(commission_rules.c.version)).where(
            commission_rules.c.scope == scope, commission_rules.c.scope_key == key
        )
    )
    rule = Rule(
        id=ids.next_id(0),
        scope=scope,
        key=key or "",
        version=int(latest or 0) + 1,
        levels=sorted(levels, key=lambda t: t.level),
        effective_from=effective_from or now,
        created_at=now,
        deactivated_at=None,
    )
    # The unique (scope, key, version) makes two concurrent saves of one scope fail one.
    await conn.execute(
        commission_rules.insert().values(
            id=rule.id,
            scope=rule.scope,
            scope_key=rule.key,
            version=rule.version,
            levels=orjson.dumps([t.__dict__ for t in rule.levels]).decode(),
            effective_from=rule.effective_from,
            created_at=now,
            deactivated_at=None,
        )
    )
    return rule


async def deactivate_rule(tx: Tx, rule_id: int) -> Rule:
    """Take a rule out of force from now on; orders paid before keep it. Repeating is a no-op."""
    conn = await tx.main()
    await conn.execute(
        update(commission_rules)
        .where(commission_rules.c.id == rule_id, commission_rules.c.deactivated_at.is_(None))
        .values(deactivated_at=utcnow())
    )
    row = (
        await conn.execute(select(commission_rules).where(commission_rules.c.id == rule_id))
    ).first()
    if row is None:
        raise NotFound(f"no rule {rule_id}", code="commission.rule_not_found")
    return _rule_of(row)


async def all_rules(conn: AsyncConnection) -> list[Rule]:
    rows = await conn.execute(select(commission_rules).order_by(commission_rules.c.id))
    return [_rule_of(row) for row in rows]


async def rules_not_deactivated(conn: AsyncConnection) -> list[Rule]:
    """Rules in force now or scheduled, as the compliance profile must allow them."""
    book = RuleBook(await all_rules(conn))
    return book.in_force_or_scheduled(utcnow())


class RuleBook:
    """Every rule version, to find the one in force for an item at a moment."""

    def __init__(self, rules: list[Rule]) -> None:
        self.by_scope: dict[tuple[str, str], list[Rule]] = {}
        for rule in rules:
            self.by_scope.setdefault((rule.scope, rule.key), []).append(rule)
        for versions in self.by_scope.values():
            versions.sort(key=lambda r: (r.effective_from, r.version))

    def scope_rule_at(self, scope: str, key: str, moment: datetime) -> Rule | None:
        current = None
        for rule in self.by_scope.get((scope, key), ()):
            if rule.effective_from <= moment:
                current = rule
            else:
                break
        if current is None:
            return None
        if current.deactivated_at is not None and current.deactivated_at <= moment:
            return None
        return current

    def rule_for_item(self, sku: str, category: str, moment: datetime) -> Rule | None:
        """The most specific rule in force at ``moment``: product > category > default."""
        return (
            self.scope_rule_at("product", sku, moment)
            or self.scope_rule_at("category", category, moment)
            or self.scope_rule_at("default", "", moment)
        )

    def in_force(self, moment: datetime) -> list[Rule]:
        found = []
        for scope, key in self.by_scope:
            rule = self.scope_rule_at(scope, key, moment)
            if rule is not None:
                found.append(rule)
        return sorted(found, key=lambda r: (SCOPES.index(r.scope), r.key))

    def in_force_or_scheduled(self, moment: datetime) -> list[Rule]:
        found = {rule.id: rule for rule in self.in_force(moment)}
        for versions in self.by_scope.values():
            for rule in versions:
                if rule.effective_from > moment and rule.deactivated_at is None:
                    found[rule.id] = rule
        return list(found.values())
