"""extract(): pure function tests, no network."""

from __future__ import annotations

import codecs
import hashlib
import itertools

import pytest

from fleet.scrape.extract import Extracted, _LinkResolver, _slow_resolve, decode_body, extract

PAGE_URL = "https://example.com/blog/post.html?id=3"

PAGE = """<!doctype html>
<html lang="en-GB">
<head>
  <meta charset="utf-8">
  <title>  The   Title </title>
  <meta name="Description" content="  A short   description. ">
  <meta property="og:description" content="og text">
  <link rel="canonical" href="/blog/post">
  <style>body { color: red }</style>
  <script>var hidden = "script text";</script>
</head>
<body>
  <header><h1>Site name</h1><nav><a href="/">Home</a><a href="/about">About</a></nav></header>
  <main>
    <h1>Main heading</h1>
    <p>First   paragraph
       with <b>bold</b> words.</p>
    <h2>Second</h2>
    <noscript>Enable JS</noscript>
    <template><p>template text</p></template>
    <svg><text>svg text</text></svg>
    <iframe src="/frame">iframe text</iframe>
    <h3>Third</h3>
    <h2>Second</h2>
    <aside>aside text</aside>
    <p>
      <a href="other.html">relative</a>
      <a href="../up.html#section">up with fragment</a>
      <a href="https://Example.COM:443/abs">absolute</a>
      <a href="//cdn.example.net/x">protocol relative</a>
      <a href="mailto:me@example.com">mail</a>
      <a href="javascript:void(0)">js</a>
      <a href="JavaScript:alert(1)">js upper</a>
      <a href="tel:+123">tel</a>
      <a href="#top">fragment only</a>
      <a href="ftp://example.com/file">ftp</a>
      <a href="other.html">duplicate</a>
      <a href="/blog/other.html#again">same after normalising</a>
      <a href="?page=2">query only</a>
      <a>no href</a>
    </p>
  </main>
  <footer>Footer text <a href="/contact">Contact</a></footer>
</body>
</html>
"""


def _extract(
    html: str | bytes,
    *,
    url: str = PAGE_URL,
    content_type: str = "text/html",
    charset: str | None = "utf-8",
    max_links: int = 1000,
) -> Extracted:
    body = html.encode() if isinstance(html, str) else html
    return extract(
        body, final_url=url, content_type=content_type, charset=charset, max_links=max_links
    )


def test_full_page() -> None:
    doc = _extract(PAGE)
    assert doc.title == "The Title"
    assert doc.description == "A short description."
    assert doc.lang == "en"
    assert doc.canonical_url == "https://example.com/blog/post"
    assert doc.headings == ["Main heading", "Second", "Third"]
    assert doc.text.startswith("Main heading First paragraph with bold words. Second")
    for hidden in [
        "script text",
        "color: red",
        "Enable JS",
        "template text",
        "svg text",
        "iframe text",
        "aside text",
        "Footer text",
        "Site name",
        "Home",
    ]:
        assert hidden not in doc.text
    assert "  " not in doc.text
    assert doc.links == [
        "https://example.com/",
        "https://example.com/about",
        "https://example.com/blog/other.html",
        "https://example.com/up.html",
        "https://example.com/abs",
        "https://cdn.example.net/x",
        "https://example.com/blog/post.html?page=2",
        "https://example.com/contact",
    ]
    assert doc.content_hash == hashlib.blake2b(doc.text.encode(), digest_size=16).hexdigest()


def test_og_description_fallback_and_title_fallback() -> None:
    doc = _extract(
        '<html><head><meta property="og:description" content="from og">'
        '<meta property="og:title" content="OG title"></head><body>x</body></html>'
    )
    assert doc.description == "from og"
    assert doc.title == "OG title"


def test_missing_everything() -> None:
    doc = _extract("<p>just a fragment</p>", url="http://example.com")
    assert doc.title == ""
    assert doc.description == ""
    assert doc.headings == []
    assert doc.lang == ""
    assert doc.text == "just a fragment"
    assert doc.canonical_url == "http://example.com/"
    assert doc.links == []


@pytest.mark.parametrize(
    ("html", "lang"),
    [
        ('<html lang="PT-br"><body>x</body></html>', "pt"),
        ('<html lang="de"><body>x</body></html>', "de"),
        ('<html lang="zh_Hant"><body>x</body></html>', "zh"),
        (
            '<html><head><meta http-equiv="Content-Language" content="fr-CA, en">'
            "</head><body>x</body></html>",
            "fr",
        ),
        ('<html lang=""><body>x</body></html>', ""),
        ('<html lang="123"><body>x</body></html>', ""),
        ("<html><body>x</body></html>", ""),
    ],
)
def test_lang(html: str, lang: str) -> None:
    assert _extract(html).lang == lang


