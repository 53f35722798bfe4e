"""Personal data of users at rest: phone, nickname and device id are sealed with AES-GCM
(libs/common/crypto.py) bound to the user's id and the field; the phone also gets a blind
index, so a platform or an admin can find users by phone without decrypting every row.

Rows written before migration 3 hold plaintext in the legacy columns. A background pass
(:func:`pii_worker`, in the service's worker process; or ``python -m services.user.pii``)
walks every shard in id order, in batches whose progress is kept in ``pii_passes``: it seals
legacy values, re-seals values sealed with an old key and re-indexes phones indexed with an
old index key. When it has finished for the keys in force, old keys may be removed.
docs/decisions/0505-pii-encryption-at-rest.md says why it is done this way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from weakref import WeakKeyDictionary

from prometheus_client import Counter
from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    DateTime,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    and_,
    select,
    update,
)

from libs.common.crypto import (
    BlindIndex,
    FieldCipher,
    Keyring,
    UndecryptableError,
    derive_dev_key,
    normalize_phone,
)
from libs.common.db.engine import Database, Tx
from libs.common.db.sql import upsert_replace
from libs.common.errors import BadRequest, TuikeError
from libs.common.ids import SHARD_COUNT
from libs.common.messaging.outbox import utcnow
from libs.common.runtime import Runtime
from services.user.fan_out import across_shards
from services.user.models import PII_FIELDS, SEALED_COLUMNS, users
from services.user.settings import UserDeploySettings

log = logging.getLogger("tuike.user.pii")

PII_UNREADABLE = Counter(
    "promoter_pii_unreadable_total",
    "Sealed personal fields that did not decrypt (tampered, copied or an unknown key)",
    ["field"],
)

pii_metadata = MetaData()
pii_passes = Table(
    "pii_passes",
    pii_metadata,
    Column("shard", Integer, primary_key=True, autoincrement=False),
    # "<encryption key id>:<index key id>": the keys this shard's pass seals with.
    Column("key_ids", String(32), nullable=False),
    Column("last_id", BigInteger, nullable=False, default=0),
    Column("status", String(16), nullable=False),  # running | done
    Column("rows_changed", BigInteger, nullable=False, default=0),
    Column("rows_unreadable", BigInteger, nullable=False, default=0),
    Column("updated_at", DateTime, nullable=False),
)


class PiiUnreadable(TuikeError):
    """A sealed field of a user does not decrypt: a server-side integrity problem (a row
    edited or copied in the database, or a key missing from the configuration). Shown as a
    clean 500 that names the user and field, never as a wrong value."""

    code = "user.pii_unreadable"
    status = 500


@dataclass(frozen=True)
class UserPii:
    cipher: FieldCipher
    phone_index: BlindIndex
    region: str = "CN"

    @classmethod
    def from_keys(
        cls,
        encryption: Keyring,
        index: Keyring,
        region: str = "CN",
    ) -> UserPii:
        return cls(
            FieldCipher(encryption, context="user"),
            BlindIndex(index, context="user.phone"),
            region,
        )

    @classmethod
    def from_settings(cls, settings: UserDeploySettings) -> UserPii:
        """Keys from ``TUIKE_PII_ENCRYPTION_KEY`` / ``TUIKE_PII_INDEX_KEY`` (and their old
        keys); unset = development keys derived from the bootstrap admin key (stable across
        restarts of ``make run``), loudly, or a refusal when ``TUIKE_PII_KEYS_REQUIRED``."""
        missing = [
            name
            for name, value in (
                ("TUIKE_PII_ENCRYPTION_KEY", settings.pii_encryption_key),
                ("TUIKE_PII_INDEX_KEY", settings.pii_index_key),
            )
            if not value
        ]
        if missing and settings.pii_keys_required:
            raise RuntimeError(f"{' and '.join(missing)} must be set (TUIKE_PII_KEYS_REQUIRED)")
        secret = settings.bootstrap_admin_key or "tuike-local"
        if missing:
            log.warning(
                "%s unset: personal data is sealed with a DEVELOPMENT key derived from the "
                "bootstrap admin key; set real keys in production (docs/security.md)",
                " and ".join(missing),
            )

        def keyring(current: str | None, old: str, purpose: str, name: str) -> Keyring:
            if current:
                return Keyring.from_settings(current, old, name=name)
            return Keyring(derive_dev_key(secret, purpose), [])

        return cls.from_keys(
            keyring(
                settings.pii_encryption_key,
                settings.pii_encryption_old_keys,
                "user-pii-encryption",
                "TUIKE_PII_ENCRYPTION_KEY",
            ),
            keyring(
                settings.pii_index_key,
                settings.pii_index_old_keys,
                "user-pii-index",
                "TUIKE_PII_INDEX_KEY",
            ),
            settings.phone_default_region,
        )

    @property
    def key_ids(self) -> str:
        return f"{self.cipher.keyring.current_id}:{self.phone_index.keyring.current_id}"

    def index_phone(self, phone: str | None) -> str | None:
        """The phone's blind index; None for no phone or one that is not a phone number
        (such a user cannot be found by phone, but is still created)."""
        if not phone:
            return None
        try:
            return self.phone_index.compute(normalize_phone(phone, self.region))
        except ValueError:
            return None

    def seal(self, user_id: int, plain: Mapping[str, str | None]) -> dict[str, Any]:
        """The column values that store ``plain`` (phone, nickname, device id) for a user:
        sealed columns and the phone index; the legacy plaintext columns emptied."""
        values: dict[str, Any] = {}
        for name in PII_FIELDS:
            value = plain.get(name)
            values[name] = None
            values[SEALED_COLUMNS[name]] = (
                None if value is None else self.cipher.encrypt(value, row_id=user_id, field=name)
            )
        values["phone_index"] = self.index_phone(plain.get("phone"))
        return values

    def open_field(self, row: Mapping[Any, Any], name: str) -> str | None:
        sealed = row.get(SEALED_COLUMNS[name])
        if sealed is None:
            # A row the background pass has not sealed yet keeps its legacy plaintext.
            legacy: str | None = row.get(name)
            return legacy
        try:
            return self.cipher.decrypt(sealed, row_id=row["id"], field=name)
        except UndecryptableError as exc:
            PII_UNREADABLE.labels(name).inc()
            log.error("user %s: stored %s does not decrypt: %s", row["id"], name, exc)
            raise PiiUnreadable(
                f"the stored {name} of user {row['id']} cannot be read: {exc}",
                details={"user_id": str(row["id"]), "field": name, "key_id": exc.key_id},
            ) from None

    def open(self, row: Mapping[Any, Any]) -> dict[str, Any]:
        """A user as the API shows it: personal fields in clear (masking is the caller's
        business), the storage columns left out."""
        user = {
            key: value
            for key, value in row.items()
            if key not in SEALED_COLUMNS.values() and key != "phone_index"
        }
        for name in PII_FIELDS:
            user[name] = self.open_field(row, name)
        return user


_BY_RUNTIME: WeakKeyDictionary[Runtime, UserPii] = WeakKeyDictionary()


def pii_of(runtime: Runtime) -> UserPii:
    """This process's keys, built once from its deploy settings."""
    pii = _BY_RUNTIME.get(runtime)
    if pii is None:
        settings = runtime.settings
        if not isinstance(settings, UserDeploySettings):
            settings = UserDeploySettings(**settings.model_dump())
        pii = _BY_RUNTIME[runtime] = UserPii.from_settings(settings)
    return pii


