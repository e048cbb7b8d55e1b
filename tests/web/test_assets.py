"""Page scripts: one bundle per page, versioned by content, cached for good, gzipped."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from tests.web.conftest import FakeHostBroker
from web.assets import DIST, ENTRY_POINTS, IMMUTABLE, REVALIDATE, Assets, routes


def make_dist(directory: Path) -> Path:
    directory.mkdir()
    for name in ENTRY_POINTS:
        (directory / name).write_text(f"console.log({name!r});\n" * 50)
    (directory / "desktop.js.map").write_text('{"version": 3}')
    (directory / "notes.txt").write_text("not a bundle")
    return directory


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    assets = Assets(make_dist(tmp_path / "dist"))
    return TestClient(Starlette(routes=routes(assets)))


def test_versioned_address_is_cached_for_good_and_gzipped(client: TestClient,
                                                          tmp_path: Path) -> None:
    assets = Assets(tmp_path / "dist")
    url = assets.url("desktop.js")
    assert re.fullmatch(r"/static/dist/desktop\.js\?v=[0-9a-f]{12}", url)
    r = client.get(url, headers={"Accept-Encoding": "gzip"})
    assert r.status_code == 200
    assert r.headers["cache-control"] == IMMUTABLE
    assert r.headers["content-encoding"] == "gzip"
    assert r.headers["content-type"].startswith("text/javascript")
    assert r.text == (tmp_path / "dist" / "desktop.js").read_text()  # httpx decoded it
    plain = client.get(url, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert plain.content == (tmp_path / "dist" / "desktop.js").read_bytes()


def test_stale_or_missing_version_must_revalidate(client: TestClient) -> None:
    r = client.get("/static/dist/login.js?v=000000000000")
    assert r.headers["cache-control"] == REVALIDATE
    again = client.get("/static/dist/login.js", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_only_bundles_and_maps_are_served(client: TestClient) -> None:
    assert client.get("/static/dist/desktop.js.map").json() == {"version": 3}
    assert client.get("/static/dist/notes.txt").status_code == 404
    assert client.get("/static/dist/nothing.js").status_code == 404
    assert client.get("/static/dist/..%2F..%2Fapp.py").status_code == 404
    assert client.post("/static/dist/desktop.js").status_code == 405


def test_missing_build_is_a_clear_start_up_error(tmp_path: Path) -> None:
    (tmp_path / "dist").mkdir()
    (tmp_path / "dist" / "login.js").write_text("")
    with pytest.raises(RuntimeError,
                       match=r"desktop\.js, portal\.js, helpdesk\.js, audit\.js, "
                             r"security\.js, tokens\.js, admin\.js missing.*make setup"):
        Assets(tmp_path / "dist")


def test_desktop_bundle_carries_novnc() -> None:
    """The built bundle really contains noVNC's RFB client, not an import of it."""
    body = (DIST / "desktop.js").read_text()
    assert "import " not in body.split("\n", 1)[0]
    assert "RFB" in body and "noVNC" in body and "/static/novnc" not in body


@pytest.mark.real
def test_pages_link_the_versioned_bundles(fake: FakeHostBroker) -> None:
    client = fake.broker.client()
    page = client.get("/").text
    script = re.search(r'<script type="module" src="([^"]+)"', page)
    prefetch = re.search(r'<link rel="prefetch" href="([^"]+)"', page)
    assert script and prefetch
    assert re.fullmatch(r"/static/dist/login\.js\?v=[0-9a-f]{12}", script.group(1))
    assert re.fullmatch(r"/static/dist/desktop\.js\?v=[0-9a-f]{12}", prefetch.group(1))
    r = client.get(prefetch.group(1))
    assert r.status_code == 200 and r.headers["cache-control"] == IMMUTABLE
