"""Deterministic generator of a realistic-looking static site for the benchmark.

Every page is plain HTML between MIN_PAGE_BYTES and MAX_PAGE_BYTES with the structure of a
typical content site: ``<html lang>``, a ``<head>`` with title, meta description, canonical,
Open Graph tags, JSON-LD, inline ``<style>`` and ``<script>``; a header with navigation and
breadcrumbs; a ``<main>`` article with h1/h2/h3 headings, paragraphs of word-salad text, lists,
sometimes a table, a quote or a code block; an aside of related links and a footer.

Each page links to 20-80 other pages of the site (root-relative and relative hrefs, a few with
fragments or query strings) and to a few external pages on the reserved example.* domains,
which are only ever extracted, never fetched.

Same ``pages`` and ``seed`` -> byte-identical site. Text comes from pools of sentences and
paragraphs built once, so generating 2,000 pages takes a couple of seconds.
"""

from __future__ import annotations

import dataclasses
import html
import math
import posixpath
import random
import re
from pathlib import Path
from urllib.parse import quote

MIN_PAGE_BYTES = 20_000
MAX_PAGE_BYTES = 150_000
MIN_INTERNAL_LINKS = 20
MAX_INTERNAL_LINKS = 80

SITE_NAME = "Northwind Field Notes"
SECTIONS = ("docs", "blog", "news", "products", "guides", "help", "community", "research")
LANGS = ("en", "en", "en", "en", "en-GB", "en-US", "de", "fr")
EXTERNAL_HOSTS = ("https://example.org", "https://www.example.com", "https://example.net")

_COMMON_WORDS = """
the of and to in is that for it as was with be by on not he this are or his from at which
but have an they you were her she there been one all we their has would when if so no will
what can more other time about some into them only could new these may then do first any
like now my such over our even most made after also did many before must through back years
where much your way well down should because each just those people how too little state
good very make world still own see men work long get here between both life being under
never day same another know while last might us great old year off come since against go
came right used take three system data network server client request response cache queue
stream worker index search page link crawler fetch parse text document content river stone
forest mountain harbour signal engine bridge garden market station archive library museum
weather season island valley canyon meadow orchard village county province coastal northern
southern eastern western ancient modern rapid steady quiet bright narrow broad hidden open
simple complex careful practical general special public private local global early late
report review survey study analysis method result measure sample model theory practice
""".split()  # noqa: SIM905

_ACCENTED = ("café", "naïve", "Zürich", "façade", "résumé", "coöperate", "São", "Málaga", "Øresund")
_SYLLABLES = (  # noqa: SIM905
    "ka lo mi ne ra ti su ve do pa re sa ta lu mo ni ve ko ba di fe ga ha ji ku la ma no pe "
    "qui ro se tu vi wa xe yo zu an el in on ur ar er ir or as es is os us al il ol ul"
).split()

_CSS_PROPS = (
    "margin: 0 auto",
    "padding: 0.5rem 1rem",
    "color: #222",
    "background: #fafafa",
    "font-family: system-ui, sans-serif",
    "line-height: 1.6",
    "max-width: 72rem",
    "display: flex",
    "gap: 1rem",
    "border-bottom: 1px solid #ddd",
    "font-size: 0.875rem",
    "text-decoration: none",
    "grid-template-columns: repeat(auto-fill, minmax(12rem, 1fr))",
    "transition: color 0.2s ease-in-out",
)
_JS_LINES = (
    "  const el = document.querySelector('[data-{w}]');",
    "  if (el && el.dataset.{w} !== undefined) {{ el.classList.add('is-{w}'); }}",
    "  window.dataLayer = window.dataLayer || []; window.dataLayer.push({{event: '{w}'}});",
    "  document.addEventListener('DOMContentLoaded', function () {{ init_{w}(); }});",
    "  var {w}Count = {n}; for (var i = 0; i < {w}Count; i++) {{ track('{w}', i); }}",
    "  fetch('/api/{w}?v={n}').then(function (r) {{ return r.json(); }}).catch(function () {{}});",
)


@dataclasses.dataclass(frozen=True)
class GeneratedSite:
    root: Path
    paths: list[str]  # URL paths, one per page, in URL-list order
    total_bytes: int
    min_bytes: int
    max_bytes: int
    internal_links: int
    external_links: int

    @property
    def pages(self) -> int:
        return len(self.paths)