_DEFAULT: list[UserPii] = []


def default_pii() -> UserPii:
    """The keys of the environment, for callers that have no runtime (bulk import)."""
    if not _DEFAULT:
        _DEFAULT.append(UserPii.from_settings(UserDeploySettings()))
    return _DEFAULT[0]


# -- lookup by phone ---------------------------------------------------------------------
async def find_by_phone(
    db: Database, pii: UserPii, phone: str, *, platform: str | None, limit: int = 100
) -> list[dict[str, Any]]:
    """Users whose phone is ``phone`` in any formatting (``+86 138-1234-1234`` finds
    ``13812341234``), of ``platform`` if given, oldest first, at most ``limit``.

    The blind index narrows the search to a few rows on each shard; each hit is decrypted
    and compared, so an index collision never returns someone else. Rows written before
    migration 3 and not yet sealed by the background pass have no index yet."""
    try:
        wanted = normalize_phone(phone, pii.region)
    except ValueError:
        raise BadRequest(f"{phone!r} is not a phone number", code="user.invalid_phone") from None
    candidates = pii.phone_index.candidates(wanted)

    def matches_in(shard: int) -> Select[Any]:
        table = users.for_shard(shard)
        condition: ColumnElement[bool] = table.c.phone_index.in_(candidates)
        if platform is not None:
            condition = and_(condition, table.c.platform == platform)
        return select(table).where(condition).order_by(table.c.id).limit(limit)

    found = await across_shards(db, matches_in, "id")
    matches = []
    for row in found:
        user = pii.open(row)
        if user["phone"] and pii.index_phone(user["phone"]) in candidates:
            matches.append(user)
    return matches[:limit]


