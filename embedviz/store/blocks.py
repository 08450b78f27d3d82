"""Pre-aggregated blocks of the SQL stores' series, and the reads that use them, so a
chart of a long series reads a few thousand rows instead of every one (a 100,000-point
series: ~6,000 rows, not 100,000) and a zoom reads little more than its own part.

A level-1 block is 16 consecutive rows of one series (``points`` or ``summaries``): their
id, iteration and wall time span and, per value column, the minimum and the maximum with
the iteration of each, and the iteration of the first NaN. A level-k block is 16 blocks of
level k-1. Blocks are written in the transaction that wrote their rows and never change
after; rows not yet in a block are read as stored.

:func:`read_many` reads any number of series in at most three statements:

1. per series, its blocks of levels 2-4 after its cursor: how many, how many lie wholly
   inside the iteration range, and the id span of those not wholly outside it;
2. the blocks of the level it reads: the coarsest with at least ``max_points / 2`` blocks
   wholly inside the range (level 1 is fetched to find out, within that span of level 2);
3. the rows read as stored: those after the cursor outside the blocks of 2 (before the
   first, after the last, in blocks partly inside the range; blocks wholly outside it are
   skipped), and the last block's last row, the series' true last point.

Each block read stands for its minimum, its first NaN and its maximum, each at its own
iteration; with the rows they are downsampled by :func:`downsample_index`. So a read keeps
each bucket's minimum, maximum and first NaN among the points it read, and the series' last
point, at their iterations and with their values (no spike is lost: the series' extremes
are always among them; only the wall times of points from blocks are interpolated within
their block). It does not always keep the points a scan of every row (the in-memory
store's) keeps: a block stands for its 16^k rows by its own extremes, so in a bucket that
a block spans only in part, the extremes kept may differ from a scan's. A series with no
level of enough blocks (a short one, a narrow zoom) is read as stored. A read without ``max_points`` and range is
statement 3 alone; with a range but no ``max_points``, statements 1 and 3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


def roll(conn: Any, table: str, series_ids: list[int] | int) -> None:
    """Make every block of the series ``series_ids`` whose rows are all written (inside the
    writer's transaction): three statements a level for any number of series (where the
    server is across a network, each statement is a round trip)."""
    blocks, key, _ = TABLES[table]
    todo = sorted({series_ids} if isinstance(series_ids, int) else set(series_ids))
    for level in range(1, LEVELS + 1):
        if not todo:
            return  # (a level above can only grow from new blocks of this one)
        insert, last_col = _aggregate(table, level)
        src, where = (table, "") if level == 1 else (blocks, f" AND s.level = {level - 1}")
        values = ", ".join(f"({int(sid)})" for sid in todo)
        done = dict(conn.execute(
            f"WITH v(sid) AS (VALUES {values}) SELECT v.sid, (SELECT last_id FROM {blocks} WHERE "
            f"{key} = v.sid AND level = {level} ORDER BY id DESC LIMIT 1) FROM v").fetchall())
        after = ", ".join(f"({int(sid)}, {int(done.get(sid) or 0)})" for sid in todo)
        ends = conn.execute(
            f"WITH v(sid, done) AS (VALUES {after}) SELECT sid, id, last FROM (SELECT s.{key} AS "
            f"sid, s.id AS id, s.{last_col} AS last, row_number() OVER (PARTITION BY s.{key} "
            f"ORDER BY s.id) AS rn FROM v JOIN {src} AS s ON s.{key} = v.sid AND "
            f"s.id > v.done{where}) AS t WHERE rn % {FANOUT} = 0 ORDER BY sid, id").fetchall()
        rows: list[tuple[int, int, int]] = []  # (a block: after the previous one's last, to its nth)
        prev: dict[int, int] = {}
        for sid, nth, last in ends:
            rows.append((sid, prev.get(sid, int(done.get(sid) or 0)), nth))
            prev[sid] = last
        if rows:
            conn.executemany(insert, rows)
        todo = sorted(prev)


#: iteration bounds of an open range, and the id bound of an open interval (SQLite integers)
LOWEST, HIGHEST = -(2**63 - 1), 2**63 - 1
#: columns of a block read by statement 2 (then 5 per value column: lo, lo_it, hi, hi_it,
#: nan_it) and of a row read by statement 3 (then 1 per value column)
_B_ID, _B_LAST, _B_FIRST_IT, _B_LAST_IT, _B_FIRST_WALL, _B_LAST_WALL, _B_VALUES = range(1, 8)
_R_ID, _R_IT, _R_WALL, _R_VALUES = range(1, 5)

#: parameters of one statement at most (SQLite's limit is 32,766)
MAX_PARAMETERS = 30_000
#: what the rows of a read depend on: (table, series id, cursor)
Source = tuple[str, int, int]


@dataclass(frozen=True)
class Want:
    """One series to read: its ``key`` as asked, where its rows are (``table``, series id
    ``sid``), its value ``column`` and its cursor ``since``."""

    key: str
    table: str
    sid: int
    column: str
    since: int

    @property
    def source(self) -> Source:
        """Several statistics of one tensor share their rows, and are read once."""
        return (self.table, self.sid, self.since)


@dataclass
class _Plan:
    """How one source is read: id intervals (lo, hi] read as stored, and the blocks standing
    for the rest (rows of statement 2, sorted by id; None when none stand in)."""

    intervals: list[tuple[int, int]]
    blocks: np.ndarray | None = None


def read_many(conn: Any, wants: list[Want], *, start: int | None,
              stop: int | None, max_points: int | None, use_blocks: bool = True) -> dict[str, Series]:
    """Each wanted series: its rows after its cursor with iterations in [start, stop] (None:
    unbounded), in write order, downsampled to ``max_points`` (None: every row); the cursor of
    each is the id of its last row so selected (its ``since`` when none is)."""
    lo = LOWEST if start is None else int(start)
    hi = HIGHEST if stop is None else int(stop)
    sources = list(dict.fromkeys(w.source for w in wants))
    columns: dict[str, list[str]] = {}
    for w in wants:
        columns.setdefault(w.table, [])
        if w.column not in columns[w.table]:
            columns[w.table].append(w.column)
    ranged = start is not None or stop is not None
    plans = {s: _Plan([(s[2], HIGHEST)]) for s in sources}
    if use_blocks and sources and (ranged or max_points is not None):
        coarse = _coarse(conn, sources, lo, hi, ranged)
        if max_points is None:  # the range alone: skip what level 2 shows lies outside it
            plans = {s: _Plan(_window(s[2], coarse[s].get(2))) for s in sources}
        else:
            plans = _plan(conn, sources, coarse, columns, lo, hi, max_points)
    rows = _rows(conn, plans, columns, lo, hi, ranged)
    return {w.key: _series(w, plans[w.source], rows[w.source],
                           columns[w.table].index(w.column), max_points) for w in wants}


def _union(conn: Any, parts: list[tuple[str, list[tuple], str]], width: int, *,
           keyed: bool = True, bounds: tuple[int, int] = (LOWEST, HIGHEST)) -> np.ndarray:
    """Run ``parts`` as one statement, their SELECTs joined by UNION ALL. A part is (the
    column names of a VALUES table of integers, its rows, a SELECT that reads it as ``{v}``
    and starts with ``{k}``, the column k of the VALUES row when ``keyed``); ``bounds`` (the
    iteration range) are parameters ?1 and ?2. Returns the rows as float64 (NULL as NaN),
    shape (n, width); column 0 is 0 when not ``keyed``."""
    parts = [p for p in parts if p[1]]
    if not parts:
        return np.empty((0, width))
    # numbered parameters: a statement of the same shape is compiled once; past SQLite's
    # limit of parameters, the integers (all made here) are written into the SQL instead
    inline = 2 + sum(len(values) * len(values[0]) for _, values, _ in parts) > MAX_PARAMETERS
    args: list[int] = [] if inline else [int(bounds[0]), int(bounds[1])]
    ctes, selects = [], []
    for i, (names, values, select) in enumerate(parts):
        ctes.append(f"v{i}({names}) AS (VALUES {_values(values, None if inline else args)})")
        select = select.replace("{v}", f"v{i}").replace("{k}", "v.k, " if keyed else "")
        if inline:
            select = select.replace("?1", str(int(bounds[0]))).replace("?2", str(int(bounds[1])))
        selects.append(select)
    rows = conn.execute("WITH " + ", ".join(ctes) + " " + " UNION ALL ".join(selects), args).fetchall()
    if keyed:
        return np.array(rows, dtype=np.float64).reshape(-1, width)
    out = np.zeros((len(rows), width))
    out[:, 1:] = np.array(rows, dtype=np.float64).reshape(-1, width - 1)
    return out


def _values(rows: list[tuple], args: list[int] | None) -> str:
    """The rows of a VALUES table: as numbered parameters appended to ``args``, or written
    in when ``args`` is None."""
    if args is None:
        return ", ".join("(" + ", ".join(str(int(x)) for x in row) + ")" for row in rows)
    out = []
    for row in rows:
        out.append("(" + ", ".join(f"?{len(args) + j}" for j in range(1, len(row) + 1)) + ")")
        args.extend(int(x) for x in row)
    return ", ".join(out)


def _per_job(conn: Any, parts: list[tuple[str, list[tuple], str]], width: int,
             jobs: list[tuple[Source, tuple[int, int]]], bounds: tuple[int, int]) -> list[np.ndarray]:
    """The rows of ``parts`` (see :func:`_union`) for each job (a source and an id interval
    (lo, hi]), each sorted by id. Reading one source, a row's job is found from its id,
    which spares converting a column."""
    one = len({s for s, _ in jobs}) == 1
    arr = _union(conn, parts, width, keyed=not one, bounds=bounds)
    if one and len(jobs) > 1:
        order = sorted(range(len(jobs)), key=lambda k: jobs[k][1][0])
        los = np.array([jobs[k][1][0] for k in order], dtype=np.float64)
        ids = arr[:, 1]  # (column 1 is the id of a block or of a row)
        arr[:, 0] = np.array(order)[np.searchsorted(los, ids, side="left") - 1]
    return _by_job(arr, len(jobs))


def _slots(names: list[str], width: int) -> str:
    """A SELECT's value columns, padded with NULL to ``width`` (the UNION's parts align)."""
    return ", ".join(names + ["NULL"] * (width - len(names)))


def _coarse(conn: Any, sources: list[Source], lo: int, hi: int,
            ranged: bool) -> dict[Source, dict[int, np.ndarray]]:
    """Statement 1: per source and level >= 2, of its blocks after its cursor: [count, count
    wholly in [lo, hi], first id and last id of those not wholly outside it (NaN: none),
    first id, last id]."""
    touching = "b.last_it >= ?1 AND b.first_it <= ?2"
    aggregates = (f"count(*), sum(CASE WHEN b.first_it >= ?1 AND b.last_it <= ?2 THEN 1 ELSE 0 "
                  f"END), min(CASE WHEN "
                  f"{touching} THEN b.id END), max(CASE WHEN {touching} THEN b.last_id END)"
                  if ranged else "count(*), count(*), min(b.id), max(b.last_id)")  # (cheaper)
    levels = ", ".join(str(k) for k in range(2, LEVELS + 1))
    parts = []
    for table, (blocks, sid, _) in TABLES.items():
        values = [(k, s[1], s[2]) for k, s in enumerate(sources) if s[0] == table]
        parts.append(("k, sid, since", values,
                      f"SELECT {{k}}b.level, {aggregates}, min(b.id), max(b.last_id) "
                      f"FROM {{v}} AS v JOIN {blocks} AS b ON b.{sid} = v.sid AND "
                      f"b.level IN ({levels}) AND b.id > v.since GROUP BY v.k, b.level"))
    out: dict[Source, dict[int, np.ndarray]] = {s: {} for s in sources}
    for r in _union(conn, parts, 8, bounds=(lo, hi)):
        out[sources[int(r[0])]][int(r[1])] = r[2:]
    return out


def _window(since: int, counts: np.ndarray | None) -> list[tuple[int, int]]:
    """The id intervals (lo, hi] after ``since`` that may hold rows in the range, from the
    counts of one level (see :func:`_coarse`): before its first block, the span of its
    blocks not wholly outside the range, after its last block."""
    if counts is None or (counts[2] == counts[4] and counts[3] == counts[5]):
        return [(since, HIGHEST)]  # (no block of this level lies outside the range)
    out = [(since, int(counts[4]) - 1)]
    if not np.isnan(counts[2]):
        out.append((int(counts[2]) - 1, int(counts[3])))
    out.append((int(counts[5]), HIGHEST))
    return [(a, z) for a, z in out if z > a]


def _plan(conn: Any, sources: list[Source], coarse: dict, columns: dict,
          lo: int, hi: int, max_points: int) -> dict[Source, _Plan]:
    """Pick each source's level, fetch its blocks there (statement 2) and plan its read."""
    half = max_points // 2
    levels = {s: next((k for k in range(LEVELS, 1, -1) if k in coarse[s] and coarse[s][k][1] >= half), 1)
              for s in sources}
    windows = {s: _window(s[2], coarse[s].get(levels[s] + 1)) for s in sources}
    jobs = [(s, iv) for s in sources for iv in windows[s]]
    width = _B_VALUES + 5 * max(len(c) for c in columns.values())
    parts = []
    for table, (blocks, sid, _) in TABLES.items():
        names = [f"b.{p}_{c}" for c in columns.get(table, [])
                 for p in ("lo", "lo_it", "hi", "hi_it", "nan_it")]
        values = [(k, s[1], levels[s], a, z) for k, (s, (a, z)) in enumerate(jobs) if s[0] == table]
        parts.append(("k, sid, level, lo, hi", values,
                      f"SELECT {{k}}b.id, b.last_id, b.first_it, b.last_it, b.first_wall, "
                      f"b.last_wall, {_slots(names, width - _B_VALUES)} FROM {{v}} AS v JOIN "
                      f"{blocks} AS b ON b.{sid} = v.sid AND b.level = v.level AND "
                      "b.id > v.lo AND b.last_id <= v.hi"))
    found = iter(_per_job(conn, parts, width, jobs, (lo, hi)))
    return {s: _plan_one([(iv, next(found)) for iv in windows[s]], lo, hi, half, levels[s])
            for s in sources}


