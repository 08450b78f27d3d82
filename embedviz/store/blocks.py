"""Pre-aggregated blocks of the SQLite store's series, so a chart of a long series reads a
few thousand rows instead of every one (a 100,000-point series: ~6,000 rows, not 100,000).

A level-1 block is 16 consecutive rows of one series (``points`` or ``summaries``): their
id, iteration and wall time span and, per value column, the minimum and the maximum with
the iteration of each, and the iteration of the first NaN. A level-k block is 16 blocks of
level k-1. Blocks are written in the transaction that wrote their rows and never change
after; rows not yet in a block are read as stored.

A downsampled read takes the coarsest level with at least ``max_points / 2`` blocks after
the cursor, turns each block into its minimum, its first NaN and its maximum, each at its
own iteration, adds the rows before the first block and after the last as stored, and
downsamples that with :func:`downsample_index`. So it keeps the points a full scan keeps,
at their iterations and with their values; only their wall times are interpolated within
their block.
"""

from __future__ import annotations

import sqlite3

import numpy as np

from embedviz.records import STATS
from embedviz.store.series import Series, downsample_index

FANOUT = 16
LEVELS = 4  # a block of level 4 holds 65,536 rows

#: the stored table -> (its blocks table, its series-id column, its value columns)
TABLES = {"points": ("point_blocks", "sid", ("value",)),
          "summaries": ("summary_blocks", "tid", STATS)}


def schema() -> str:
    """The CREATE TABLE statements of both blocks tables."""
    out = []
    for blocks, key, cols in TABLES.values():
        values = ", ".join(f"lo_{c} REAL, lo_it_{c} INTEGER, hi_{c} REAL, hi_it_{c} INTEGER, "
                           f"nan_it_{c} INTEGER" for c in cols)
        out.append(f"CREATE TABLE {blocks} ({key} INTEGER NOT NULL REFERENCES series(id), "
                   "level INTEGER NOT NULL, id INTEGER NOT NULL, last_id INTEGER NOT NULL, "
                   "n INTEGER NOT NULL, first_it INTEGER NOT NULL, last_it INTEGER NOT NULL, "
                   f"first_wall REAL NOT NULL, last_wall REAL NOT NULL, {values}, "
                   f"PRIMARY KEY ({key}, level, id)) WITHOUT ROWID;")
    return "\n".join(out)


def _aggregate(table: str, level: int) -> tuple[str, str]:
    """(the INSERT that makes one block of ``level`` from its sources: parameters series id,
    last id before it, its last source id; the column holding a source's last id)."""
    blocks, key, cols = TABLES[table]
    if level == 1:
        src, last, where = table, "id", ""
        span = "min(id), max(id), count(*), min(iteration), max(iteration), min(wall_time), max(wall_time)"
        lo, hi, it, nan_it = "{c}", "{c}", "iteration", "min(CASE WHEN {c} IS NULL THEN iteration END)"
    else:
        src, last, where = blocks, "last_id", f" AND level = {level - 1}"
        span = ("min(id), max(last_id), sum(n), min(first_it), max(last_it), min(first_wall), "
                "max(last_wall)")
        lo, hi, it, nan_it = "lo_{c}", "hi_{c}", None, "min(nan_it_{c})"
    rows = f"FROM {src} WHERE {key} = ?1{where} AND id > ?2 AND id <= ?3"
    values = []
    for c in cols:
        lo_c, hi_c = lo.format(c=c), hi.format(c=c)
        # the iteration of the extreme: of its row (level 1) or the block that holds it
        lo_it, hi_it = (it, it) if it else (f"lo_it_{c}", f"hi_it_{c}")
        values += [f"min({lo_c})", f"(SELECT {lo_it} {rows} AND {lo_c} IS NOT NULL ORDER BY {lo_c}, id LIMIT 1)",
                   f"max({hi_c})", f"(SELECT {hi_it} {rows} AND {hi_c} IS NOT NULL ORDER BY {hi_c} DESC, id LIMIT 1)",
                   nan_it.format(c=c)]
    return f"INSERT INTO {blocks} SELECT {key}, {level}, {span}, {', '.join(values)} {rows} GROUP BY {key}", last


