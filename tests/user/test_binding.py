"""Binding by promoter code: the four modes, every refusal, history, events, team counts."""

from __future__ import annotations

import asyncio
import itertools
from datetime import timedelta

import pytest
from sqlalchemy import func, inspect, select, text, update
from sqlalchemy.engine import Connection

from libs.common.db.engine import Database, Tx
from libs.common.db.migrations import migrate
from libs.common.errors import TuikeError
from libs.common.events import UserBound
from libs.common.ids import SHARD_COUNT, shard_of
from libs.common.messaging.envelope import USER_EVENTS, Envelope
from libs.common.messaging.outbox import PART_MIN_LENGTH, outbox, outbox_part
from services.user import paths, promoters, relations
from services.user.history import get_history
from services.user.migrations import MIGRATIONS
from services.user.models import SHARDED, bind_history, users
from services.user.models import relations as relations_table
from services.user.team import TEAM_EVENT_TYPES, apply_team_changes
from tests.user.conftest import UserWorld


async def _refused(world: UserWorld, user_id: int, code: str) -> TuikeError:
    with pytest.raises(TuikeError) as refused:
        await world.bind(user_id, code)
    return refused.value


async def _history_count(world: UserWorld) -> int:
    total = 0
    async with world.db.read(may_lag=False) as conn:
        for table in bind_history.tables:
            total += int(await conn.scalar(select(func.count()).select_from(table)) or 0)
    return total


async def test_bind_builds_the_path_and_levels(world: UserWorld) -> None:
    root, root_code = await world.promoter("root")
    mid, mid_code = await world.promoter("mid")
    buyer = await world.user("buyer")
    first = await world.bind(mid, root_code)
    assert first.changed
    assert first.relation["parent_id"] == root and first.relation["level"] == 2
    bound = (await world.bind(buyer, mid_code)).relation
    assert bound["parent_id"] == mid and bound["root_id"] == root and bound["level"] == 3
    assert bound["path"] == f",{root},{mid},{buyer},"
    assert bound["bind_source"] == "code" and bound["expires_at"] is None
    assert await relations.get_ancestors(world.db, buyer, 10) == [
        mid,
        root,
    ]
    assert (await relations.get_team(world.db, root))["level2_count"] == 1
    assert (await relations.get_team(world.db, mid))["level1_count"] == 1
    event = (await world.events("user.bound"))[-1]
    assert event["key"] == str(buyer)
    assert event["version"] == 2 and "ancestor_ids" not in event["data"]
    assert event["data"]["ancestor_path"] == paths.path_of([root, mid])
    assert UserBound.model_validate(event["data"]).ancestors() == [mid, root]
    assert event["data"]["level"] == 3
    history = await get_history(world.db, buyer)
    assert [(h["kind"], h["parent_id"]) for h in history] == [("bind", mid)]


async def test_whole_team_counts_take_bind_events_of_either_version(world: UserWorld) -> None:
    """Version 2 events (ancestors as compact paths) and the version 1 events written before
    (lists of decimal ids, still in outboxes and on the broker after an upgrade) count the
    same, apart and mixed in one batch."""
    root, root_code = await world.promoter("root")
    mid, mid_code = await world.promoter("mid")
    other, other_code = await world.promoter("other")
    buyer = await world.user("buyer")
    await world.configure(bind_mode="override")
    await world.bind(mid, root_code)
    await world.bind(buyer, mid_code)
    await world.bind(buyer, other_code)  # a rebind: mid and root lose the buyer
    written = [
        Envelope.model_validate(e) for e in await world.events() if e["type"] in TEAM_EVENT_TYPES
    ]
    assert [e.version for e in written] == [2, 2, 2]
    older = []
    for event in written:
        data = UserBound.model_validate(event.data)
        v1 = {
            **{k: v for k, v in event.data.items() if not k.endswith("ancestor_path")},
            "ancestor_ids": [str(a) for a in data.ancestors()],
            "previous_ancestor_ids": [str(a) for a in data.previous_ancestors()],
        }
        older.append(event.model_copy(update={"version": 1, "data": v1}))

    async def apply(tx: Tx, events: list[Envelope]) -> None:
        await apply_team_changes(tx, events)

    # One batch each, then both together (equal chains are summed before they are read: the
    # buyer's bind and its rebind's previous chain cancel out).
    for events in (written, older, written + older):
        await world.run(lambda tx, events=events: apply(tx, events))
    sizes = {p: (await relations.get_team(world.db, p))["team_size"] for p in (root, mid, other)}
    # root: mid (+4); the buyer came and went. mid: the buyer came and went. other: the buyer.
    assert sizes == {root: 4, mid: 0, other: 4}