def _by_job(arr: np.ndarray, n: int) -> list[np.ndarray]:
    """The rows of a statement split by their first column (0 <= k < n), each sorted by id."""
    if n == 1:
        return [arr if np.all(np.diff(arr[:, 1]) > 0) else arr[np.argsort(arr[:, 1], kind="stable")]]
    step_k, step_id = np.diff(arr[:, 0]), np.diff(arr[:, 1])
    if not np.all((step_k > 0) | ((step_k == 0) & (step_id > 0))):  # (SQLite's order, mostly)
        arr = arr[np.lexsort((arr[:, 1], arr[:, 0]))]
    bounds = np.searchsorted(arr[:, 0], np.arange(n + 1))
    return [arr[bounds[k]:bounds[k + 1]] for k in range(n)]


def _plan_one(fetched: list[tuple[tuple[int, int], np.ndarray]], lo: int, hi: int, half: int,
              level: int) -> _Plan:
    """One source's read from its blocks at ``level`` (per id interval): the blocks wholly
    inside [lo, hi] stand for their rows when there are enough of them; the rest of the
    intervals is read as stored, blocks wholly outside skipped."""
    inside = [(b[:, _B_FIRST_IT] >= lo) & (b[:, _B_LAST_IT] <= hi) for _, b in fetched]
    outside = [(b[:, _B_LAST_IT] < lo) | (b[:, _B_FIRST_IT] > hi) for _, b in fetched]
    use = level > 1 or sum(int(m.sum()) for m in inside) >= half
    intervals: list[tuple[int, int]] = []
    for ((a, z), b), ins, out in zip(fetched, inside, outside):
        intervals += _gaps(a, z, b, ~out & ~ins if use else ~out)
    if not use or not fetched:
        return _Plan(intervals)
    chosen = np.concatenate([b[m] for (_, b), m in zip(fetched, inside)])
    if len(chosen):
        last = int(chosen[-1, _B_LAST])
        intervals.append((last - 1, last))  # the series' true last point (and wall time)
    return _Plan(intervals, chosen)


