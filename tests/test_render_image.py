"""The fleet-browser image renders a JavaScript page through fleet's own pool, as the
non-root user, with no network: the guarded proxy answers the browser's request for the
document with the worker's copy.

Needs `fleet-browser:local` (`make images`); a missing Docker engine fails in CI, skips
locally (the `docker_ready` fixture of test_compose).
"""

from __future__ import annotations

import os

import pytest

from tests.docker_helpers import ensure_images

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

from testcontainers.core.container import DockerContainer

SCRIPT = """
import asyncio, os
from fleet.scrape.fetch import Fetcher, FetchResult
from fleet.scrape.proxy import GuardedProxy
from fleet.scrape.render.pool import BrowserPool
from fleet.settings import Settings

HTML = (b"<html><body><div id=root></div><script>"
        b"document.getElementById('root').textContent = 'built by ' + 'javascript';"
        b"</script></body></html>")

async def main():
    settings = Settings.from_env(os.environ)
    doc = FetchResult("http://example.invalid/", "http://example.invalid/", 200,
                      "text/html", "utf-8", HTML, 1.0, 0)
    async with Fetcher(settings) as fetcher, GuardedProxy(settings, fetcher) as proxy:
        async with BrowserPool(settings, proxy, environ=os.environ) as pool:
            rendered = await pool.render(doc.url, doc)
    print(os.getuid(), rendered.html)

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def images(docker_ready: None) -> None:
    ensure_images()


@pytest.mark.docker
@pytest.mark.timeout(300)
def test_browser_image_renders_through_the_pool_as_non_root(images: None) -> None:
    container = DockerContainer("fleet-browser:local").with_kwargs(
        entrypoint=["/usr/bin/tini", "--", "python", "-c", SCRIPT]
    )
    with container:
        assert container.wait() == 0, container.get_logs()
        out, err = container.get_logs()
    text = out.decode()
    assert text.startswith("10001 "), (text, err.decode())
    assert "built by javascript" in text
