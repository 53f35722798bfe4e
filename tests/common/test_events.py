"""The bind event's two forms of its ancestors (docs/decisions/0108)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from libs.common import relation_path
from libs.common.events import UserBound

NOW = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
ids = st.lists(st.integers(1, 2**63 - 1), min_size=0, max_size=40, unique=True)


def _bound(**fields: object) -> UserBound:
    base = {"user_id": "1", "parent_id": "2", "level": 2, "bind_source": "code"}
    return UserBound.model_validate({**base, "bound_at": NOW.isoformat(), **fields})


@given(ancestors=ids, previous=ids)
def test_a_compact_path_and_a_list_of_ids_name_the_same_ancestors(
    ancestors: list[int], previous: list[int]
) -> None:
    # Paths are root first; lists and ancestors() nearest first.
    version_2 = _bound(
        ancestor_path=relation_path.path_of(ancestors[::-1]),
        previous_ancestor_path=relation_path.path_of(previous[::-1]),
    )
    version_1 = _bound(
        ancestor_ids=[str(a) for a in ancestors],
        previous_ancestor_ids=[str(a) for a in previous],
    )
    assert version_2.ancestors() == version_1.ancestors() == ancestors
    assert version_2.previous_ancestors() == version_1.previous_ancestors() == previous


def test_a_first_bind_has_no_previous_ancestors() -> None:
    assert _bound(ancestor_path=",2,").previous_ancestors() == []
    assert _bound(ancestor_path=",2,").ancestors() == [2]


@pytest.mark.parametrize(
    "path",
    ["", "2,", ",2", ",2,,3,", ",A,", ",2 ,", ",12345678901234,", ",-1,", "2", ",2,\n", "\n,2,"],
)
def test_a_malformed_path_is_refused(path: str) -> None:
    # A consumer turns the refusal into a poison message (dead letter), not a wrong count.
    with pytest.raises(ValidationError):
        _bound(ancestor_path=path)
    with pytest.raises(ValidationError):
        _bound(ancestor_path=",2,", previous_ancestor_path=path)