def _gaps(lo: int, hi: int, b: np.ndarray, keep: np.ndarray) -> list[tuple[int, int]]:
    """The parts of the id interval (lo, hi] read as stored: before the first block of ``b``
    (consecutive blocks of one level, covering their rows without gaps), the runs of blocks
    marked ``keep``, after the last block."""
    if not len(b):
        return [(lo, hi)]
    edges = np.diff(np.concatenate([[0], keep.astype(np.int8), [0]]))
    runs = zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1)
    out = [(lo, int(b[0, _B_ID]) - 1)]
    out += [(int(b[i, _B_ID]) - 1, int(b[j, _B_LAST])) for i, j in runs]
    out.append((int(b[-1, _B_LAST]), hi))
    return [(a, z) for a, z in out if z > a]


def _rows(conn: Any, plans: dict[Source, _Plan], columns: dict, lo: int,
          hi: int, ranged: bool) -> dict[Source, np.ndarray]:
    """Statement 3: the rows of each source's intervals (in the range), sorted by id; columns
    [job, id, iteration, wall time, value columns...]."""
    jobs = [(s, iv) for s, plan in plans.items() for iv in plan.intervals]
    width = _R_VALUES + max(len(c) for c in columns.values()) if columns else _R_VALUES
    where = " AND t.iteration >= ?1 AND t.iteration <= ?2" if ranged else ""
    parts = []
    for table, (_, sid, _) in TABLES.items():
        names = [f"t.{c}" for c in columns.get(table, [])]
        values = [(k, s[1], a, z) for k, (s, (a, z)) in enumerate(jobs) if s[0] == table]
        parts.append(("k, sid, lo, hi", values,
                      f"SELECT {{k}}t.id, t.iteration, t.wall_time, "
                      f"{_slots(names, width - _R_VALUES)} FROM {{v}} AS v JOIN {table} AS t ON "
                      f"t.{sid} = v.sid AND t.id > v.lo AND t.id <= v.hi{where}"))
    found = iter(_per_job(conn, parts, width, jobs, (lo, hi)))
    return {s: _sorted([next(found) for _ in plan.intervals], width) for s, plan in plans.items()}


