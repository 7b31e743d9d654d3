"""Turn a fetched body into a document: title, text, links... Pure and synchronous.

This is the worker's hot path, so the heavy lifting (parsing, tag stripping, text
concatenation, whitespace collapsing) stays in C: lexbor via selectolax, and str methods.
Python only loops over links and headings.
"""

from __future__ import annotations

import codecs
import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Final
from urllib.parse import urljoin, urlsplit

from selectolax.lexbor import LexborHTMLParser, LexborNode

from fleet.errors import InvalidUrl
from fleet.urls import normalize_url

MAX_HEADINGS: Final = 64
MAX_HEADING_CHARS: Final = 300
MAX_TITLE_CHARS: Final = 1000
MAX_DESCRIPTION_CHARS: Final = 2000
SNIFF_BYTES: Final = 2048

# Never visible text; removed from the whole tree before anything is read.
_INVISIBLE_TAGS: Final = ["script", "style", "noscript", "template", "svg", "iframe"]
# Page chrome: removed from the text when falling back to <body>. Inside <main>/<article>
# header/footer usually hold the article's own title and byline, so only nav/aside go.
_CHROME_TAGS: Final = ["nav", "header", "footer", "aside"]
_CHROME_TAGS_IN_MAIN: Final = ["nav", "aside"]

# Python-only codecs that a hostile or broken page could name: not web encodings.
_REFUSED_CODECS: Final = frozenset(
    {"idna", "punycode", "unicode_escape", "raw_unicode_escape", "undefined", "utf-7"}
)
_META_CHARSET_RE: Final = re.compile(
    rb"""<meta[^>]+?charset\s*=\s*["']?\s*([A-Za-z0-9_.:+-]{1,40})""", re.IGNORECASE
)
_SKIPPED_SCHEMES: Final = ("javascript:", "mailto:", "tel:", "data:", "about:", "blob:")
_URL_WS_TABLE: Final = str.maketrans({"\t": None, "\n": None, "\r": None})
_FAST_MAX_LEN: Final = 2048
# Absolute http(s) URL whose host needs no normalising (lowercase ASCII, no port/userinfo).
_FAST_ABS_RE: Final = re.compile(r"(https?)://([a-z0-9][a-z0-9.-]*)(/[^?#]*)?\Z")


@dataclass(frozen=True, slots=True)
class Extracted:
    """What ``extract`` read from a page; ``text`` is the main content, whitespace collapsed.

    ``canonical_url`` is the page's ``<link rel=canonical>`` when same-origin (a page cannot
    claim another site's document), else its own normalized URL; ``content_hash`` is the
    BLAKE2b-128 of ``text``.
    """

    title: str
    description: str
    headings: list[str]
    text: str
    lang: str
    canonical_url: str
    links: list[str]
    content_hash: str
    # <meta name="robots" content="nofollow|none">: the links are not to be followed.
    nofollow: bool = False


@lru_cache(maxsize=256)
def _codec(label: str) -> str | None:
    """Python codec name for a charset label, or None if unknown or not a web encoding."""
    label = label.strip().strip("\"'").lower()
    if not label:
        return None
    try:
        info = codecs.lookup(label)
    except (LookupError, ValueError):  # ValueError: labels with NUL and the like
        return None
    if not info._is_text_encoding or info.name in _REFUSED_CODECS:
        return None
    # As browsers do (WHATWG Encoding): these labels mean windows-1252, and pages labelled
    # latin-1 routinely contain cp1252 curly quotes in 0x80-0x9f.
    if info.name in ("iso8859-1", "ascii", "latin-1"):
        return "cp1252"
    return info.name


