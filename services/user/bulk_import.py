"""Bulk import for a platform that adopts Tuike with an existing community:
``python -m services.user.bulk_import FILE [--platform P] [--batch-size N]``.

FILE is JSONL (one object a line) or CSV (a header row) with ``external_id`` and optionally
``platform``, ``parent_external_id``, ``nickname``, ``phone``, ``device_id``, ``promoter``
(true/1/yes: an approved promoter). Rows may come in any order (children before parents).

Two passes, each in batches that commit their progress with their effects (``bulk_imports``),
so an interrupted import resumes where it stopped and a finished one is a no-op:
1. users (idempotent on ``(platform, external_id)``) and promoter grants;
2. parent links, parents first (ordered by depth in the file's own forest), through the same
   ``attach`` as a bind, with source ``import``. Rows that cannot be applied are refused with
   a reason (``row.invalid``, ``parent.not_found``, ``relation.cycle``, ``relation.self_bind``,
   ``relation.already_bound``) and listed in ``FILE.refused.jsonl``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select, update

from libs.common.db.engine import Database, Tx
from libs.common.db.global_index import lookup
from libs.common.db.migrations import migrate
from libs.common.db.sql import insert_ignore
from libs.common.errors import TuikeError
from libs.common.ids import IdGenerator, NodeLease, shard_of
from libs.common.messaging.outbox import utcnow
from libs.common.redis import connect
from services.user import users
from services.user.binding import attach
from services.user.migrations import MIGRATIONS
from services.user.models import bulk_imports
from services.user.pii import UserPii, default_pii
from services.user.promoters import become_promoter
from services.user.relations import load_relation
from services.user.schemas import CreateUser
from services.user.settings import UserDeploySettings, UserSettings

_TRUE = {"1", "true", "yes", "y"}


@dataclass
class Row:
    line: int
    external_id: str
    platform: str
    parent_external_id: str | None
    promoter: bool
    fields: dict[str, Any]


@dataclass
class ImportReport:
    users_created: int = 0
    links_created: int = 0
    refused: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False


def _read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(line number, raw row or None when the line cannot be parsed)."""
    with path.open(encoding="utf-8", newline="") as handle:
        first = handle.readline()
        handle.seek(0)
        if first.lstrip().startswith("{"):
            for number, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    value = json.loads(text)
                except json.JSONDecodeError:
                    yield number, None
                    continue
                yield number, value if isinstance(value, dict) else None
        else:
            for number, record in enumerate(csv.DictReader(handle), start=2):
                yield number, {k: v for k, v in record.items() if v not in (None, "")}


def _parse(line: int, raw: dict[str, Any] | None, platform: str) -> Row | str:
    if raw is None:
        return "the line is not a JSON object"
    parent = raw.get("parent_external_id")
    fields: dict[str, str] = {
        k: str(raw[k]) for k in ("external_id", "nickname", "phone", "device_id") if k in raw
    }
    fields["platform"] = str(raw.get("platform") or platform)
    try:
        checked = CreateUser.model_validate(fields)
    except ValidationError as exc:
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return Row(
        line=line,
        external_id=checked.external_id,
        platform=checked.platform,
        parent_external_id=str(parent) if parent not in (None, "") else None,
        promoter=str(raw.get("promoter", "")).strip().lower() in _TRUE,
        fields=checked.model_dump(),
    )


def _source_key(path: Path) -> str:
    stat = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return f"import:{digest.hexdigest()[:40]}"


async def _progress(db: Database, source: str) -> dict[str, Any]:
    async def work(tx: Tx) -> dict[str, Any]:
        main = await tx.main()
        await insert_ignore(
            main,
            bulk_imports,
            [
                {
                    "source": source,
                    "lines_done": 0,
                    "imported": 0,
                    "refused": 0,
                    "status": "users",
                    "updated_at": utcnow(),
                }
            ],
        )
        row = (
            (await main.execute(select(bulk_imports).where(bulk_imports.c.source == source)))
            .mappings()
            .one()
        )
        return dict(row)

    return await db.run(work)


