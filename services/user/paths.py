"""The compact relation path: ``,<id>,<id>,...,<self>,`` with ids in base 36 (ASCII), as
``libs.common.relation_path`` encodes it.

A 19-digit id is at most 13 base-36 characters, so a 1,000-deep path is about 14 KB instead
of 20 KB; the API shows paths with decimal ids, as ARCHITECTURE §4 writes them.
"""

from __future__ import annotations

from functools import lru_cache

from libs.common.relation_path import encode_id as encode_id
from libs.common.relation_path import parse
from libs.common.relation_path import path_of as path_of


def root_path(user_id: int) -> str:
    """The path of a user nobody is bound above: itself alone."""
    return f",{encode_id(user_id)},"


@lru_cache(maxsize=512)
def _parsed(path: str) -> tuple[int, ...]:
    # A batch of binds under one deep promoter reads the same 1,000-id path for every bind,
    # and each bind's own path several times: parse each path once.
    return parse(path)


def ids_of(path: str) -> list[int]:
    """The ids of a path, root first, the node itself last."""
    return list(_parsed(path))


def depth_of(path: str) -> int:
    """How many ids a path holds (the node's level), without parsing them."""
    return path.count(",") - 1


@lru_cache(maxsize=512)
def depth_of_cached(path: str) -> int:
    """``depth_of`` for a path read again and again (a promoter's, under whom a batch binds):
    counted once per path."""
    return depth_of(path)


def child_path(parent_path: str, user_id: int) -> str:
    return f"{parent_path}{encode_id(user_id)},"


def contains(path: str, user_id: int) -> bool:
    return f",{encode_id(user_id)}," in path


@lru_cache(maxsize=512)
def _decimal(path: str) -> str:
    return "," + "".join(f"{i}," for i in _parsed(path))


def decimal_path(path: str) -> str:
    """The path as the API shows it: ``,1,3,5,`` with decimal ids. The parent's part is
    converted once and reused by every child bound under it."""
    cut = path.rfind(",", 0, len(path) - 1)
    return _decimal(path[: cut + 1]) + f"{int(path[cut + 1 : -1], 36)},"


def decimal_child_path(parent_path: str, user_id: int) -> str:
    """``decimal_path(child_path(parent_path, user_id))``, without building the child's
    compact path first: the parent's part is the cached one."""
    return _decimal(parent_path) + f"{user_id},"


def first_id(path: str) -> int:
    """The root of a path, without parsing the rest."""
    return int(path[1 : path.index(",", 1)], 36)


def nearest_ancestors(path: str, levels: int) -> list[int]:
    """Up to ``levels`` ancestors nearest first, parsing only the tail of the path (without
    copying the rest: a deep path is 14 KB)."""
    # ",a,b,c,".rsplit(",", 4) == [",a", "b", "c", ""]: the node, an empty end, and before
    # them up to ``levels`` ancestors, or the path's empty start when it holds fewer.
    parts = path.rsplit(",", levels + 2)[-(levels + 2) : -2]
    return [int(part, 36) for part in reversed(parts) if part]


def rewrite(path: str, rewrites: list[tuple[str, str]]) -> str:
    """Apply pending subtree moves (old prefix → new prefix, oldest first) to a stored path,
    so a path a running move job has not reached yet reads as it will be."""
    for old_prefix, new_prefix in rewrites:
        if path.startswith(old_prefix):
            path = new_prefix + path[len(old_prefix) :]
    return path