async def test_refusals_have_distinct_codes_and_write_nothing(world: UserWorld) -> None:
    root, root_code = await world.promoter("root")
    child, child_code = await world.promoter("child")
    other, other_code = await world.promoter("other")
    await world.bind(child, root_code)
    before_history, before_events = await _history_count(world), len(await world.events())

    assert (await _refused(world, root, root_code)).code == "relation.self_bind"
    assert (await _refused(world, root, child_code)).code == "relation.cycle"
    refusal = await _refused(world, child, other_code)
    assert (refusal.status, refusal.code) == (409, "relation.already_bound")
    unknown = await _refused(world, child, "ZZZZZZZZ")
    assert (unknown.status, unknown.code) == (404, "promoter.code_not_found")
    assert (await _refused(world, child, "bad code!")).code == "promoter.code_not_found"
    assert (await _refused(world, 424242, root_code)).code == "user.not_found"

    async def disable(tx: Tx) -> dict:  # type: ignore[type-arg]
        return await promoters.change_promoter(tx, other, "disable")

    await world.run(disable)
    newcomer = await world.user("newcomer")
    assert (await _refused(world, newcomer, other_code)).code == "promoter.disabled"
    assert await _history_count(world) == before_history
    assert len(await world.events()) == before_events + 2
    # Only promoter.disabled and the newcomer's user.registered were written.
    assert (await relations.get_relation(world.db, newcomer, _now()))["parent_id"] is None


def _now():  # type: ignore[no-untyped-def]
    from libs.common.messaging.outbox import utcnow

    return utcnow()


async def test_a_cycle_at_any_depth_is_refused(world: UserWorld) -> None:
    chain = [await world.promoter(f"c{n}") for n in range(12)]
    for (child, _), (_, parent_code) in zip(chain[1:], chain, strict=False):
        await world.bind(child, parent_code)
    top, _ = chain[0]
    assert (await _refused(world, top, chain[-1][1])).code == "relation.cycle"


async def test_binding_again_under_the_same_parent_is_a_no_op(world: UserWorld) -> None:
    _, code = await world.promoter("p")
    buyer = await world.user("b")
    await world.bind(buyer, code)
    again = await world.bind(buyer, code)
    assert not again.changed
    assert len(await world.events("user.bound")) == 1


async def test_concurrent_binds_of_one_user_exactly_one_wins(world: UserWorld) -> None:
    codes = [(await world.promoter(f"p{n}"))[1] for n in range(4)]
    buyer = await world.user("contested")
    outcomes = await asyncio.gather(
        *(world.bind(buyer, code) for code in codes), return_exceptions=True
    )
    wins = [o for o in outcomes if not isinstance(o, BaseException)]
    losses = [o for o in outcomes if isinstance(o, TuikeError)]
    assert len(wins) == 1 and len(losses) == 3
    assert {loss.code for loss in losses} <= {"relation.already_bound", "relation.changed"}
    assert len(await get_history(world.db, buyer)) == 1
    assert len(await world.events("user.bound")) == 1