def _sorted(parts: list[np.ndarray], width: int) -> np.ndarray:
    rows = np.concatenate(parts) if parts else np.empty((0, width))
    if np.all(np.diff(rows[:, _R_ID]) > 0):
        return rows
    return rows[np.argsort(rows[:, _R_ID], kind="stable")]


def _extremes(b: np.ndarray, slot: int) -> tuple[np.ndarray, ...]:
    """What blocks ``b`` stand for in value column ``slot``: each block's minimum, first NaN
    and maximum in the order of their iterations. Returns (block id, rank in the block,
    iteration, value, interpolated wall time), each of shape (m,)."""
    c = _B_VALUES + 5 * slot
    its = b[:, [c + 1, c + 4, c + 3]]
    vals = b[:, [c, c + 4, c + 2]]
    vals[:, 1] = np.nan
    keep = ~np.isnan(its)
    keep[:, 2] &= its[:, 2] != its[:, 0]  # (a constant block: its minimum is its maximum)
    order = np.argsort(np.where(keep, its, np.inf), axis=1, kind="stable")
    its, vals, keep = (np.take_along_axis(a, order, axis=1) for a in (its, vals, keep))
    first_it, first_wall = b[:, _B_FIRST_IT, None], b[:, _B_FIRST_WALL, None]
    span = np.maximum(b[:, _B_LAST_IT] - b[:, _B_FIRST_IT], 1)[:, None]
    walls = first_wall + (its - first_it) / span * (b[:, _B_LAST_WALL, None] - first_wall)
    ids = np.broadcast_to(b[:, _B_ID, None], its.shape)
    rank = np.broadcast_to(np.arange(3.0), its.shape)
    return ids[keep], rank[keep], its[keep], vals[keep], walls[keep]


