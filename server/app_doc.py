"""One browser tab of the app: the session picker and the five pages over one store.

The periodic callback polls only the page on screen: each line reads what was written
since its cursor and streams it (a point written to the store shows within a second or
two); new sessions join the picker as they appear.
"""

from __future__ import annotations

import logging
from typing import Any

from bokeh.layouts import column, row
from bokeh.models import MultiChoice, RadioButtonGroup, Select  # type: ignore[attr-defined]
from embedviz.server import embeddings as emb_page
from embedviz.server import training
from embedviz.server.charts import div, esc, note, set_x_axis
from embedviz.server.messages import Messages, pick_language

from embedviz.store import SessionInfo, Store

log = logging.getLogger("embedviz.server")

PAGES = ("overview", "model", "system", "health", "embeddings")
TITLES = {"overview": "Overview", "model": "Model", "system": "System", "health": "Health",
          "embeddings": "Embeddings"}
POLL_MS = 500


def _option(s: SessionInfo) -> tuple[str, str]:
    tags = " ".join(f"{k}={v}" for k, v in (s.tags or {}).items())
    return s.id, f"{s.name or '-'} {('[' + tags + '] ') if tags else ''}({s.id})"


def _arg(doc: Any, name: str) -> str | None:
    ctx = getattr(doc, "session_context", None)
    req = getattr(ctx, "request", None) if ctx is not None else None
    if req is None:
        return None
    got = req.arguments.get(name)
    return got[0].decode("utf-8", "replace") if got else None


def _header(doc: Any, name: str) -> str | None:
    ctx = getattr(doc, "session_context", None)
    req = getattr(ctx, "request", None) if ctx is not None else None
    return None if req is None else req.headers.get(name)


def build_document(doc: Any, store: Store, *, lang: str | None = None,
                   page: str | None = None, sessions: list[str] | None = None) -> dict:
    """Fill ``doc`` with the app. URL arguments (``?page=model&session=ID&lang=ja``) pick
    the page, sessions and language when not given here. Returns the app's parts (tests
    read them)."""
    lang = pick_language(lang or _arg(doc, "lang"), _header(doc, "Accept-Language"))
    t = Messages(lang)
    page = page or _arg(doc, "page") or "overview"
    page = page if page in PAGES else "overview"
    doc.title = "embedviz"
    known = store.sessions()
    header = div(f"<div class='ev-head'><b>embedviz</b> &middot; {esc(store.url)}</div>",
                 sizing_mode="stretch_width")
    if not known and page != "embeddings" and not store.embeddings():
        doc.add_root(column(header, note(t("No sessions in this store yet: record one with "
                                           "StatsListener, or run `embedviz demo`.")),
                            sizing_mode="stretch_width"))
        return {"t": t}
    wanted = sessions or [x for x in (_arg(doc, "session") or "").split(",") if x]
    ids = [s.id for s in known]
    picked = [w for w in wanted if w in ids] or _default_sessions(store, known)
    choice = MultiChoice(title=t("Sessions"), options=[_option(s) for s in known], value=picked,
                         width=520, name="sessions")
    worker = Select(title=t("Worker"), options=[], value="", width=120, name="worker")
    xmode = RadioButtonGroup(labels=[t("Iteration"), t("Relative time (s)"), t("Wall time")],
                             active=0)
    # the page picker and the page under it: BokehJS does not draw a Tabs panel whose child
    # is replaced after the first render, a column's children it does
    tabs = RadioButtonGroup(labels=[t(TITLES[p]) for p in PAGES], active=PAGES.index(page),
                            name="pages")
    holder = column(sizing_mode="stretch_width", name="page")
    parts: dict[str, Any] = {"t": t, "tabs": tabs, "sessions": choice, "worker": worker,
                             "pages": {}, "store": store}
    built: dict[str, training.Page] = parts["pages"]

    def view() -> training.View:
        by_id = {s.id: s for s in store.sessions()}
        chosen = [by_id[i] for i in choice.value if i in by_id] or known[-1:]
        return training.View(store, chosen, worker.value or None, t)

    def go(layer: str | None, iteration: int) -> None:  # a finding's "show"
        tabs.active = PAGES.index("model")
        build("model", layer=layer, iteration=iteration)

    def build(name: str, **kw: Any) -> None:
        v = view()
        try:
            if name == "overview":
                p = training.overview(v)
            elif name == "model":
                p = training.model(v, kw.get("layer"), kw.get("iteration"))
            elif name == "system":
                p = training.system(v)
            elif name == "health":
                p = training.health(v, go)
            else:
                p = emb_page.embeddings(v)
        except Exception as exc:  # a page that cannot be drawn says why; the others work
            log.exception("embedviz: the %s page failed", name)
            p = training.Page(note(f"{name}: {type(exc).__name__}: {exc}"))
        built[name] = p
        if PAGES[tabs.active] == name:
            holder.children = [p.layout]
        if p.lines is not None:
            set_x_axis(p.lines.figures, ("iteration", "relative", "wall")[xmode.active or 0], t)

    def workers() -> None:
        v = view()
        names = [w.worker for w in v.sessions[0].workers] if v.sessions else []
        worker.options = names
        if worker.value not in names:
            worker.value = names[0] if names else ""

    def rebuild(*_: Any) -> None:
        built.clear()
        build(PAGES[tabs.active])

    def on_sessions(attr: str, old: list[str], new: list[str]) -> None:
        workers()
        rebuild()

    def on_tab(attr: str, old: int, new: int) -> None:
        if PAGES[new] in built:
            holder.children = [built[PAGES[new]].layout]
        else:
            build(PAGES[new])

    def on_x(attr: str, old: int, new: int) -> None:
        for p in built.values():
            if p.lines is not None:
                set_x_axis(p.lines.figures, ("iteration", "relative", "wall")[new], t)

    def tick() -> None:
        p = built.get(PAGES[tabs.active])
        try:
            if p is not None:
                p.poll()
            now = store.sessions()
            if len(now) != len(choice.options):
                choice.options = [_option(s) for s in now]
        except Exception:  # (a store busy or gone for a moment: the next tick tries again)
            log.warning("embedviz: the live update failed", exc_info=True)

    workers()
    build(page)
    choice.on_change("value", on_sessions)
    worker.on_change("value", lambda a, o, n: rebuild())
    tabs.on_change("active", on_tab)
    xmode.on_change("active", on_x)
    doc.add_root(column(header, row(choice, worker, column(div(esc(t("x axis"))), xmode)),
                        tabs, holder, sizing_mode="stretch_width"))
    parts["callback"] = doc.add_periodic_callback(tick, POLL_MS)
    parts["tick"], parts["build"] = tick, build
    return parts


def _default_sessions(store: Store, known: list[SessionInfo]) -> list[str]:
    """The newest session that has per-layer statistics (a training, not a word2vec run),
    else the newest."""
    for s in reversed(known):
        try:
            if any(k.startswith("param/") for k in store.series_keys(s.id)):
                return [s.id]
        except Exception:
            continue
    return [known[-1].id] if known else []