async def test_override_mode_rebinds_and_moves_the_level_counts(world: UserWorld) -> None:
    await world.configure(bind_mode="override")
    first, first_code = await world.promoter("first")
    second, second_code = await world.promoter("second")
    buyer = await world.user("buyer")
    await world.bind(buyer, first_code)
    rebound = await world.bind(buyer, second_code)
    assert rebound.changed and rebound.relation["parent_id"] == second
    assert (await relations.get_team(world.db, first))["level1_count"] == 0
    assert (await relations.get_team(world.db, second))["level1_count"] == 1
    event = (await world.events("user.rebound"))[0]
    assert event["data"]["previous_parent_id"] == str(first)
    assert event["data"]["previous_ancestor_path"] == paths.path_of([first])
    assert UserBound.model_validate(event["data"]).previous_ancestors() == [first]
    kinds = [h["kind"] for h in await get_history(world.db, buyer)]
    assert kinds == ["rebind", "bind"]


async def test_register_only_mode_binds_new_users_only(world: UserWorld) -> None:
    await world.configure(bind_mode="register_only", register_window_minutes=60)
    _, code = await world.promoter("p")
    fresh = await world.user("fresh")
    old = await world.user("old")

    async def age(tx: Tx) -> None:
        table = users.for_id(old)
        await (await tx.shard(shard_of(old))).execute(
            update(table).where(table.c.id == old).values(created_at=_now() - timedelta(minutes=61))
        )

    await world.run(age)
    assert (await world.bind(fresh, code)).changed
    refusal = await _refused(world, old, code)
    assert (refusal.status, refusal.code) == (409, "relation.register_window_closed")


async def test_expiring_mode_lets_an_expired_bind_be_replaced(world: UserWorld) -> None:
    await world.configure(bind_mode="expiring", bind_ttl_days=7)
    first, first_code = await world.promoter("first")
    second, second_code = await world.promoter("second")
    buyer = await world.user("buyer")
    bound = (await world.bind(buyer, first_code)).relation
    assert bound["expires_at"] - bound["bound_at"] == timedelta(days=7)
    assert (await _refused(world, buyer, second_code)).code == "relation.already_bound"

    async def expire(tx: Tx) -> None:
        from services.user.models import relations as relation_tables

        table = relation_tables.for_id(buyer)
        await (await tx.shard(shard_of(buyer))).execute(
            update(table)
            .where(table.c.user_id == buyer)
            .values(expires_at=_now() - timedelta(seconds=1))
        )

    await world.run(expire)
    assert not (await relations.get_relation(world.db, buyer, _now()))["active"]
    rebound = await world.bind(buyer, second_code)
    assert rebound.relation["parent_id"] == second and rebound.relation["active"]
    assert (await relations.get_team(world.db, first))["level1_count"] == 0


async def test_first_bind_of_a_promoter_with_a_team_carries_the_team(world: UserWorld) -> None:
    top, top_code = await world.promoter("top")
    lead, lead_code = await world.promoter("lead")
    member, member_code = await world.promoter("member")
    buyer = await world.user("buyer")
    await world.bind(member, lead_code)
    await world.bind(buyer, member_code)
    # lead (a root with a two-level team) now binds under top.
    await world.bind(lead, top_code)
    team = await relations.get_team(world.db, top)
    assert (team["level1_count"], team["level2_count"], team["level3_count"]) == (1, 1, 1)
    # Ancestors are right at once, before the move job rewrote the stored paths.
    assert await relations.get_ancestors(world.db, buyer, 5) == [
        member,
        lead,
        top,
    ]
    await world.finish_moves()
    relation = await relations.get_relation(world.db, buyer, _now())
    assert relation["root_id"] == top and relation["level"] == 4


