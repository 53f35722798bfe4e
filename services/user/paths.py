"""The compact relation path: ``,<id>,<id>,...,<self>,`` with ids in base 36 (ASCII).

A 19-digit id is at most 13 base-36 characters, so a 1,000-deep path is about 14 KB instead
of 20 KB; the API shows paths with decimal ids, as ARCHITECTURE §4 writes them.
"""

from __future__ import annotations

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def encode_id(value: int) -> str:
    if value == 0:
        return "0"
    out = []
    while value:
        value, rest = divmod(value, 36)
        out.append(_DIGITS[rest])
    return "".join(reversed(out))


def path_of(ids: list[int]) -> str:
    """The path of a chain given root first (the last id is the node itself)."""
    return "," + "".join(encode_id(i) + "," for i in ids)


def root_path(user_id: int) -> str:
    """The path of a user nobody is bound above: itself alone."""
    return f",{encode_id(user_id)},"


def ids_of(path: str) -> list[int]:
    """The ids of a path, root first, the node itself last."""
    return [int(part, 36) for part in path.strip(",").split(",") if part]


def child_path(parent_path: str, user_id: int) -> str:
    return f"{parent_path}{encode_id(user_id)},"


def contains(path: str, user_id: int) -> bool:
    return f",{encode_id(user_id)}," in path


def decimal_path(path: str) -> str:
    """The path as the API shows it: ``,1,3,5,`` with decimal ids."""
    return "," + "".join(f"{i}," for i in ids_of(path))


def rewrite(path: str, rewrites: list[tuple[str, str]]) -> str:
    """Apply pending subtree moves (old prefix → new prefix, oldest first) to a stored path,
    so a path a running move job has not reached yet reads as it will be."""
    for old_prefix, new_prefix in rewrites:
        if path.startswith(old_prefix):
            path = new_prefix + path[len(old_prefix) :]
    return path
