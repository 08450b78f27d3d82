"""How a finding reads on a page: its message in the page's language, its severity's word
and colour (the words live with the checks, in embedviz.health)."""

from __future__ import annotations

from embedviz.health import SEVERITY_TEXT
from embedviz.health import describe as _describe
from embedviz.records import Finding

SEVERITY_COLORS = {"error": "#d62728", "warning": "#e6550d", "info": "#1f77b4"}


def describe(finding: Finding, lang: str = "en") -> str:
    """The finding's message in ``lang`` (its stored English text where it has no other)."""
    return _describe(finding, lang)


def severity_text(severity: str, lang: str = "en") -> str:
    return SEVERITY_TEXT.get(lang, SEVERITY_TEXT["en"]).get(severity, severity)


def severity_color(severity: str) -> str:
    return SEVERITY_COLORS.get(severity, "#888888")


__all__ = ["SEVERITY_COLORS", "describe", "severity_color", "severity_text"]