async def test_moving_a_subtree_deeper_than_the_indexed_head_of_paths(world: UserWorld) -> None:
    """Subtree scans find rows by the first 255 characters of their path: below ~18 levels
    every path of a chain shares those, and only the whole path decides what moves."""
    chain = [await world.promoter(f"deep-{i}") for i in range(30)]
    for (_, parent_code), (child, _) in itertools.pairwise(chain):
        await world.bind(child, parent_code)
    # Two sibling subtrees at depth 30, both past the head: only the moved one changes.
    moved, moved_code = await world.promoter("moved")
    stays, stays_code = await world.promoter("stays")
    await world.bind(moved, chain[-1][1])
    await world.bind(stays, chain[-1][1])
    below_moved = [await world.user(f"below-moved-{i}") for i in range(5)]
    below_stays = [await world.user(f"below-stays-{i}") for i in range(5)]
    for user_id in below_moved:
        await world.bind(user_id, moved_code)
    for user_id in below_stays:
        await world.bind(user_id, stays_code)
    _, old_path = await relations.read_path(world.db, below_moved[0])
    assert len(old_path) > 255

    new_parent = chain[2][0]
    await world.move(moved, new_parent)
    assert await world.finish_moves(batch_size=2) >= 1
    async with world.db.read(may_lag=False) as conn:
        for user_id in below_moved:
            row = await relations.load_relation(conn, user_id)
            assert row is not None
            expected = [c for c, _ in chain[:3]] + [moved, user_id]
            assert paths.ids_of(row["path"]) == expected
            assert row["level"] == 5 and row["root_id"] == chain[0][0]
        for user_id in below_stays:
            row = await relations.load_relation(conn, user_id)
            assert row is not None
            assert paths.ids_of(row["path"]) == [c for c, _ in chain] + [stays, user_id]
            assert row["level"] == 32


async def test_binds_under_one_deep_parent_store_its_ancestors_once(world: UserWorld) -> None:
    """Every bind under a parent carries the parent's ancestors: past PART_MIN_LENGTH
    characters the outbox keeps them once, not once per event, and the events read back
    whole (decision 0805)."""
    await world.configure(bind_mode="override")
    chain = [await world.promoter(f"deep-{i}") for i in range(90)]
    for (_, parent_code), (child, _) in itertools.pairwise(chain):
        await world.bind(child, parent_code)
    (tip, tip_code), (above, above_code) = chain[-1], chain[-2]
    _, tip_path = await relations.read_path(world.db, tip)
    _, above_path = await relations.read_path(world.db, above)
    assert len(above_path) >= PART_MIN_LENGTH
    async with world.db.read(may_lag=False) as conn:
        parts_before = int(await conn.scalar(select(func.count()).select_from(outbox_part)) or 0)

    buyers = [await world.user(f"buyer-{i}") for i in range(4)]
    for buyer in buyers:
        await world.bind(buyer, tip_code)
    await world.bind(buyers[0], above_code)  # override: a rebind one level up

    async with world.db.read(may_lag=False) as conn:
        parts = dict((await conn.execute(select(outbox_part.c.digest, outbox_part.c.body))).all())
        rows = (
            await conn.execute(
                select(outbox.c.payload, outbox.c.parts).where(
                    outbox.c.event_key.in_([str(b) for b in buyers]),
                    outbox.c.topic == USER_EVENTS,
                    outbox.c.event_id.not_like("user.registered:%"),
                )
            )
        ).all()
    # The tip's path, new; the path above it, already written by the tip's own bind.
    assert len(parts) == parts_before + 1 and tip_path in parts.values()
    assert len(rows) == 5 and all(row.parts and len(row.payload) < 1000 for row in rows)
    bound = {e["key"]: e for e in await world.events("user.bound")}
    for buyer in buyers:
        assert bound[str(buyer)]["data"]["ancestor_path"] == tip_path
    (rebound,) = await world.events("user.rebound")
    assert rebound["data"]["ancestor_path"] == above_path
    assert rebound["data"]["previous_ancestor_path"] == tip_path
    assert UserBound.model_validate(rebound["data"]).previous_ancestors() == [
        c for c, _ in reversed(chain)
    ]


