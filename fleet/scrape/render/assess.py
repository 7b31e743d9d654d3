"""The page heuristic: does the HTTP body say JavaScript builds this page?

Pure functions over bytes and text (no browser, no NATS): ``assess`` gives a verdict
(render, sample or http) with its reason; ``domain_of`` names the unit of learning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlsplit

Verdict = Literal["render", "sample", "http"]


_SPA_ROOT: Final = re.compile(
    rb"<(?:div|main|section|body)\b[^>]*"
    rb"(?:\bid\s*=\s*[\"']?(?:root|app|__next|__nuxt|svelte|q-app|main-app)[\"'\s>]"
    rb"|\bdata-reactroot\b|\bng-version\b|\bng-app\b)"
    rb"[^>]*>\s*(?:<noscript\b[^>]*>.*?</noscript>\s*)?</(?:div|main|section|body)>",
    re.IGNORECASE | re.DOTALL,
)


_SCRIPT: Final = re.compile(rb"<script\b([^>]*)>(.*?)</script\s*>", re.IGNORECASE | re.DOTALL)


_SRC_ATTR: Final = re.compile(rb"\bsrc\s*=", re.IGNORECASE)


_JSON_TYPE: Final = re.compile(rb"\btype\s*=\s*[\"']?application/(?:ld\+)?json", re.IGNORECASE)


_NOSCRIPT: Final = re.compile(rb"<noscript\b[^>]*>(.*?)</noscript\s*>", re.IGNORECASE | re.DOTALL)


_NEEDS_JS: Final = re.compile(
    rb"(?:enable|activate|turn on|requires?|need|needs)\b[^<]{0,40}javascript"
    rb"|javascript[^<]{0,40}(?:required|enabled|disabled|is off)",
    re.IGNORECASE,
)


# An external script weighs like this many characters of inline code: its size is unknown,
# but a bundle loaded from the page is rarely small.
EXTERNAL_SCRIPT_WEIGHT: Final = 2000


THIN_TEXT_CHARS: Final = 200  # less visible text than this is "little"


BORDERLINE_TEXT_CHARS: Final = 2000  # more than this and the page stands on its own


SCRIPT_HEAVY_RATIO: Final = 10.0  # script weight per character of visible text


@dataclass(frozen=True, slots=True)
class Assessment:
    """What the HTTP body says about the need to render: render it, sample it, or not."""

    verdict: Verdict
    reason: str
    text_chars: int
    script_chars: int


def script_weight(body: bytes) -> int:
    """Characters of executable script in a page, external scripts counted at a flat weight."""
    weight = 0
    for attrs, code in _SCRIPT.findall(body):
        if _JSON_TYPE.search(attrs):
            continue  # data islands (JSON-LD, __NEXT_DATA__ ...) are not code
        weight += EXTERNAL_SCRIPT_WEIGHT if _SRC_ATTR.search(attrs) else len(code.strip())
    return weight


def assess(body: bytes, text: str) -> Assessment:
    """Decide from the HTTP body and the text extracted from it whether to render.

    ``render``: the page's own markup says JavaScript builds it (empty SPA root with little
    text, <noscript> asking for JavaScript): rendered at once. ``sample``: it might (much
    more script than text, ``script_heavy``, or just more, ``borderline``): the domain's
    learning decides (``fleet.scrape.render.policy``). ``http``: the HTTP result stands.
    """
    text_chars = len(text)
    scripts = script_weight(body)
    # An empty mount point only matters if the page has little else to show.
    thin = text_chars < THIN_TEXT_CHARS or scripts > text_chars
    if text_chars < BORDERLINE_TEXT_CHARS and thin and _SPA_ROOT.search(body):
        return Assessment("render", "spa_root", text_chars, scripts)
    if text_chars < THIN_TEXT_CHARS:
        for inner in _NOSCRIPT.findall(body):
            if _NEEDS_JS.search(inner):
                return Assessment("render", "noscript", text_chars, scripts)
    # A lot of script for the text: a loading shell, or a short page of a static site that
    # loads a few scripts (a documentation index). Only the domain's samples can tell.
    if text_chars < BORDERLINE_TEXT_CHARS and scripts >= SCRIPT_HEAVY_RATIO * max(
        text_chars, THIN_TEXT_CHARS // 2
    ):
        return Assessment("sample", "script_heavy", text_chars, scripts)
    if text_chars < BORDERLINE_TEXT_CHARS and scripts > text_chars:
        return Assessment("sample", "borderline", text_chars, scripts)
    return Assessment("http", "static", text_chars, scripts)


def rendering_helped(http_chars: int, rendered_chars: int) -> bool:
    """A sample counts for rendering when it shows much more text than HTTP did."""
    return rendered_chars >= 1.5 * http_chars + 100


def domain_of(url: str) -> str:
    """The unit of learning: the host, with the port when it is not the default one."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return f"{host}:{parts.port}" if parts.port else host