def _merge(pos: np.ndarray, ids: np.ndarray, rank: np.ndarray,
           *pairs: tuple[np.ndarray, np.ndarray]) -> list[np.ndarray]:
    """Each pair (of rows, of blocks' extremes) as one array in write order: rows at their
    ids ``pos``, extremes at their block's id and ``rank`` in it."""
    if not len(ids):
        return [rows for rows, _ in pairs]
    before = pos < ids[0]
    if np.all(before | (pos > ids[-1])):  # (rows only before and after the blocks, mostly)
        return [np.concatenate([rows[before], extremes, rows[~before]]) for rows, extremes in pairs]
    order = np.lexsort((np.concatenate([np.zeros(len(pos)), rank]), np.concatenate([pos, ids])))
    return [np.concatenate(pair)[order] for pair in pairs]


def _series(w: Want, plan: _Plan, rows: np.ndarray, slot: int, max_points: int | None) -> Series:
    """One wanted series from its source's rows and blocks, downsampled."""
    pos, its = rows[:, _R_ID], rows[:, _R_IT]
    walls, vals = rows[:, _R_WALL], rows[:, _R_VALUES + slot]
    cursor = int(pos[-1]) if len(pos) else w.since
    b = plan.blocks
    row_ids: np.ndarray | None = pos.astype(np.int64)
    if b is not None and len(b):
        row_ids = None
        cursor = max(cursor, int(b[-1, _B_LAST]))
        ids, rank, b_its, b_vals, b_walls = _extremes(b, slot)
        # the last block's last row was read as stored too: drop its copy among the extremes
        last = np.flatnonzero(pos == b[-1, _B_LAST])
        if len(last):
            j = last[0]
            same = (ids == b[-1, _B_ID]) & (b_its == its[j]) & (
                (b_vals == vals[j]) | (np.isnan(b_vals) & np.isnan(vals[j])))
            ids, rank, b_its, b_vals, b_walls = (a[~same] for a in (ids, rank, b_its, b_vals, b_walls))
        its, vals, walls = _merge(pos, ids, rank, (its, b_its), (vals, b_vals), (walls, b_walls))
    series = Series(w.key, its.astype(np.int64), vals, walls, cursor, row_ids)
    if max_points is not None and len(series) > max_points:
        series = series.take(downsample_index(series.iterations, series.values, max_points))
        series.ids = None
    return series