def roll(conn: sqlite3.Connection, table: str, series_id: int) -> None:
    """Make every block of ``series_id`` whose rows are all written (inside the writer's
    transaction)."""
    blocks, key, _ = TABLES[table]
    for level in range(1, LEVELS + 1):
        insert, last_col = _aggregate(table, level)
        src, where = (table, "") if level == 1 else (blocks, f" AND level = {level - 1}")
        row = conn.execute(f"SELECT last_id FROM {blocks} WHERE {key} = ? AND level = ? "
                           "ORDER BY id DESC LIMIT 1", (series_id, level)).fetchone()
        done = row[0] if row else 0
        made = False
        while True:
            nth = conn.execute(f"SELECT id, {last_col} FROM {src} WHERE {key} = ?{where} AND "
                               f"id > ? ORDER BY id LIMIT 1 OFFSET {FANOUT - 1}",
                               (series_id, done)).fetchone()
            if nth is None:
                break
            conn.execute(insert, (series_id, done, nth[0]))
            done, made = nth[1], True
        if not made:
            return  # (a level above can only grow from new blocks of this one)


def read(conn: sqlite3.Connection, table: str, series_id: int, column: str, key: str,
         since: int, max_points: int) -> Series | None:
    """A downsampled read of rows after ``since`` from blocks; None when no level has
    enough blocks (a short series: read it as stored)."""
    blocks, sid, _ = TABLES[table]
    for level in range(LEVELS, 0, -1):
        n = conn.execute(f"SELECT count(*) FROM {blocks} WHERE {sid} = ? AND level = ? AND id > ?",
                         (series_id, level, since)).fetchone()[0]
        if n >= max_points // 2:
            break
    else:
        return None
    rows = conn.execute(f"SELECT id, last_id, first_it, last_it, first_wall, last_wall, "
                        f"lo_{column}, lo_it_{column}, hi_{column}, hi_it_{column}, nan_it_{column} "
                        f"FROM {blocks} WHERE {sid} = ? AND level = ? AND id > ? ORDER BY id",
                        (series_id, level, since)).fetchall()
    b = np.array(rows, dtype=np.float64)  # (NULL becomes NaN)
    raw = f"SELECT id, iteration, wall_time, {column} FROM {table} WHERE {sid} = ? AND id "
    head = conn.execute(raw + "> ? AND id < ? ORDER BY id", (series_id, since, rows[0][0])).fetchall()
    last = rows[-1][1]
    tail = (conn.execute(raw + "> ? ORDER BY id", (series_id, last)).fetchall()
            or conn.execute(raw + "= ?", (series_id, last)).fetchall())  # the true last point
    # each block: its minimum, its first NaN and its maximum, in the order of their iterations
    its = b[:, [7, 10, 9]]
    vals = np.stack([b[:, 6], np.full(len(b), np.nan), b[:, 8]], axis=1)
    keep = ~np.isnan(its)
    keep[:, 2] &= its[:, 2] != its[:, 0]  # (a constant block: its minimum is its maximum)
    order = np.argsort(np.where(keep, its, np.inf), axis=1, kind="stable")
    its, vals, keep = (np.take_along_axis(a, order, axis=1) for a in (its, vals, keep))
    span = np.maximum(b[:, 3] - b[:, 2], 1)[:, None]
    walls = b[:, 4:5] + (its - b[:, 2:3]) / span * (b[:, 5:6] - b[:, 4:5])
    h = np.array(head, dtype=np.float64).reshape(-1, 4)
    t = np.array(tail, dtype=np.float64).reshape(-1, 4)
    iterations = np.concatenate([h[:, 1], its[keep], t[:, 1]]).astype(np.int64)
    values = np.concatenate([h[:, 3], vals[keep], t[:, 3]])
    wall_times = np.concatenate([h[:, 2], walls[keep], t[:, 2]])
    if len(t) == 1 and t[0, 0] == last:  # (the last block's last row, already in its block)
        dup = len(iterations) - 2
        if dup >= 0 and iterations[dup] == iterations[-1] and values[dup] == values[-1]:
            iterations, values, wall_times = iterations[:-1], values[:-1], wall_times[:-1]
    idx = downsample_index(iterations, values, max_points)
    cursor = int(max(last, int(t[-1, 0]) if len(t) else 0))
    return Series(key, iterations[idx], values[idx], wall_times[idx], cursor)
