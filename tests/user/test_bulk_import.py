"""Bulk import: users and parent links from CSV or JSONL in any order, resumable, refusals
reported with their reason."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from libs.common.db.engine import Database
from libs.common.db.global_index import lookup
from libs.common.messaging.outbox import utcnow
from services.user import promoters, relations
from services.user.bulk_import import import_file
from services.user.users import USER_INDEX
from tests.user.conftest import UserWorld

# Children before parents; a loop (x ↔ y); an unknown parent; a malformed line.
JSONL = [
    {"external_id": "c", "parent_external_id": "b"},
    {"external_id": "b", "parent_external_id": "a", "promoter": True},
    {"external_id": "a", "promoter": "yes", "phone": "13812341234"},
    {"external_id": "d", "parent_external_id": "a"},
    {"external_id": "x", "parent_external_id": "y"},
    {"external_id": "y", "parent_external_id": "x"},
    {"external_id": "orphan", "parent_external_id": "nobody"},
    {"nickname": "no external id"},
]


async def _id(db: Database, external_id: str, platform: str = "shop") -> int:
    async with db.read(may_lag=False) as conn:
        found = await lookup(conn, USER_INDEX, f"{platform}:{external_id}")
    assert found is not None, external_id
    return found


def _write_jsonl(path: Path) -> None:
    path.write_text("\n".join(json.dumps(row) for row in JSONL) + "\n")


async def test_import_in_any_order_with_refusals(world: UserWorld, tmp_path: Path) -> None:
    source = tmp_path / "community.jsonl"
    _write_jsonl(source)
    report = await import_file(world.db, world.ids, source, platform="shop", batch_size=3)
    assert report.finished
    assert (report.users_created, report.links_created) == (7, 3)
    refused = {(r.get("external_id"), r["code"]) for r in report.refused}
    assert refused == {
        (None, "row.invalid"),
        ("x", "relation.cycle"),
        ("y", "relation.cycle"),
        ("orphan", "parent.not_found"),
    }
    a, b, c = [await _id(world.db, name) for name in "abc"]
    relation = await relations.get_relation(world.db, c, utcnow())
    assert relation["path"] == f",{a},{b},{c},"
    assert relation["bind_source"] == "import"
    assert (await relations.get_team(world.db, a))["level1_count"] == 2
    assert (await promoters.get_promoter(world.db, b))["status"] == "approved"
    # A second run changes nothing.
    again = await import_file(world.db, world.ids, source, platform="shop")
    assert (again.users_created, again.links_created) == (0, 0)


async def test_an_interrupted_import_resumes(world: UserWorld, tmp_path: Path) -> None:
    source = tmp_path / "community.csv"
    lines = ["external_id,parent_external_id"] + [
        f"u{n},{'u' + str(n - 1) if n else ''}" for n in range(10)
    ]
    source.write_text("\n".join(lines) + "\n")
    first = await import_file(world.db, world.ids, source, batch_size=4, max_batches=2)
    assert not first.finished and first.users_created == 8
    second = await import_file(world.db, world.ids, source, batch_size=4, max_batches=2)
    assert second.users_created == 2 and second.links_created == 4
    rest = await import_file(world.db, world.ids, source, batch_size=4)
    assert rest.finished and rest.links_created == 5
    deepest = await relations.get_relation(world.db, await _id(world.db, "u9", "default"), utcnow())
    assert deepest["level"] == 10


def test_the_command_line(database_url: str, tmp_path: Path) -> None:
    source = tmp_path / "community.jsonl"
    _write_jsonl(source)
    completed = subprocess.run(
        [sys.executable, "-m", "services.user.bulk_import", str(source), "--platform", "shop"],
        env={"TUIKE_DATABASE_URL": database_url, "TUIKE_NODE_ID": "9", "PATH": "/usr/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    assert summary == {**summary, "users_created": 7, "links_created": 3, "refused": 4}
    refused = Path(summary["refused_file"]).read_text().splitlines()
    assert {json.loads(line)["code"] for line in refused} >= {"relation.cycle", "row.invalid"}