def _pick_encoding(body: bytes, charset: str | None) -> tuple[str, int]:
    """(codec, number of BOM bytes to skip).

    Order: byte-order mark, header charset, <meta> in the first 2 KB, UTF-8. The BOM
    goes first as in browsers: it cannot be there by accident, whereas header charsets
    are often server defaults that disagree with the file.
    """
    if body[:3] == codecs.BOM_UTF8:
        return "utf-8", 3
    if body[:2] == codecs.BOM_UTF16_LE:
        return "utf-16-le", 2
    if body[:2] == codecs.BOM_UTF16_BE:
        return "utf-16-be", 2
    if charset:
        name = _codec(charset)
        if name is not None:
            return name, 0
    match = _META_CHARSET_RE.search(body, 0, SNIFF_BYTES)
    if match is not None:
        name = _codec(match.group(1).decode("ascii"))
        # A <meta> readable as ASCII cannot honestly declare UTF-16/32 (HTML spec: utf-8).
        if name is not None and not name.startswith(("utf-16", "utf-32")):
            return name, 0
    return "utf-8", 0


def decode_body(body: bytes, charset: str | None) -> str:
    """Decode a body to text: BOM, header charset, <meta> sniffing, then UTF-8; never raises."""
    name, skip = _pick_encoding(body, charset)
    data = body[skip:] if skip else body
    try:
        return data.decode(name, errors="replace")
    except (LookupError, UnicodeError, ValueError, TypeError):
        return data.decode("utf-8", errors="replace")


_SPACE_LIKE = ("\n", "\r", "\t", "\f", "\v", "\xa0")


def _collapse(text: str | None) -> str:
    """Collapse runs of whitespace to one space.

    Hot path (tens of KB per page), kept to C string methods and one scan for runs: the
    single-character replaces are memchr-fast, and ``split("  ")`` finds every run of two
    or more spaces in one pass (a replace("  ", " ") loop scans the text once per halving,
    ~1.5 ms on a 100 KB page; " ".join(text.split()) builds a list of every word). Rarer
    Unicode spaces are left as they are; the search tokenizers treat them as separators.
    """
    if not text:
        return ""
    for ch in _SPACE_LIKE:
        if ch in text:
            text = text.replace(ch, " ")
    parts = text.split("  ")
    if len(parts) > 1:
        # Each piece may keep one space next to a run (odd runs); empty pieces are runs of 4+.
        text = " ".join([p for p in (q.strip(" ") for q in parts) if p])
    return text.strip()


def _node_text(node: LexborNode) -> str:
    return _collapse(node.text(separator=" ", strip=True, skip_empty=True))