# -- the background pass -----------------------------------------------------------------
@dataclass
class PassReport:
    changed: int = 0
    unreadable: int = 0
    shards_done: list[int] = field(default_factory=list)


def _refresh(pii: UserPii, row: Mapping[Any, Any]) -> tuple[dict[str, Any], bool]:
    """New column values for a row that holds legacy plaintext, a value sealed with an old
    key or a phone indexed with an old key ({} if it is current), and whether a sealed value
    could not be read (then the row is left as it is, for an operator to look at)."""
    plain: dict[str, str | None] = {}
    stale = False
    for name in PII_FIELDS:
        sealed, legacy = row[SEALED_COLUMNS[name]], row[name]
        stale = stale or legacy is not None
        stale = stale or (sealed is not None and not pii.cipher.is_current(sealed))
        try:
            plain[name] = pii.open_field(row, name)
        except PiiUnreadable:
            return {}, True
    index = row["phone_index"]
    stale = stale or (index is not None and not pii.phone_index.is_current(index))
    stale = stale or (index is None and pii.index_phone(plain["phone"]) is not None)
    if not stale:
        return {}, False
    return pii.seal(int(row["id"]), plain), False


async def run_pass_batch(db: Database, pii: UserPii, batch_size: int = 500) -> PassReport | None:
    """One batch of the pass on the first shard not done for the keys in force; None when
    every shard is done. Each row changes only if it still holds what was read (a write or
    another replica's pass in between wins), so replicas may run the pass at once."""
    key_ids = pii.key_ids
    async with db.read(may_lag=False) as main:
        progress = {int(row.shard): row for row in (await main.execute(select(pii_passes))).all()}
    pending = [
        shard
        for shard in range(SHARD_COUNT)
        if shard not in progress
        or progress[shard].key_ids != key_ids
        or progress[shard].status != "done"
    ]
    if not pending:
        return None
    shard = pending[0]
    known = progress.get(shard)
    after = int(known.last_id) if known is not None and known.key_ids == key_ids else 0
    report = PassReport()

    async def work(tx: Tx) -> None:
        conn = await tx.shard(shard)
        table = users.for_shard(shard)
        rows = (
            (
                await conn.execute(
                    select(table).where(table.c.id > after).order_by(table.c.id).limit(batch_size)
                )
            )
            .mappings()
            .all()
        )
        report.changed = report.unreadable = 0  # a retried transaction starts over
        report.shards_done = []
        for row in rows:
            values, unreadable = _refresh(pii, row)
            report.unreadable += int(unreadable)
            if not values:
                continue
            unchanged = and_(
                *(table.c[name].is_not_distinct_from(row[name]) for name in values),
            )
            result = await conn.execute(
                update(table).where(table.c.id == row["id"], unchanged).values(**values)
            )
            report.changed += max(int(result.rowcount or 0), 0)
        done = len(rows) < batch_size
        before = known if known is not None and known.key_ids == key_ids else None
        await upsert_replace(
            await tx.main(),
            pii_passes,
            [
                {
                    "shard": shard,
                    "key_ids": key_ids,
                    "last_id": int(rows[-1]["id"]) if rows else after,
                    "status": "done" if done else "running",
                    "rows_changed": (int(before.rows_changed) if before else 0) + report.changed,
                    "rows_unreadable": (int(before.rows_unreadable) if before else 0)
                    + report.unreadable,
                    "updated_at": utcnow(),
                }
            ],
            ["shard"],
            ["key_ids", "last_id", "status", "rows_changed", "rows_unreadable", "updated_at"],
        )
        if done:
            report.shards_done.append(shard)

    await db.run(work)
    return report


