"""Keyset pages for every cursor-paged list: rows sorted by (created_at, key), an opaque cursor after the last one.

A cursor names where the last row shown sorts, never an offset, so rows added or deleted between two pages
neither repeat nor vanish from the rest of the listing. Jobs and datasets list newest first; a job's artifacts,
exports and evaluations oldest first.
"""

import base64
import re
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

from app.core.errors import Invalid

Row = TypeVar("Row")


def encode_cursor(created_at: datetime, key: str) -> str:
    """An opaque page cursor: where the last row shown sorts (its time, then its id or name)."""
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{key}".encode()).decode()


def decode_cursor(cursor: str, key_shape: re.Pattern[str]) -> tuple[datetime, str]:
    """The (time, key) a cursor names; 422 for anything this API did not hand out."""
    try:
        created, key = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        if not key_shape.fullmatch(key):
            raise ValueError(key)
        return datetime.fromisoformat(created), key
    except (ValueError, UnicodeDecodeError):
        raise Invalid("cursor: not a cursor this API returned; pass next_cursor from a previous page") from None


def keyset_page(
    session: Session,
    query: Select[tuple[Row]],
    created: InstrumentedAttribute[Any],
    key: InstrumentedAttribute[Any],
    key_shape: re.Pattern[str],
    limit: int,
    cursor: str | None,
    *,
    newest_first: bool,
) -> tuple[list[Row], str | None]:
    """`limit` rows of `query` after `cursor`, ordered by (created, key); and the next page's cursor (None: the
    last page). One row more than asked for is read to know whether another page follows."""
    if cursor:
        after_time, after_key = decode_cursor(cursor, key_shape)
        if newest_first:
            query = query.where(or_(created < after_time, and_(created == after_time, key < after_key)))
        else:
            query = query.where(or_(created > after_time, and_(created == after_time, key > after_key)))
    order = (created.desc(), key.desc()) if newest_first else (created, key)
    rows = list(session.scalars(query.order_by(*order).limit(limit + 1)))
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], encode_cursor(getattr(last, created.key), getattr(last, key.key))