async def _advance(
    tx: Tx, source: str, done: int, imported: int, refused: int, status: str
) -> None:
    await (await tx.main()).execute(
        update(bulk_imports)
        .where(bulk_imports.c.source == source)
        .values(
            lines_done=done,
            imported=bulk_imports.c.imported + imported,
            refused=bulk_imports.c.refused + refused,
            status=status,
            updated_at=utcnow(),
        )
    )


def _link_order(rows: list[Row]) -> tuple[list[Row], list[Row]]:
    """Rows with a parent, parents before children (by depth within the file), and the rows
    whose parent chain inside the file loops."""
    by_key = {(r.platform, r.external_id): r for r in rows}
    depth: dict[tuple[str, str], int] = {}
    looping: set[tuple[str, str]] = set()
    for row in rows:
        key = (row.platform, row.external_id)
        chain: list[tuple[str, str]] = []
        seen: set[tuple[str, str]] = set()
        current: tuple[str, str] | None = key
        while current is not None and current not in depth and current not in looping:
            if current in seen:
                looping.update(chain[chain.index(current) :])
                break
            seen.add(current)
            chain.append(current)
            parent = by_key.get(current)
            current = (
                (parent.platform, parent.parent_external_id)
                if parent is not None and parent.parent_external_id is not None
                else None
            )
        base = depth.get(current, 0) if current is not None else 0
        for item in reversed(chain):
            if item in looping:
                continue
            base += 1
            depth[item] = base
    linked = [r for r in rows if r.parent_external_id is not None]
    ordered = sorted(
        (r for r in linked if (r.platform, r.external_id) not in looping),
        key=lambda r: (depth[(r.platform, r.external_id)], r.line),
    )
    return ordered, [r for r in linked if (r.platform, r.external_id) in looping]


async def import_file(
    db: Database,
    ids: IdGenerator,
    path: Path,
    *,
    platform: str = "default",
    batch_size: int = 500,
    max_batches: int | None = None,
    pii: UserPii | None = None,
) -> ImportReport:
    """Import (or resume importing) ``path``; ``max_batches`` stops early (for tests of
    resumption and for operators who want to import in slices). Personal fields are stored
    sealed with ``pii``'s keys (default: those of the environment), as the API stores them."""
    pii = pii or default_pii()
    report = ImportReport()
    source = _source_key(path)
    progress = await _progress(db, source)
    parsed: list[Row] = []
    for line, raw in _read_rows(path):
        outcome = _parse(line, raw, platform)
        if isinstance(outcome, str):
            report.refused.append({"line": line, "code": "row.invalid", "reason": outcome})
        else:
            parsed.append(outcome)
    batches = 0

    def budget_left() -> bool:
        return max_batches is None or batches < max_batches

    if progress["status"] == "users":
        done = int(progress["lines_done"])
        while done < len(parsed) and budget_left():
            chunk = parsed[done : done + batch_size]

            async def create(tx: Tx, chunk: list[Row] = chunk, end: int = done) -> int:
                created = 0
                settings = UserSettings()
                for row in chunk:
                    user, fresh = await users.create_user(tx, ids, users.NewUser(**row.fields), pii)
                    created += int(fresh)
                    if row.promoter:
                        await become_promoter(tx, int(user["id"]), settings, by_admin=True)
                last = end + len(chunk)
                await _advance(
                    tx, source, last, created, 0, "users" if last < len(parsed) else "links"
                )
                return created

            report.users_created += await db.run(create)
            done += len(chunk)
            batches += 1
        if done < len(parsed):
            return report
        progress["lines_done"] = 0

    ordered, looping = _link_order(parsed)
    for row in looping:
        report.refused.append(
            {
                "line": row.line,
                "external_id": row.external_id,
                "code": "relation.cycle",
                "reason": "the parent links in the file form a loop",
            }
        )
    done = int(progress["lines_done"]) if progress["status"] == "links" else 0
    if progress["status"] == "done":
        done = len(ordered)
    while done < len(ordered) and budget_left():
        chunk = ordered[done : done + batch_size]

        async def link(
            tx: Tx, chunk: list[Row] = chunk, end: int = done
        ) -> tuple[int, list[dict[str, Any]]]:
            linked, refusals = 0, []
            for row in chunk:
                outcome = await _link_one(tx, ids, row)
                if outcome is None:
                    linked += 1
                elif isinstance(outcome, dict):
                    refusals.append(outcome)
            last = end + len(chunk)
            await _advance(
                tx,
                source,
                last,
                linked,
                len(refusals),
                "links" if last < len(ordered) else "done",
            )
            return linked, refusals

        linked, refusals = await db.run(link)
        report.links_created += linked
        for refusal in refusals:
            report.refused.append(refusal)
        done += len(chunk)
        batches += 1
    report.finished = done >= len(ordered)
    if report.finished and not ordered:

        async def finish(tx: Tx) -> None:
            await _advance(tx, source, 0, 0, 0, "done")

        await db.run(finish)
    return report


