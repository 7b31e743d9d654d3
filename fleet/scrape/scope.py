"""Which links a crawl follows: scope, include/exclude patterns, obvious non-HTML. Pure.

A crawl's seeds define its scope (the union over seeds):

* ``host``: the seed's host (and port), either scheme;
* ``domain``: the seed's registrable domain (``docs.python.org`` -> ``python.org``, by the
  Public Suffix List that tldextract ships; no network), any subdomain, either scheme;
* ``prefix`` (the default): the seed's scheme, host and path up to its last ``/``
  (``https://a.org/docs/intro.html`` -> ``https://a.org/docs/``);
* ``any``: every http(s) URL.

Then ``include`` patterns (regular expressions searched in the normalised URL; with any
given, one must match) and ``exclude`` patterns (none may match). Links to obvious non-HTML
files (images, archives, media, fonts, documents, by extension) are never requested.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final
from urllib.parse import urlsplit

from fleet.errors import ConfigError
from fleet.messages import CrawlScopeName

SCOPES: Final = ("host", "domain", "prefix", "any")

# Verdicts (also the `skipped` reasons of a crawl).
IN_SCOPE: Final = ""
OUT_OF_SCOPE: Final = "scope"
FILTERED: Final = "filtered"
NOT_HTML: Final = "not_html"

NON_HTML_EXTENSIONS: Final = frozenset(
    {
        # images
        "png", "jpg", "jpeg", "gif", "webp", "svg", "ico", "bmp", "tif", "tiff", "avif",
        "heic",
        # archives and packages
        "zip", "tar", "gz", "tgz", "bz2", "xz", "7z", "rar", "zst", "whl", "deb", "rpm",
        "dmg", "iso", "exe", "msi", "apk", "jar",
        # audio and video
        "mp3", "mp4", "m4a", "m4v", "ogg", "oga", "ogv", "webm", "wav", "flac", "avi",
        "mov", "mkv", "wmv", "mpg", "mpeg",
        # fonts
        "woff", "woff2", "ttf", "otf", "eot",
        # documents, data and assets fleet does not extract
        "pdf", "doc", "docx", "xls", "xlsx", "ppt", "pptx", "odt", "ods", "odp", "epub",
        "css", "js", "mjs", "map", "wasm", "bin",
    }
)  # fmt: skip


class ScopeError(ConfigError):
    """A crawl's scope or patterns cannot be used; the message names the fix."""

    reason = "invalid_scope"


def non_html(url: str) -> bool:
    """True for a URL whose path ends in an extension of an obvious non-HTML file."""
    path = urlsplit(url).path
    tail = path.rsplit("/", 1)[-1]
    if "." not in tail:
        return False
    return tail.rsplit(".", 1)[-1].lower() in NON_HTML_EXTENSIONS


def prefix_of(seed: str) -> str:
    """The ``prefix`` scope of a (normalised) seed: scheme, host, path up to its last /."""
    parts = urlsplit(seed)
    path = parts.path or "/"
    return f"{parts.scheme}://{parts.netloc}{path[: path.rfind('/') + 1]}"


@lru_cache(maxsize=1)
def _suffixes() -> Any:
    # Loaded on first use (--scope domain only): its import and list cost ~0.1 s, which every
    # worker would otherwise pay at start-up. Offline: the Public Suffix List snapshot that
    # tldextract bundles, never fetched.
    import tldextract  # noqa: PLC0415

    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


@lru_cache(maxsize=4096)
def registrable_domain(host: str) -> str:
    """``docs.python.org`` -> ``python.org``; an IP address or a bare name is itself."""
    ext = _suffixes()(host)
    return str(ext.top_domain_under_public_suffix or host)


@dataclass(frozen=True)
class _SeedScope:
    netloc: str
    domain: str
    prefix: str


@dataclass(frozen=True)
class CrawlScope:
    """The follow rules of one crawl; ``verdict(url)`` is "" (follow) or a skip reason."""

    scope: CrawlScopeName
    seeds: tuple[_SeedScope, ...]
    include: tuple[re.Pattern[str], ...]
    exclude: tuple[re.Pattern[str], ...]

    @classmethod
    def build(
        cls,
        seeds: Iterable[str],
        scope: str = "prefix",
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
    ) -> CrawlScope:
        """From normalised seed URLs; a bad scope or pattern is a ScopeError naming it."""
        if scope not in SCOPES:
            raise ScopeError(f"scope {scope!r} is not one of {', '.join(SCOPES)}")
        parsed = []
        for seed in seeds:
            parts = urlsplit(seed)
            domain = registrable_domain(parts.hostname or "") if scope == "domain" else ""
            parsed.append(_SeedScope(parts.netloc, domain, prefix_of(seed)))
        return cls(
            scope=scope,  # type: ignore[arg-type]  # checked against SCOPES above
            seeds=tuple(parsed),
            include=tuple(_compile(p, "--include") for p in include),
            exclude=tuple(_compile(p, "--exclude") for p in exclude),
        )

    def in_scope(self, url: str) -> bool:
        """Whether a normalised http(s) URL is inside the scope (patterns aside)."""
        if self.scope == "any":
            return True
        if self.scope == "prefix":
            return any(url.startswith(s.prefix) for s in self.seeds)
        parts = urlsplit(url)
        if self.scope == "host":
            return any(parts.netloc == s.netloc for s in self.seeds)
        domain = registrable_domain(parts.hostname or "")
        return any(domain == s.domain for s in self.seeds)

    def passes(self, url: str) -> bool:
        """The include/exclude patterns: one include matches (if any), no exclude does."""
        if self.include and not any(p.search(url) for p in self.include):
            return False
        return not any(p.search(url) for p in self.exclude)

    def verdict(self, url: str) -> str:
        """ "" to follow a normalised link, else why not: scope, not_html or filtered."""
        if not self.in_scope(url):
            return OUT_OF_SCOPE
        if non_html(url):
            return NOT_HTML
        if not self.passes(url):
            return FILTERED
        return IN_SCOPE


def _compile(pattern: str, flag: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ScopeError(f"{flag} {pattern!r} is not a valid regular expression: {exc}") from None