def test_content_root_preference() -> None:
    both = "<body><p>outside</p><article><p>in article</p></article><main>in main</main></body>"
    assert _extract(both).text == "in main"
    article = "<body><nav>menu</nav><article><header><h1>T</h1></header>body</article></body>"
    doc = _extract(article)
    assert doc.text == "T body"  # an article's own header is content
    assert doc.headings == ["T"]
    listing = "<body><nav>menu</nav><article>one</article><article>two</article></body>"
    assert _extract(listing).text == "one two"  # several articles: use the body
    body = "<body><header>hdr</header><p>content</p><footer>ftr</footer></body>"
    assert _extract(body).text == "content"


def test_headings_deduped_and_capped() -> None:
    html = "<body>" + "".join(f"<h2>H {i % 100}</h2>" for i in range(300)) + "</body>"
    headings = _extract(html).headings
    assert headings[:3] == ["H 0", "H 1", "H 2"]
    assert len(headings) == 64
    assert len(set(headings)) == 64
    long = _extract(f"<h1>{'x' * 1000}</h1>").headings
    assert len(long[0]) == 300


@pytest.mark.parametrize(
    ("href", "expected"),
    [
        ("/blog/post", "https://example.com/blog/post"),
        ("https://example.com/other#frag", "https://example.com/other"),
        ("https://EXAMPLE.com:443/x", "https://example.com/x"),
        # Other host, other scheme or other port: ignored, the page keeps its own URL.
        ("https://evil.example.org/blog/post", "https://example.com/blog/post.html?id=3"),
        ("http://example.com/blog/post", "https://example.com/blog/post.html?id=3"),
        ("https://example.com:8443/blog/post", "https://example.com/blog/post.html?id=3"),
        ("javascript:alert(1)", "https://example.com/blog/post.html?id=3"),
        ("", "https://example.com/blog/post.html?id=3"),
    ],
)
def test_canonical(href: str, expected: str) -> None:
    html = f'<html><head><link rel="canonical" href="{href}"></head><body>x</body></html>'
    assert _extract(html).canonical_url == expected


def test_canonical_defaults_to_normalised_final_url() -> None:
    doc = _extract("<p>x</p>", url="HTTP://Example.COM:80/a#frag")
    assert doc.canonical_url == "http://example.com/a"


def test_base_href() -> None:
    html = '<head><base href="https://example.com/docs/"></head><a href="page">p</a>'
    assert _extract(html).links == ["https://example.com/docs/page"]


def test_links_cap_and_zero() -> None:
    html = "".join(f'<a href="/p/{i}">{i}</a>' for i in range(50))
    assert _extract(html, max_links=10).links == [f"https://example.com/p/{i}" for i in range(10)]
    assert _extract(html, max_links=0).links == []


def test_links_with_whitespace_and_odd_hrefs() -> None:
    html = (
        '<a href="  /spaced  ">a</a>'
        '<a href="/new\nline">b</a>'
        '<a href="/with space">c</a>'
        '<a href="http://[::1">bad</a>'
        '<a href="http://user:pw@example.com/">creds</a>'
        '<a href="data:text/html,hi">data</a>'
        '<a href="HTTPS://EXAMPLE.COM/Case">case</a>'
    )
    assert _extract(html).links == [
        "https://example.com/spaced",
        "https://example.com/newline",
        "https://example.com/with%20space",
        "https://example.com/Case",
    ]


_HREFS = [
    "/a",
    "/",
    "/a/b/",
    "/a?x=1",
    "/a?",
    "/a?#f",
    "/a#f",
    "/a;p",
    "/./a",
    "/a/../b",
    "/.well-known/x",
    "//other.example/x",
    "a",
    "a/b",
    "a/",
    "./a",
    "../a",
    "../../../../a",
    ".",
    "..",
    "../",
    "../../",
    "./",
    "../a/",
    "./../a",
    ".././a",
    "../a/../b",
    "../a/./b",
    "...",
    "../..",
    "../../x?q#f",
    "../?q",
    ".//x",
    "..//x",
    "../.hidden",
    ".hidden",
    "..a",
    "a//b",
    "a?q",
    "a?q#f",
    "a:b",
    "a;p",
    "?",
    "?q",
    "?q#f",
    "?#f",
    "http://example.com",
    "http://example.com/",
    "http://example.com?q",
    "http://example.com#f",
    "http://example.com/x/../y",
    "http://example.com/x;p",
    "https://example.com/x",
    "http://EXAMPLE.com/x",
    "http://example.com:80/x",
    "http://example.com:8080/x",
    "http://bücher.example/x",
    "http://user@example.com/",
    "http://",
    "http:///x",
    "http:x",
    "https://sub.example.co.uk/a/b?c=d&e=f#g",
    "https://a-b.example/%7Efoo",
    "https://xn--bcher-kva.example/",
    "/ümlaut",
    "ümlaut",
    "/a\\b",
    "/a[b]",
    "/" + "x" * 9000,
]
_BASES = [
    "https://example.com/blog/post.html?id=3",
    "https://example.com/",
    "http://example.com:8080/dir/sub/",
    "http://example.com/a/./b/c",
    "http://example.com/a//b/c",
    "http://example.com/a;p/b",
    "http://example.com/a/b/c/d/e/",
    "http://example.com",
    "https://[2606:4700::1111]/x/y",
]