async def test_children_page_across_every_shard_in_id_order(world: UserWorld) -> None:
    """A parent's children live in their own shards: pages of any size list each child once,
    in id order, with its relation as stored; another parent's children never show."""
    await world.configure(bind_mode="expiring", bind_ttl_days=7)
    parent, parent_code = await world.promoter("parent")
    _, other_code = await world.promoter("other")
    children = [await world.user(f"child-{i}") for i in range(40)]
    for child in children:
        await world.bind(child, parent_code, source="qr")
    for i in range(5):
        await world.bind(await world.user(f"stranger-{i}"), other_code)
    assert len({shard_of(c) for c in children}) >= 12
    async with world.db.read(may_lag=False) as conn:
        stored = {c: await relations.load_relation(conn, c) for c in children}

    for limit in (1, 7, 40, 500):
        seen, cursor = [], None
        while True:
            page, cursor = await relations.get_children(world.db, parent, cursor, limit)
            assert len(page) <= limit
            seen += page
            if cursor is None:
                break
            assert cursor == str(page[-1]["user_id"])
        assert [item["user_id"] for item in seen] == sorted(children)
        for item in seen:
            row = stored[item["user_id"]]
            assert row is not None
            assert item == {
                "user_id": row["user_id"],
                "bound_at": row["bound_at"],
                "bind_source": "qr",
                "level": 2,
                "expires_at": row["bound_at"] + timedelta(days=7),
            }
    assert await relations.get_children(world.db, children[0], None, 10) == ([], None)


async def test_sqlite_databases_from_before_get_the_bounded_path_index(db: Database) -> None:
    await migrate(db, MIGRATIONS[:3])
    if db.is_sqlite:  # as version 3 left it: whole paths indexed
        async with db.primary.begin() as conn:
            for shard in range(SHARD_COUNT):
                name = relations_table.for_shard(shard).name
                await conn.execute(text(f"DROP INDEX ix_{name}_path_head"))
                await conn.execute(text(f"CREATE INDEX ix_{name}_path ON {name} (path)"))
    assert await migrate(db, MIGRATIONS[:4]) == [4]

    def indexes(sync: Connection) -> dict[str, set[str]]:
        tables = [relations_table.for_shard(n).name for n in range(SHARD_COUNT)]
        if db.is_sqlite:  # SQLAlchemy does not reflect expression indexes
            listed = sync.execute(
                text("SELECT tbl_name, name FROM sqlite_master WHERE type = 'index'")
            ).all()
            return {t: {str(n) for table, n in listed if table == t} for t in tables}
        inspector = inspect(sync)
        return {t: {str(i["name"]) for i in inspector.get_indexes(t)} for t in tables}

    async with db.primary.connect() as conn:
        found = await conn.run_sync(indexes)
    for name, names in found.items():
        kept = f"ix_{name}_path_head" if db.is_sqlite else f"ix_{name}_path"
        gone = f"ix_{name}_path" if db.is_sqlite else f"ix_{name}_path_head"
        assert kept in names and gone not in names, (name, names)


