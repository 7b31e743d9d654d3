from __future__ import annotations

import re

import pytest

import fleet.urls
from fleet.errors import InvalidUrl
from fleet.urls import normalize_url, url_id


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("HTTP://Example.COM/a", "http://example.com/a"),
        ("http://example.com", "http://example.com/"),
        ("http://example.com:80/x", "http://example.com/x"),
        ("https://example.com:443/x", "https://example.com/x"),
        ("https://example.com:8443/x", "https://example.com:8443/x"),
        ("http://example.com/x#frag", "http://example.com/x"),
        ("http://example.com/x?b=2&a=1#f", "http://example.com/x?b=2&a=1"),
        ("  http://example.com/  ", "http://example.com/"),
        ("http://bücher.de/", "http://xn--bcher-kva.de/"),
        ("http://[::1]:8080/", "http://[::1]:8080/"),
        ("http://127.0.0.1:80/", "http://127.0.0.1/"),
    ],
)
def test_normalize(raw: str, want: str) -> None:
    assert normalize_url(raw) == want


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("ftp://example.com/", "scheme 'ftp'"),
        ("example.com/page", "scheme"),
        ("http://", "no host"),
        ("http://exa mple.com/", "whitespace"),
        ("http://user:pw@example.com/", "credentials"),
        ("http://example.com:99999/", "cannot parse"),
        ("javascript:alert(1)", "scheme"),
    ],
)
def test_invalid(raw: str, fragment: str) -> None:
    with pytest.raises(InvalidUrl) as err:
        normalize_url(raw)
    assert fragment in str(err.value)


def test_ids_are_stable_and_meili_safe() -> None:
    a = url_id(normalize_url("HTTP://Example.com:80/x#y"))
    b = url_id(normalize_url("http://example.com/x"))
    assert a == b
    assert a.isalnum() and len(a) == 32
    assert url_id("http://example.com/y") != a


@pytest.mark.parametrize(
    "raw",
    [
        "http://a.com/",
        "https://a.com/x?y=1",
        "http://a.com/x?",
        "http://a.com/x??",
        "http://a.com/x?y=1?",
        "http://a.com/x#f",
        "http://A.com/",
        "http://a.com",
        "http://a.com?x",
        "http://a.com:80/",
        "http://a.com:8080/",
        "http://a.com./x",
        "http://a..b/x",
        "http://a.com//x",
        "http://a.com/x\\y",
        "http://a.com/%20",
        "http://a.com/x?a=1&b=[2]",
        "http://a.com/a b",
        "http://-a.com/x",
        "http://a-.com/x",
        "http://1.2.3.4/x",
        "http://a.com/@x",
        "http://u@a.com/x",
        "http://a.com/x;y",
        "http://a.com/~x|y{}^`",
        "ftp://a.com/x",
        "http://a.com/é",
        " http://a.com/x",
    ],
)
def test_normalize_fast_path_agrees_with_the_full_one(
    raw: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Already-canonical URLs skip urlsplit/urlunsplit: the answer must be the same."""

    def full(url: str) -> str:
        with monkeypatch.context() as m:
            m.setattr(fleet.urls, "_CANONICAL", re.compile(r"(?!)"))
            try:
                return normalize_url(url)
            except InvalidUrl as exc:
                return f"InvalidUrl: {exc}"

    try:
        fast = normalize_url(raw)
    except InvalidUrl as exc:
        fast = f"InvalidUrl: {exc}"
    assert fast == full(raw)