@pytest.mark.parametrize("base", _BASES)
def test_fast_link_resolution_matches_slow_path(base: str) -> None:
    # The fast path is an optimisation only: it must agree with urljoin + normalize_url.
    resolver = _LinkResolver(base)
    for href in _HREFS:
        assert resolver.resolve(href) == _slow_resolve(base, href), (base, href)


def test_fast_link_resolution_generated() -> None:
    pieces = ["", "/", "a", ".", "..", "./", "../", "?q", "#f", "x.html", "//", ";p", ":"]
    for base in [PAGE_URL, "http://example.com/a/b/c/", "http://example.com/"]:
        resolver = _LinkResolver(base)
        for combo in itertools.product(pieces, repeat=3):
            href = "".join(combo)
            if href and not href.startswith("#"):
                assert resolver.resolve(href) == _slow_resolve(base, href), (base, href)


# --- charsets ------------------------------------------------------------------------


def test_latin1_via_header() -> None:
    body = "<title>Café</title><p>crème</p>".encode("latin-1")
    doc = _extract(body, charset="ISO-8859-1")
    assert doc.title == "Café"
    assert doc.text == "crème"


def test_latin1_label_means_windows_1252() -> None:
    # Browsers read latin-1 labels as windows-1252: 0x93/0x94 are curly quotes.
    assert decode_body(b"\x93hi\x94", "iso-8859-1") == "\u201chi\u201d"


def test_charset_via_meta() -> None:
    body = '<html><head><meta charset="windows-1251"><title>Привет</title></head></html>'
    assert _extract(body.encode("cp1251"), charset=None).title == "Привет"
    body2 = (
        '<meta http-equiv="Content-Type" content="text/html; charset=ISO-8859-15">'
        "<title>€uro</title>"
    )
    assert _extract(body2.encode("iso-8859-15"), charset=None).title == "€uro"


def test_header_charset_beats_meta() -> None:
    body = '<meta charset="utf-8"><title>Café</title>'.encode("latin-1")
    assert _extract(body, charset="latin-1").title == "Café"


def test_meta_after_2kb_is_ignored() -> None:
    body = b"<!--" + b"x" * 2100 + b'--><meta charset="latin-1"><title>caf\xe9</title>'
    assert _extract(body, charset=None).title == "caf\ufffd"


@pytest.mark.parametrize(
    ("bom", "encoding"),
    [
        (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
    ],
)
def test_bom(bom: bytes, encoding: str) -> None:
    body = bom + "<title>Ünïcödé</title><p>text</p>".encode(encoding)
    doc = _extract(body, charset=None)
    assert doc.title == "Ünïcödé"
    assert doc.text == "text"
    # A BOM cannot be there by accident; it wins over a (wrong) header, as in browsers.
    assert _extract(body, charset="latin-1").title == "Ünïcödé"
    assert decode_body(body, None).startswith("<title>")


@pytest.mark.parametrize("charset", ["no-such-charset", "base64", "rot13", "idna", "", "utf-8\0"])
def test_bad_charset_names_fall_back(charset: str) -> None:
    body = "<title>naïve</title>".encode()
    assert decode_body(body, charset) == "<title>naïve</title>"
    assert _extract(body, charset=charset).title == "naïve"


def test_bad_meta_charset_falls_back() -> None:
    body = '<meta charset="x-bogus"><title>naïve</title>'.encode()
    assert _extract(body, charset=None).title == "naïve"
    body16 = '<meta charset="utf-16"><title>naïve</title>'.encode()
    assert _extract(body16, charset=None).title == "naïve"  # meta can't mean UTF-16


def test_invalid_utf8_is_replaced() -> None:
    doc = _extract(b"<title>ok \xff\xfe</title><p>caf\xc3</p>", charset="utf-8")
    assert doc.title == "ok \ufffd\ufffd"
    assert doc.text.startswith("caf")


# --- text/plain and garbage ------------------------------------------------------------


def test_text_plain() -> None:
    body = "  Hello <b>not html</b>\n\n  world\t! ".encode("latin-1")
    doc = _extract(body, content_type="text/plain", charset="latin-1")
    assert doc.title == ""
    assert doc.text == "Hello <b>not html</b> world !"
    assert doc.links == []
    assert doc.headings == []
    assert doc.canonical_url == "https://example.com/blog/post.html?id=3"
    assert doc.content_hash == hashlib.blake2b(doc.text.encode(), digest_size=16).hexdigest()


@pytest.mark.parametrize(
    "body", [b"", b"\x00\x01\x02\xff" * 100, b"<<<>>>", b"<html" * 1000, b"\xef\xbb\xbf"]
)
def test_garbage_never_crashes(body: bytes) -> None:
    doc = _extract(body, charset=None)
    assert isinstance(doc.text, str)
    assert len(doc.content_hash) == 32


def test_same_text_same_hash() -> None:
    a = _extract("<main><p>same   text</p></main>")
    b = _extract("<body><nav>x</nav><p>same text</p></body>", url="https://example.org/")
    assert a.text == b.text == "same text"
    assert a.content_hash == b.content_hash
