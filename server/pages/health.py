"""Health: the findings of the sessions picked, worst first, in the page's language, live;
"Show" opens the model page of the finding's own session at its layer and iteration (the
overview, zoomed to where it began, for a finding about the score)."""

from __future__ import annotations

from typing import Any

from bokeh.models import (  # type: ignore[attr-defined]
    Button,
    ColumnDataSource,
    DataTable,
    StringFormatter,
    TableColumn,
)
from embedviz.server.findings import describe, severity_color, severity_text
from embedviz.server.page import Context, Page, div, esc, note, stack

from embedviz.health import SEVERITY_RANK
from embedviz.records import Finding


def _rows(ctx: Context, found: list[Finding]) -> dict[str, list]:
    t = ctx.t
    names = {s.id: ctx.label(s) for s in ctx.sessions}
    return {"severity": [severity_text(f.severity, t.lang) for f in found],
            "color": [severity_color(f.severity) for f in found],
            "check": [f.check for f in found],
            "session": [names.get(f.session, f.session) for f in found],
            "session_id": [f.session for f in found],
            "worker": [f.worker for f in found],
            "layer": [f.layer or "" for f in found],
            "iteration": [f.iteration for f in found],
            "message": [describe(f, t.lang) for f in found]}


def _height(rows: int) -> int:
    return int(min(520, 40 + 26 * max(rows, 1)))


def _order(found: list[Finding]) -> list[Finding]:
    return sorted(found, key=lambda f: (SEVERITY_RANK.get(f.severity, 3), f.iteration, f.check))


def _not_run(ctx: Context) -> Any:
    """The checks an imported session's data could not feed (kept in its info by the
    importer), grouped by why, per session."""
    t = ctx.t
    parts = []
    for s in ctx.sessions:
        info = s.info if isinstance(s.info, dict) else {}
        kept = (info.get("health") or {}).get("not_run") if isinstance(info.get("health"), dict) else None
        if not isinstance(kept, dict) or not kept:
            continue
        by: dict[str, list[str]] = {}
        for name, why in kept.items():
            by.setdefault(str(why), []).append(str(name))
        items = "".join(f"<li>{esc(', '.join(names))}: {esc(t(why))}</li>" for why, names in by.items())
        parts.append(f"<p><b>{esc(t('Checks that could not run for want of data'))}: "
                     f"{esc(ctx.label(s))}</b></p><ul>{items}</ul>")
    return div("".join(parts), sizing_mode="stretch_width", name="not-run", visible=bool(parts))


def build(ctx: Context) -> Page:
    t = ctx.t
    ids = {s.id for s in ctx.sessions}
    cursor = 0
    found: list[Finding] = []
    for c, f in ctx.provider.findings():
        cursor = max(cursor, c)
        if f.session in ids:
            found.append(f)
    found = _order(found)
    empty = note(t("No findings in the store for these sessions: the health checks have not "
                   "run, or found nothing."), name="no-findings")
    src = ColumnDataSource(_rows(ctx, found), name="findings")
    text = StringFormatter()
    sev = StringFormatter(text_color="color", font_style="bold")
    table = DataTable(source=src, sizing_mode="stretch_width", height=_height(len(found)),
                      index_position=None,
                      name="findings-table", visible=bool(found), columns=[
        TableColumn(field="severity", title=t("Severity"), width=70, formatter=sev),
        TableColumn(field="check", title=t("Check"), width=140, formatter=text),
        TableColumn(field="session", title=t("Session"), width=140, formatter=text),
        TableColumn(field="worker", title=t("Worker"), width=60, formatter=text),
        TableColumn(field="layer", title=t("Layer"), width=90, formatter=text),
        TableColumn(field="iteration", title=t("Iteration"), width=70),
        TableColumn(field="message", title=t("Message"), width=560, formatter=text)])
    # (a table cell cuts a long message: the chosen finding's reads whole below the table)
    whole = div("", sizing_mode="stretch_width", name="finding")
    empty.visible = not found
    button = Button(label=t("Show"), width=120, disabled=True, name="show-finding")
    state: dict[str, Any] = {"cursor": cursor, "found": found}

    def chosen(attr: str, old: list[int], new: list[int]) -> None:
        button.disabled = not new
        if new:
            f = state["found"][new[0]]
            # (a session of several workers: which one the finding is about)
            who = (f" [{t('worker')} {f.worker}]"
                   if len(ctx.provider.workers(f.session)) > 1 else "")
            whole.text = (f"<p><b>{esc(severity_text(f.severity, t.lang))}: {esc(f.check)}"
                          f"{esc(' (' + f.layer + ')') if f.layer else ''}{esc(who)}</b><br>"
                          f"{esc(describe(f, t.lang))}</p>")
        else:
            whole.text = ""
    src.selected.on_change("indices", chosen)

    def open_it() -> None:
        idx = src.selected.indices
        if not idx:
            return
        f = state["found"][idx[0]]
        others = [s.id for s in ctx.sessions if s.id != f.session]
        if f.layer:
            ctx.go("model", sessions=[f.session, *others], worker=f.worker, layer=f.layer,
                   it=str(f.iteration))
        else:
            ctx.go("overview", sessions=[f.session, *others], worker=f.worker)
    button.on_click(open_it)

    def poll() -> None:
        new = ctx.provider.findings(state["cursor"])
        if not new:
            return
        state["cursor"] = max(c for c, _ in new)
        fresh = [f for _, f in new if f.session in ids]
        if not fresh:
            return
        state["found"] = _order(state["found"] + fresh)
        src.selected.indices = []
        src.data = _rows(ctx, state["found"])
        table.visible, empty.visible = True, False
        table.height = _height(len(state["found"]))

    title = div(f"<b>{esc(t('Findings, worst first'))}</b>")
    layout: Any = stack(title, empty, table, button, whole, _not_run(ctx))
    return Page(layout, polls=[poll])


__all__ = ["build"]