async def run_pass(db: Database, pii: UserPii, batch_size: int = 500) -> PassReport:
    """The whole pass (resumes where a previous run stopped)."""
    total = PassReport()
    while (report := await run_pass_batch(db, pii, batch_size)) is not None:
        total.changed += report.changed
        total.unreadable += report.unreadable
        total.shards_done += report.shards_done
    return total


async def pii_worker(
    db: Database, pii: UserPii, stop: asyncio.Event, batch_size: int = 500
) -> None:
    """Background task: run the pass to its end, then return (new rows are always written
    with the keys in force, so nothing goes stale until the keys change and the process
    restarts)."""
    total = PassReport()
    while not stop.is_set():
        report = await run_pass_batch(db, pii, batch_size)
        if report is None:
            break
        total.changed += report.changed
        total.unreadable += report.unreadable
        await asyncio.sleep(0)  # let request handlers in between batches
    if total.changed or total.unreadable:
        log.info(
            "personal data pass: %s rows sealed or re-keyed, %s unreadable",
            total.changed,
            total.unreadable,
        )


async def pass_status(db: Database, pii: UserPii) -> dict[str, Any]:
    async with db.read(may_lag=False) as main:
        rows = (await main.execute(select(pii_passes).order_by(pii_passes.c.shard))).mappings()
        shards = [dict(row) for row in rows]
    current = [s for s in shards if s["key_ids"] == pii.key_ids and s["status"] == "done"]
    return {
        "key_ids": pii.key_ids,
        "finished": len(current) == SHARD_COUNT,
        "rows_changed": sum(int(s["rows_changed"]) for s in current),
        "rows_unreadable": sum(int(s["rows_unreadable"]) for s in current),
    }


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    settings = UserDeploySettings(service_name="user")
    pii = UserPii.from_settings(settings)
    db = Database(settings.database_url, settings.replica_url, settings.shard_map)
    try:
        if args.command == "run":
            await run_pass(db, pii, args.batch_size or settings.pii_backfill_batch_size)
        return await pass_status(db, pii)
    finally:
        await db.dispose()


def main(argv: list[str] | None = None) -> int:
    """``python -m services.user.pii [run|status]``: run the pass to its end (after a
    migration or a key rotation, instead of waiting for the worker), or show whether it has
    finished for the keys in force (then old keys may be removed)."""
    parser = argparse.ArgumentParser(prog="python -m services.user.pii")
    parser.add_argument("command", nargs="?", default="status", choices=["run", "status"])
    parser.add_argument("--batch-size", type=int, default=None)
    status = asyncio.run(_main(parser.parse_args(argv)))
    print(json.dumps(status))
    # Non-zero until old keys may be removed: not finished, or rows that need a look.
    return 0 if status["finished"] and not status["rows_unreadable"] else 1


if __name__ == "__main__":
    sys.exit(main())