def file_for_path(url_path: str) -> str:
    """Relative file name of the page served at ``url_path`` ("/a/" -> "a/index.html")."""
    rel = url_path.lstrip("/")
    return rel + "index.html" if url_path.endswith("/") else rel


class _Text:
    """Vocabulary, sentence and paragraph pools (all HTML-escaped), drawn from one RNG."""

    def __init__(self, rng: random.Random) -> None:
        synthetic: set[str] = set()
        while len(synthetic) < 2500:
            synthetic.add("".join(rng.choices(_SYLLABLES, k=rng.randint(2, 4))))
        # Common English words keep the top ranks (Zipf below); invented words fill the tail.
        invented = sorted(synthetic - set(_COMMON_WORDS))
        rng.shuffle(invented)
        words = list(dict.fromkeys(_COMMON_WORDS)) + invented
        self.slug_words = [w for w in words if w.isascii() and w.isalpha()]
        self.words = words + list(_ACCENTED)
        # Zipf-like frequencies: a few words are everywhere, most are rare.
        weights = [1.0 / (rank + 1) ** 0.9 for rank in range(len(self.words))]
        self.cum_weights = list(_accumulate(weights))
        self.rng = rng
        self.sentences = [self._sentence() for _ in range(6000)]
        self.paragraphs = [
            " ".join(rng.choices(self.sentences, k=rng.randint(2, 7))) for _ in range(3000)
        ]
        self.short = [s for s in self.sentences if len(s) < 90]
        self.headings = [self.title(rng.randint(2, 6)) for _ in range(4000)]
        self.anchors = [self.phrase() for _ in range(4000)]

    def anchor(self) -> str:
        return self.rng.choice(self.anchors)

    def heading(self) -> str:
        return self.rng.choice(self.headings)

    def _sentence(self) -> str:
        rng = self.rng
        words = rng.choices(self.words, cum_weights=self.cum_weights, k=rng.randint(6, 24))
        if len(words) > 10 and rng.random() < 0.4:
            words[rng.randint(3, len(words) - 4)] += ","
        if rng.random() < 0.05:
            words.insert(rng.randint(1, len(words) - 1), "&")
        if rng.random() < 0.04:
            words.insert(rng.randint(1, len(words) - 1), "\u2014")
        text = " ".join(words)
        end = rng.choices((".", "?", "!", "\u2026"), weights=(90, 5, 3, 2))[0]
        sentence = text[0].upper() + text[1:] + end
        if rng.random() < 0.03:
            sentence = f"\u201c{sentence}\u201d"
        return html.escape(sentence, quote=False)

    def title(self, k: int) -> str:
        return " ".join(w.capitalize() for w in self.rng.choices(self.slug_words, k=k))

    def slug(self, k: int) -> str:
        return "-".join(self.rng.choices(self.slug_words, k=k))

    def paragraph(self) -> str:
        return self.rng.choice(self.paragraphs)

    def phrase(self, lo: int = 2, hi: int = 5) -> str:
        return " ".join(self.rng.choices(self.slug_words, k=self.rng.randint(lo, hi)))


def _accumulate(values: list[float]) -> list[float]:
    total = 0.0
    out: list[float] = []
    for v in values:
        total += v
        out.append(total)
    return out


def _make_paths(text: _Text, rng: random.Random, pages: int) -> list[str]:
    fixed = ["/", *(f"/{s}/" for s in SECTIONS), "/about/", "/contact/"]
    paths = fixed[:pages]
    for i in range(len(paths), pages):
        section = SECTIONS[i % len(SECTIONS)]
        slug = f"{text.slug(rng.randint(2, 5))}-{i}"
        year = rng.randint(2015, 2025)
        month = rng.randint(1, 12)
        if section == "blog":
            paths.append(f"/blog/{year}/{month:02d}/{slug}/")
        elif section == "news":
            paths.append(f"/news/{year}/{slug}.html")
        elif section == "products":
            paths.append(f"/products/{slug}")
        elif section == "guides":
            paths.append(f"/guides/{slug}/")
        elif section == "research":
            paths.append(f"/research/papers/{year}/{slug}.html")
        else:
            paths.append(f"/{section}/{slug}.html")
    return paths