def _same_origin_norm(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _clean_href(href: str) -> str | None:
    """The href as a URL parser should see it, or None for ones that are never pages."""
    href = href.strip()
    if not href or href[0] == "#":
        return None  # fragment-only: the page itself
    head = href[:12].lower()
    if ":" in head and head.startswith(_SKIPPED_SCHEMES):
        return None
    if "\t" in href or "\n" in href or "\r" in href:
        href = href.translate(_URL_WS_TABLE)  # browsers drop these from URLs
    if " " in href:
        href = href.replace(" ", "%20")  # and percent-encode spaces
    return href


def _resolve(base: str, href: str) -> str | None:
    """Absolute, normalised http(s) URL for an href, or None to skip it."""
    cleaned = _clean_href(href)
    if cleaned is None:
        return None
    return _slow_resolve(base, cleaned)


def _slow_resolve(base: str, href: str) -> str | None:
    try:
        return normalize_url(urljoin(base, href))
    except (InvalidUrl, ValueError):
        return None


class _LinkResolver:
    """``normalize_url(urljoin(base, href))`` with a fast path for the common shapes.

    urljoin + normalize_url cost 10-20 us per link, which made links most of the
    extraction time of a typical page. Plain "/path", "path", "../path" and
    "http(s)://lowercase.host/path" hrefs are joined by string operations (1-3 us) that give
    the identical result (a test compares both on many shapes); anything unusual (inner
    dot segments, ";", ports, IDNA, "//"...) takes the slow path.
    """

    __slots__ = ("_base", "_base_dir", "_base_dirs", "_base_path", "_origin")

    def __init__(self, base: str) -> None:
        self._base = base
        parts = urlsplit(base)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        path = parts.path or "/"
        simple = not (";" in path or "/." in path or "//" in path)
        self._base_path: str | None = path if simple else None
        self._base_dir: str | None = path[: path.rfind("/") + 1] if simple else None
        self._base_dirs: list[str] = [d for d in (self._base_dir or "").split("/") if d]

    def resolve(self, href: str) -> str | None:
        cleaned = _clean_href(href)
        if cleaned is None:
            return None
        fast = self._fast(cleaned)
        return fast if fast is not None else _slow_resolve(self._base, cleaned)

    def _fast(self, href: str) -> str | None:
        if len(href) > _FAST_MAX_LEN or not href.isprintable():
            return None
        ref = href.partition("#")[0]
        path, _, query = ref.partition("?")
        suffix = f"?{query}" if query else ""
        first = href[0]
        if first == "/":
            if href[1:2] == "/" or ";" in path or "/." in path:
                return None
            return f"{self._origin}{path}{suffix}"
        if first == "?":
            if not query or self._base_path is None:
                return None
            return f"{self._origin}{self._base_path}{suffix}"
        if first == "h" and (match := _FAST_ABS_RE.match(path)) is not None:
            return None if ";" in path else f"{match[1]}://{match[2]}{match[3] or '/'}{suffix}"
        return self._fast_relative(path, suffix)

    def _fast_relative(self, path: str, suffix: str) -> str | None:
        """A relative path ("a/b", "./a", "../../a") against the base directory."""
        base_dir = self._base_dir
        if base_dir is None or ":" in path or ";" in path or "//" in path:
            return None
        if path[0] == ".":
            path, ups = _strip_dot_segments(path)
            if ups:
                # Climb the base directory, never above the root, as urljoin does.
                kept = self._base_dirs[: max(0, len(self._base_dirs) - ups)]
                base_dir = f"/{'/'.join(kept)}/" if kept else "/"
        if path.startswith(".") or "/." in path:
            return None
        return f"{self._origin}{base_dir}{path}{suffix}"


def _strip_dot_segments(path: str) -> tuple[str, int]:
    """Leading "./" and "../" (very common in static sites) off ``path``, and how many
    directories the "../" climb."""
    ups = 0
    while True:
        if path.startswith("../"):
            ups += 1
            path = path[3:]
        elif path.startswith("./"):
            path = path[2:]
        elif path == "..":
            return "", ups + 1
        elif path == ".":
            return "", ups
        else:
            return path, ups


def _lang(tree: LexborHTMLParser) -> str:
    raw: str | None = None
    html = tree.root
    if html is not None:
        raw = html.attrs.get("lang") or html.attrs.get("xml:lang")
    if not raw:
        meta = tree.css_first('meta[http-equiv="content-language" i][content]')
        if meta is not None:
            raw = (meta.attrs.get("content") or "").split(",", 1)[0]
    if not raw:
        return ""
    primary = raw.strip().replace("_", "-").split("-", 1)[0].lower()
    return primary if primary.isascii() and primary.isalpha() and len(primary) <= 8 else ""


def _meta_content(tree: LexborHTMLParser, selector: str) -> str:
    node = tree.css_first(selector)
    if node is None:
        return ""
    return _collapse(node.attrs.get("content"))


def _content_root(tree: LexborHTMLParser) -> LexborNode | None:
    main = tree.css_first('main, [role="main"]')
    if main is not None:
        main.strip_tags(_CHROME_TAGS_IN_MAIN, recursive=True)
        return main
    articles = tree.css("article")
    if len(articles) == 1:  # several articles: a listing page, the body says more
        articles[0].strip_tags(_CHROME_TAGS_IN_MAIN, recursive=True)
        return articles[0]
    body = tree.body
    if body is not None:
        body.strip_tags(_CHROME_TAGS, recursive=True)
    return body


def _headings(root: LexborNode) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for node in root.css("h1, h2, h3"):
        text = _node_text(node)[:MAX_HEADING_CHARS]
        if text and text not in seen:
            seen.add(text)
            out.append(text)
            if len(out) >= MAX_HEADINGS:
                break
    return out


def _links(tree: LexborHTMLParser, base: str, max_links: int) -> list[str]:
    out: list[str] = []
    if max_links <= 0:
        return out
    resolve = _LinkResolver(base).resolve
    seen_raw: set[str] = set()
    seen: set[str] = set()
    for node in tree.css("a[href], area[href]"):
        attrs = node.attributes  # faster than .attrs for a lookup or two
        href = attrs.get("href")
        # Pages repeat the same href many times (menus, pagination): resolve each once.
        if not href or href in seen_raw:
            continue
        rel = attrs.get("rel")
        if rel and "nofollow" in rel.lower().split():
            continue  # the page does not vouch for it: neither kept nor followed
        seen_raw.add(href)
        url = resolve(href)
        if url is None or url in seen:
            continue
        seen.add(url)
        out.append(url)
        if len(out) >= max_links:
            break
    return out


def _meta_nofollow(tree: LexborHTMLParser) -> bool:
    """<meta name="robots" content="... nofollow ..."> (or "none")."""
    for node in tree.css('meta[name="robots" i][content]'):
        words = (node.attrs.get("content") or "").lower().replace(",", " ").split()
        if "nofollow" in words or "none" in words:
            return True
    return False


def _hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", errors="surrogatepass"), digest_size=16).hexdigest()


def _parse(body: bytes, charset: str | None) -> LexborHTMLParser:
    name, skip = _pick_encoding(body, charset)
    if name == "utf-8":
        # lexbor reads UTF-8 bytes itself (invalid sequences become U+FFFD): saves a
        # decode to str and lexbor's re-encode of it.
        return LexborHTMLParser(body[skip:] if skip else body)
    return LexborHTMLParser(decode_body(body, charset))


def extract(
    body: bytes, *, final_url: str, content_type: str, charset: str | None, max_links: int
) -> Extracted:
    """Extract a document from a fetched body (HTML or text/plain)."""
    try:
        page_url = normalize_url(final_url)
    except InvalidUrl:
        page_url = final_url  # the fetcher only hands over fetched, valid URLs; stay total

    if content_type == "text/plain":
        text = _collapse(decode_body(body, charset))
        return Extracted(
            title="",
            description="",
            headings=[],
            text=text,
            lang="",
            canonical_url=page_url,
            links=[],
            content_hash=_hash(text),
        )

    tree = _parse(body, charset)
    tree.strip_tags(_INVISIBLE_TAGS, recursive=True)

    base = page_url
    base_node = tree.css_first("base[href]")
    if base_node is not None:
        resolved = _resolve(page_url, base_node.attrs.get("href") or "")
        if resolved is not None:
            base = resolved

    title_node = tree.css_first("title")
    title = _node_text(title_node) if title_node is not None else ""
    if not title:
        title = _meta_content(tree, 'meta[property="og:title" i]')
    description = _meta_content(tree, 'meta[name="description" i]') or _meta_content(
        tree, 'meta[property="og:description" i]'
    )

    canonical_url = page_url
    canonical = tree.css_first('link[rel~="canonical" i][href]')
    if canonical is not None:
        candidate = _resolve(base, canonical.attrs.get("href") or "")
        # Only same scheme+host(+port): a page must not be able to claim another site's
        # identity and overwrite that site's document in the index.
        if candidate is not None and _same_origin_norm(candidate) == _same_origin_norm(page_url):
            canonical_url = candidate

    links = _links(tree, base, max_links)
    nofollow = _meta_nofollow(tree)
    lang = _lang(tree)

    # Mutates the tree (drops chrome), so it runs after everything read from the full page.
    root = _content_root(tree)
    headings = _headings(root) if root is not None else []
    text = _node_text(root) if root is not None else ""

    return Extracted(
        title=title[:MAX_TITLE_CHARS],
        description=description[:MAX_DESCRIPTION_CHARS],
        headings=headings,
        text=text,
        lang=lang,
        canonical_url=canonical_url,
        links=links,
        content_hash=_hash(text),
        nofollow=nofollow,
    )