async def test_sqlite_tables_from_before_are_rebuilt_keyed_by_their_rowid(
    world: UserWorld,
) -> None:
    """Version 5 rebuilds SQLite's sharded tables whose key was a BIGINT (a table plus a
    unique index) with an INTEGER key (the rowid); rows, indexes and reads are unchanged."""
    db = world.db
    promoter, code = await world.promoter("rowid-promoter")
    members = [await world.user(f"rowid-{n}") for n in range(20)]
    for member in members:
        await world.bind(member, code)
    before = {m: await relations.read_path(db, m) for m in members}
    tables = [s.for_shard(n).name for s in SHARDED for n in range(SHARD_COUNT)]

    def schema(sync: Connection) -> dict[str, tuple[list[str], set[str]]]:
        found = {}
        for name in tables:
            keys = [r.type for r in sync.exec_driver_sql(f'PRAGMA table_info("{name}")') if r.pk]
            indexes = sync.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?", (name,)
            ).all()
            found[name] = (keys, {str(n) for (n,) in indexes})
        return found

    if db.is_sqlite:  # as version 4 left them: BIGINT keys
        async with db.primary.begin() as conn:
            new_form = await conn.run_sync(schema)
            for name in tables:
                create, *index_sql = [
                    str(sql)
                    for (sql,) in (
                        await conn.exec_driver_sql(
                            "SELECT sql FROM sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL"
                            " ORDER BY type DESC",
                            (name,),
                        )
                    ).all()
                ]
                key = create.split("PRIMARY KEY (")[1].split(")")[0]
                await conn.exec_driver_sql(f'ALTER TABLE "{name}" RENAME TO old_form')
                await conn.exec_driver_sql(
                    create.replace(f"{key} INTEGER NOT NULL", f"{key} BIGINT NOT NULL")
                )
                await conn.exec_driver_sql(f'INSERT INTO "{name}" SELECT * FROM old_form')
                await conn.exec_driver_sql("DROP TABLE old_form")
                for sql in index_sql:
                    await conn.exec_driver_sql(sql)
            old_form = await conn.run_sync(schema)
            await conn.execute(text("DELETE FROM schema_migrations WHERE version = 5"))
        assert all(keys == ["BIGINT"] for keys, _ in old_form.values())
        assert all(len(old_form[t][1]) == len(new_form[t][1]) + 1 for t in tables)  # + autoindex
        assert await migrate(db, MIGRATIONS) == [5]
        async with db.primary.connect() as conn:
            assert await conn.run_sync(schema) == new_form
        assert all(keys == ["INTEGER"] for keys, _ in new_form.values())
    else:  # MySQL/MariaDB: nothing to rebuild
        assert await migrate(db, MIGRATIONS) == []
    assert {m: await relations.read_path(db, m) for m in members} == before
    # Written after the rebuild: keys still refuse a second row.
    late = await world.user("rowid-late")
    await world.bind(late, code)
    with pytest.raises(TuikeError) as refused:
        await world.bind(late, (await world.promoter("rowid-other"))[1])
    assert refused.value.code == "relation.already_bound"
    assert (await relations.read_path(db, late))[1] == paths.child_path(
        before[members[0]][1].rsplit(",", 2)[0] + ",", late
    )
    assert promoter in paths.ids_of(before[members[0]][1])


async def test_a_user_moved_back_while_its_old_move_is_pending_keeps_its_path(
    world: UserWorld,
) -> None:
    """Hypothesis found it: a job that rewrites ``,b,c,`` → ``,a,c,`` must not rewrite c's
    row once c is bound under b again (written after the job, with the prefix anew)."""
    await world.configure(bind_mode="override")
    (a, a_code), (b, b_code), (c, c_code), (d, _) = [
        await world.promoter(f"back-{n}") for n in range(4)
    ]
    await world.bind(d, c_code)  # c has a team: its moves start jobs
    await world.bind(c, b_code)  # job 1: ,c, → ,b,c,
    await world.bind(c, a_code)  # job 2: ,b,c, → ,a,c,
    await world.bind(d, a_code)  # c's team leaves
    await world.bind(c, b_code)  # c is back at ,b,c, while job 2 still runs
    expected = {a: [a], b: [b], c: [b, c], d: [a, d]}

    async def check() -> None:
        for user_id, chain in expected.items():
            _, path = await relations.read_path(world.db, user_id)
            assert paths.ids_of(path) == chain, user_id

    await check()
    await world.finish_moves()
    await check()
    async with world.db.read(may_lag=False) as conn:
        stored = await relations.load_relation(conn, c)
    assert stored is not None and paths.ids_of(stored["path"]) == [b, c]
