"""HTTP routes of the order service: parse, authorize, call one service function, map."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1", tags=["order"])