class _PageBuilder:
    def __init__(self, text: _Text, rng: random.Random, paths: list[str]) -> None:
        self.text = text
        self.rng = rng
        self.paths = paths
        self.css = [self._css_block() for _ in range(40)]
        self.js = [self._js_block() for _ in range(40)]
        self.tables = [self._table() for _ in range(300)]

    def _css_block(self) -> str:
        rng = self.rng
        rules = []
        for _ in range(rng.randint(20, 70)):
            selector = rng.choice((".", "#", "")) + rng.choice(self.text.slug_words)
            props = "; ".join(rng.sample(_CSS_PROPS, k=rng.randint(1, 4)))
            rules.append(f"{selector} {{ {props}; }}")
        return "\n".join(rules)

    def _js_block(self) -> str:
        rng = self.rng
        lines = ["(function () {", "  'use strict';"]
        for _ in range(rng.randint(10, 60)):
            line = rng.choice(_JS_LINES)
            lines.append(line.format(w=rng.choice(self.text.slug_words), n=rng.randint(1, 99)))
        lines.append("})();")
        return "\n".join(lines)

    def href(self, current: str, target_index: int) -> str:
        """A link from page ``current`` to page ``target_index``, written the way sites do."""
        rng = self.rng
        target = self.paths[target_index]
        roll = rng.random()
        if roll < 0.65 or target == "/":
            href = target
        else:
            base = current if current.endswith("/") else posixpath.dirname(current) + "/"
            rel = posixpath.relpath(target, base)
            if target.endswith("/"):
                rel = "./" if rel == "." else rel + "/"
            href = rel
        extra = rng.random()
        if extra < 0.05:
            href += f"#section-{rng.randint(1, 8)}"
        elif extra < 0.07:
            href += "?ref=related"
        return href

    def external(self) -> str:
        rng = self.rng
        host = rng.choice(EXTERNAL_HOSTS)
        return f"{host}/{self.text.slug(rng.randint(1, 3))}/{rng.randint(1, 9999)}"

    def build(self, index: int) -> tuple[str, int, int]:
        """Return (html, internal link count, external link count) of page ``index``."""
        rng = self.rng
        text = self.text
        path = self.paths[index]
        n = len(self.paths)
        title = text.title(rng.randint(3, 8))
        description = html.escape(rng.choice(text.sentences), quote=True)
        lang = rng.choice(LANGS)
        internal_budget = rng.randint(MIN_INTERNAL_LINKS, MAX_INTERNAL_LINKS)
        target = _page_size(rng)

        def link_to(i: int, label: str | None = None) -> str:
            return f'<a href="{html.escape(self.href(path, i))}">{label or text.anchor()}</a>'

        def random_page() -> int:
            return rng.randrange(n)

        # Fixed parts: head, header (nav, breadcrumbs), footer.
        nav_pages = [i for i in range(min(n, 1 + len(SECTIONS)))]
        nav = "\n".join(
            f'<li class="nav-item">{link_to(i, "Home" if i == 0 else SECTIONS[i - 1].title())}</li>'
            for i in nav_pages
        )
        top = path.split("/")[1]
        crumbs = [0] + ([1 + SECTIONS.index(top)] if top in SECTIONS else [])
        crumbs = [c for c in crumbs if c < n]
        breadcrumb = " &rsaquo; ".join(link_to(i, text.heading()) for i in crumbs)
        footer_internal = [i for i in (len(SECTIONS) + 1, len(SECTIONS) + 2) if i < n]
        externals = [self.external() for _ in range(rng.randint(2, 6))]
        # +1: the logo links to the home page.
        used_internal = 1 + len(nav_pages) + len(crumbs) + len(footer_internal)
        remaining = max(0, internal_budget - used_internal)

        head = (
            "<!DOCTYPE html>\n"
            f'<html lang="{lang}">\n<head>\n'
            '<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{title} | {SITE_NAME}</title>\n"
            f'<meta name="description" content="{description}">\n'
            f'<link rel="canonical" href="{path}">\n'
            f'<meta property="og:title" content="{title}">\n'
            '<meta property="og:type" content="article">\n'
            '<link rel="stylesheet" href="/static/css/site.css">\n'
            '<link rel="icon" href="/favicon.ico">\n'
            f"<style>\n{rng.choice(self.css)}\n</style>\n"
            '<script type="application/ld+json">{"@context": "https://schema.org", '
            f'"@type": "Article", "headline": "{title}", '
            f'"datePublished": "20{rng.randint(15, 25)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}"'
            "}</script>\n"
            '<script src="/static/js/app.js" defer></script>\n'
            "</head>\n"
        )
        header = (
            '<body class="page">\n<header class="site-header">\n'
            f'<a class="logo" href="/">{SITE_NAME}</a>\n'
            f'<nav aria-label="Main">\n<ul class="nav">\n{nav}\n</ul>\n</nav>\n'
            f'<nav class="breadcrumb" aria-label="Breadcrumb">{breadcrumb}</nav>\n'
            "</header>\n"
        )
        related_n = min(remaining, rng.randint(5, 10))
        remaining -= related_n
        related = "\n".join(f"<li>{link_to(random_page())}</li>" for _ in range(related_n))
        aside = f'<aside class="related">\n<h2>Related</h2>\n<ul>\n{related}\n</ul>\n</aside>\n'
        footer_links = "\n".join(
            f'<li><a href="{url}" rel="noopener">{text.phrase(1, 3)}</a></li>' for url in externals
        )
        footer = (
            '<footer class="site-footer">\n'
            f'<ul class="footer-links">\n{footer_links}\n</ul>\n'
            + "".join(
                f"<p>{link_to(i, 'About' if i == len(SECTIONS) + 1 else 'Contact')}</p>\n"
                for i in footer_internal
            )
            + '<p><a href="mailto:editor@example.org">editor@example.org</a></p>\n'
            f"<p>&copy; 2024 {SITE_NAME}. All rights reserved.</p>\n</footer>\n"
            f"<script>\n{rng.choice(self.js)}\n</script>\n</body>\n</html>\n"
        )

        # Content: sections of paragraphs, lists, tables... until the page reaches its size.
        budget = target - len(head) - len(header) - len(aside) - len(footer)
        body: list[str] = [
            '<main id="content">\n<article>\n',
            f"<h1>{title}</h1>\n",
            f'<p class="byline">By {text.title(2)} &middot; <time>2024-0{rng.randint(1, 9)}'
            f"-1{rng.randint(0, 9)}</time></p>\n",
            f'<p class="lead">{text.paragraph()}</p>\n',
        ]
        size = sum(len(part) for part in body)
        # Spread inline links over the paragraphs we expect to write (~650 chars each).
        expected_paragraphs = max(1, budget // 650)
        section = 0
        while size < budget:
            section += 1
            block = [f'<h2 id="section-{section}">{text.heading()}</h2>\n']
            for _ in range(rng.randint(2, 6)):
                kind = rng.random()
                if kind < 0.70:
                    para = text.paragraph()
                    if remaining and rng.random() < remaining / expected_paragraphs + 0.05:
                        remaining -= 1
                        para += f" See {link_to(random_page())} for more."
                    block.append(f"<p>{para}</p>\n")
                elif kind < 0.82:
                    block.append(f"<h3>{text.heading()}</h3>\n")
                    block.append(f"<p>{text.paragraph()}</p>\n")
                elif kind < 0.92:
                    tag = rng.choice(("ul", "ol"))
                    items = []
                    for _ in range(rng.randint(3, 8)):
                        if remaining and rng.random() < 0.3:
                            remaining -= 1
                            items.append(f"<li>{link_to(random_page())}</li>")
                        else:
                            items.append(f"<li>{rng.choice(text.short)}</li>")
                    block.append(f"<{tag}>\n" + "\n".join(items) + f"\n</{tag}>\n")
                elif kind < 0.96:
                    block.append(rng.choice(self.tables))
                elif kind < 0.98:
                    block.append(f"<blockquote><p>{text.paragraph()}</p></blockquote>\n")
                else:
                    code = html.escape(rng.choice(self.js)[:600])
                    block.append(f'<pre><code class="language-js">{code}</code></pre>\n')
            chunk = "".join(block)
            body.append(chunk)
            size += len(chunk)
            expected_paragraphs = max(1, expected_paragraphs - 4)
        if remaining:
            see_also = "\n".join(f"<li>{link_to(random_page())}</li>" for _ in range(remaining))
            body.append(f'<h2>See also</h2>\n<ul class="see-also">\n{see_also}\n</ul>\n')
        body.append("</article>\n</main>\n")
        page = head + header + "".join(body) + aside + footer
        return page, internal_budget, len(externals)

    def _table(self) -> str:
        rng = self.rng
        text = self.text
        cols = rng.randint(3, 6)
        head = "".join(f"<th>{text.title(1)}</th>" for _ in range(cols))
        rows = []
        for _ in range(rng.randint(4, 15)):
            cells = [f"<td>{text.title(rng.randint(1, 2))}</td>"]
            cells += [f"<td>{rng.randint(0, 99999) / 100:.2f}</td>" for _ in range(cols - 1)]
            rows.append("<tr>" + "".join(cells) + "</tr>")
        return (
            f'<table class="data">\n<caption>{text.phrase()}</caption>\n'
            f"<thead><tr>{head}</tr></thead>\n<tbody>\n"
            + "\n".join(rows)
            + "\n</tbody>\n</table>\n"
        )


def _page_size(rng: random.Random) -> int:
    """Target size of a page in bytes: log-normal (median ~45 KB), clipped to the limits."""
    size = int(rng.lognormvariate(math.log(45_000), 0.55))
    return max(MIN_PAGE_BYTES + 2_000, min(MAX_PAGE_BYTES - 12_000, size))


def generate_site(root: Path, pages: int, seed: int = 1) -> GeneratedSite:
    """Write ``pages`` HTML files under ``root`` and return what was written."""
    if pages < 1:
        raise ValueError("pages must be >= 1")
    rng = random.Random(seed)
    text = _Text(rng)
    paths = _make_paths(text, rng, pages)
    builder = _PageBuilder(text, rng, paths)
    total = internal = external = 0
    smallest, largest = MAX_PAGE_BYTES * 10, 0
    made_dirs: set[Path] = set()
    for index, url_path in enumerate(paths):
        page, n_internal, n_external = builder.build(index)
        data = page.encode("utf-8")
        if not MIN_PAGE_BYTES <= len(data) <= MAX_PAGE_BYTES:
            raise AssertionError(f"page {url_path} is {len(data)} bytes, outside the limits")
        file = root / file_for_path(url_path)
        if file.parent not in made_dirs:
            file.parent.mkdir(parents=True, exist_ok=True)
            made_dirs.add(file.parent)
        file.write_bytes(data)
        total += len(data)
        internal += n_internal
        external += n_external
        smallest = min(smallest, len(data))
        largest = max(largest, len(data))
    # URL-list order: shuffled (deterministically), as a real frontier would be.
    order = list(paths)
    random.Random(seed + 1).shuffle(order)
    return GeneratedSite(
        root=root,
        paths=order,
        total_bytes=total,
        min_bytes=smallest,
        max_bytes=largest,
        internal_links=internal,
        external_links=external,
    )


_HREF_RE = re.compile(rb"""<a\s[^>]*?href\s*=\s*["']?([^"' >]+)""", re.IGNORECASE)


def corpus_site(root: Path) -> GeneratedSite:
    """An existing directory of HTML pages (``*.html``, recursively, symlinks followed) as a
    site: every page once, in sorted order. Links are counted from the raw ``<a href>``s:
    internal ones are relative or root-relative, external ones have a scheme."""
    root = root.resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"corpus {root} is not a directory")
    files = sorted(p for p in root.rglob("*.html") if p.is_file())
    if not files:
        raise FileNotFoundError(f"corpus {root} holds no *.html file")
    paths: list[str] = []
    sizes: list[int] = []
    internal = external = 0
    for file in files:
        data = file.read_bytes()
        sizes.append(len(data))
        paths.append("/" + quote(file.relative_to(root).as_posix()))
        for href in _HREF_RE.findall(data):
            if href.startswith((b"http://", b"https://", b"//")):
                external += 1
            elif not href.startswith((b"#", b"mailto:", b"javascript:")):
                internal += 1
    return GeneratedSite(
        root=root,
        paths=paths,
        total_bytes=sum(sizes),
        min_bytes=min(sizes),
        max_bytes=max(sizes),
        internal_links=internal,
        external_links=external,
    )