async def _link_one(tx: Tx, ids: IdGenerator, row: Row) -> dict[str, Any] | str | None:
    """None = linked; "unchanged" = already under that parent; else the refusal."""
    main = await tx.main()
    user_id = await lookup(main, users.USER_INDEX, f"{row.platform}:{row.external_id}")
    parent_id = await lookup(main, users.USER_INDEX, f"{row.platform}:{row.parent_external_id}")

    def refusal(code: str, reason: str) -> dict[str, Any]:
        return {"line": row.line, "external_id": row.external_id, "code": code, "reason": reason}

    if user_id is None:  # pragma: no cover - pass 1 created it
        return refusal("user.not_found", "the user was not created")
    if parent_id is None:
        return refusal("parent.not_found", f"no user {row.parent_external_id!r} on the platform")
    current = await load_relation(await tx.shard(shard_of(user_id)), user_id)
    if current is not None and current["parent_id"] == parent_id:
        return "unchanged"
    if current is not None:
        return refusal("relation.already_bound", "the user is already bound to another parent")
    try:
        await attach(tx, ids, user_id, parent_id, source="import", kind="import")
    except TuikeError as exc:
        return refusal(exc.code, exc.message)
    return None


async def _main(args: argparse.Namespace) -> ImportReport:
    settings = UserDeploySettings(service_name="user")
    db = Database(settings.database_url, settings.replica_url, settings.shard_map)
    redis = None
    lease = None
    try:
        await migrate(db, MIGRATIONS)
        if settings.node_id is not None:
            ids = IdGenerator(settings.node_id)
        else:
            redis = connect(settings.redis_url)
            lease = NodeLease(redis, settings.redis_key_prefix)
            ids = IdGenerator(await lease.acquire())
        return await import_file(
            db,
            ids,
            Path(args.file),
            platform=args.platform,
            batch_size=args.batch_size,
            pii=UserPii.from_settings(settings),
        )
    finally:
        if lease is not None:
            await lease.release()
        if redis is not None:
            await redis.aclose()
        await db.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.user.bulk_import")
    parser.add_argument("file")
    parser.add_argument("--platform", default="default")
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args(argv)
    report = asyncio.run(_main(args))
    refused_path = Path(f"{args.file}.refused.jsonl")
    with refused_path.open("w", encoding="utf-8") as out:
        for refusal in report.refused:
            out.write(json.dumps(refusal, ensure_ascii=False) + "\n")
    print(
        json.dumps(
            {
                "users_created": report.users_created,
                "links_created": report.links_created,
                "refused": len(report.refused),
                "refused_file": os.fspath(refused_path),
                "finished": report.finished,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
