"""Who may read a tile: the token checks of dashboard/tileserver.py, through the real session middleware (and,
for the sign-in rule, through ``dashboard/server.py``'s own ASGI app: every middleware of the real server)."""

from __future__ import annotations

import io
import shutil
import time

import numpy as np
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.testclient import TestClient

from dashboard import tileserver, websession
from engine import deepzoom
from tests.conftest import SHARED_DATA, make_pyramid


@pytest.fixture(scope="module")
def slide_file(tmp_path_factory):
    src = SHARED_DATA / "wsi" / "CMU-1-Small-Region.svs"
    folder = tmp_path_factory.mktemp("tiles")
    if src.exists():
        return shutil.copy(src, folder / "Patient-Smith-1234.svs")  # a file name that must never show in a URL
    return make_pyramid(folder / "Patient-Smith-1234.tif", width=2048, height=1536, levels=2, noise=8)


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv("HISTODASH_PASSWORD_HASH", raising=False)
    tileserver._GRANTS.clear()
    tileserver._BY_OWNER.clear()
    deepzoom.clear_caches()
    yield
    tileserver._GRANTS.clear()
    tileserver._BY_OWNER.clear()


@pytest.fixture
def app():
    return Starlette(routes=tileserver.routes(), middleware=[Middleware(websession.BrowserSessionMiddleware)])


def browser(app, session_id: str | None = None) -> TestClient:
    client = TestClient(app)
    if session_id is not None:
        client.cookies.set(websession.COOKIE, websession.sign(session_id))
    return client


def deepest_tile(token: str) -> str:
    dz = deepzoom.deepzoom_for(tileserver._GRANTS[token].path)
    return f"{tileserver.tiles_url(token)}{dz.level_count - 1}/1_1.jpeg"


def test_tokens_are_random_long_and_carry_no_name(slide_file):
    a, b = websession.new_session_id(), websession.new_session_id()
    t1 = tileserver.mint(slide_file, a)
    assert tileserver.mint(slide_file, a) == t1  # the same grant again: the browser's tile cache keeps working
    assert tileserver.mint(slide_file, b) != t1 and tileserver.mint(slide_file, a, "library") != t1
    assert len(t1) == 48 and int(t1, 16) >= 0  # 192 bits, hex
    tokens = {tileserver.mint(slide_file, websession.new_session_id()) for _ in range(300)}
    assert len(tokens) == 300
    for url in (tileserver.dzi_url(t1), tileserver.tiles_url(t1)):
        assert "Smith" not in url and "svs" not in url and "tif" not in url and "/" + str(slide_file.parent) not in url
    with pytest.raises(ValueError):
        tileserver.mint(slide_file, a, "everyone")


def test_owner_reads_dzi_and_level0_tile_with_cache_headers(app, slide_file):
    sid = websession.new_session_id()
    token = tileserver.mint(slide_file, sid, "upload")
    client = browser(app, sid)
    dzi = client.get(tileserver.dzi_url(token))
    assert dzi.status_code == 200 and "TileSize=\"254\"" in dzi.text and "Overlap=\"1\"" in dzi.text
    tile = client.get(deepest_tile(token))
    assert tile.status_code == 200 and tile.headers["content-type"] == "image/jpeg"
    assert "immutable" in tile.headers["cache-control"] and "private" in tile.headers["cache-control"]
    img = Image.open(io.BytesIO(tile.content))
    assert img.format == "JPEG" and img.size == (256, 256)
    assert np.asarray(img).std() > 1  # real pixels, not a blank placeholder
    assert client.head(deepest_tile(token)).status_code == 200


def test_another_session_a_made_up_token_and_no_cookie_get_403(app, slide_file):
    owner, other = websession.new_session_id(), websession.new_session_id()
    token = tileserver.mint(slide_file, owner, "upload")
    for client in (browser(app, other), browser(app)):  # another browser; a browser without a session cookie
        for url in (tileserver.dzi_url(token), deepest_tile(token)):
            r = client.get(url)
            assert r.status_code == 403 and r.headers["cache-control"] == "no-store" and not r.content.startswith(b"\xff\xd8")
    forged = browser(app)
    forged.cookies.set(websession.COOKIE, f"{owner}.{'0' * 64}")  # the owner's id with a made-up signature
    assert forged.get(tileserver.dzi_url(token)).status_code == 403
    client = browser(app, owner)
    made_up = "0123456789abcdef" * 3
    for url in (tileserver.dzi_url(made_up), f"/tiles/{made_up}_files/0/0_0.jpeg", "/tiles/", "/tiles/x.dzi", f"/tiles/{token[:-1]}.dzi",
                f"/tiles/{token.upper()}.dzi"):
        assert client.get(url).status_code == 403, url


def test_path_tricks_never_reach_a_file(app, slide_file):
    sid = websession.new_session_id()
    token = tileserver.mint(slide_file, sid, "upload")
    client = browser(app, sid)
    tricks = [
        "/tiles/../../etc/passwd", "/tiles/%2e%2e/%2e%2e/etc/passwd", f"/tiles/{token}_files/../../../etc/passwd",
        f"/tiles/{token}_files/%2e%2e/%2e%2e/etc/passwd", f"/tiles/{token}_files/0/0_0.jpeg/../../x",
        f"/tiles/{token}_files/0/0_0.png", f"/tiles/{token}_files/-1/0_0.jpeg", f"/tiles/{token}_files/99/0_0.jpeg",
        f"/tiles/{token}_files/0/5_5.jpeg", f"/tiles/{token}/associated/label", f"/tiles/{token}_files/label.jpeg",
        f"/tiles/{token}_files/macro/0_0.jpeg", f"/tiles/{token}.xml",
        f"/tiles/{slide_file.name}", f"/tiles/{slide_file}",
    ]
    for url in tricks:
        r = client.get(url)
        assert r.status_code in (403, 404), (url, r.status_code)
        assert b"root:" not in r.content and not r.content.startswith(b"\xff\xd8"), url


def test_tiles_outside_the_slide_or_too_large_to_decode_get_404_saying_why(app, slide_file, tmp_path):
    """Issue 15: a tile request outside the slide's bounds gets a message (the 404's body), never a tile or a path;
    so does the slide of 10⁶ × 10⁶ px with no small level (it is refused before anything is allocated for it)."""
    from tests.corpus import sparse_bigtiff

    sid = websession.new_session_id()
    client = browser(app, sid)
    token = tileserver.mint(slide_file, sid, "upload")
    dz = deepzoom.deepzoom_for(slide_file)
    last = dz.level_count - 1
    cols, rows = dz.level_tiles[last]
    for url, why in ((f"{tileserver.tiles_url(token)}{last}/{cols}_0.jpeg", f"Tile ({cols}, 0) does not exist at Deep Zoom level {last}"),
                     (f"{tileserver.tiles_url(token)}{last}/0_{rows + 7}.jpeg", f"({cols} × {rows} tiles)"),
                     (f"{tileserver.tiles_url(token)}{last + 1}/0_0.jpeg", f"Deep Zoom level {last + 1} does not exist")):
        r = client.get(url)
        assert r.status_code == 404 and why in r.text and r.headers["cache-control"] == "no-store", (url, r.text)
    million = sparse_bigtiff(tmp_path / "million.tif")
    token = tileserver.mint(million, sid, "upload")
    for url in (tileserver.dzi_url(token), f"{tileserver.tiles_url(token)}0/0_0.jpeg"):
        r = client.get(url)
        assert r.status_code == 404 and "no pyramid level small enough" in r.text, (url, r.text)
        assert str(tmp_path) not in r.text


def test_library_tokens_serve_any_visitor_without_a_login(app, slide_file):
    token = tileserver.mint(slide_file, websession.new_session_id(), "library")
    assert browser(app, websession.new_session_id()).get(deepest_tile(token)).status_code == 200
    assert browser(app).get(tileserver.dzi_url(token)).status_code == 200


def test_signed_out_requests_get_403_when_a_login_is_configured(slide_file, monkeypatch):
    """The server-side sign-in (``websession.is_signed_in``) decides, through the real server's ASGI app
    (``dashboard/server.py``: the cookie middleware, the sign-in gate, the tile routes)."""
    from dashboard import server

    monkeypatch.setenv("HISTODASH_PASSWORD_HASH", "scrypt$whatever")  # any value: a login is configured
    assert tileserver.login_configured()
    app = server.app  # no lifespan: the tile routes need no Streamlit runtime
    signed_in, never = websession.new_session_id(), websession.new_session_id()
    websession.sign_in(signed_in, how="password")
    token = tileserver.mint(slide_file, signed_in, "library")
    url = deepest_tile(token)
    assert browser(app, signed_in).get(url).status_code == 200
    # a visitor who never signed in, and a request without any session, get nothing (library scope or not)
    assert browser(app, never).get(url).status_code == 403
    assert browser(app).get(tileserver.dzi_url(token)).status_code == 403
    # a token minted for a session whose sign-in has since expired (or was never held) gives nothing either
    stale = tileserver.mint(slide_file, never, "upload")
    assert browser(app, never).get(tileserver.dzi_url(stale)).status_code == 403
    # signing out ends the sign-in at once (every token of it), and the sign-out path revokes its tokens
    websession.sign_out(signed_in)
    assert browser(app, signed_in).get(url).status_code == 403
    assert tileserver.revoke_session(signed_in) == 1 and token not in tileserver._GRANTS
    # without a login every session may read library tiles again
    monkeypatch.delenv("HISTODASH_PASSWORD_HASH")
    assert browser(app, never).get(tileserver.dzi_url(stale)).status_code == 200


def test_expired_tokens_and_replaced_files_get_403(app, slide_file, tmp_path, monkeypatch):
    sid = websession.new_session_id()
    token = tileserver.mint(slide_file, sid, "upload")
    client = browser(app, sid)
    assert client.get(tileserver.dzi_url(token)).status_code == 200
    later = time.time() + tileserver.IDLE_TTL_S + 1
    with monkeypatch.context() as m:
        m.setattr(tileserver.time, "time", lambda: later)
        assert client.get(tileserver.dzi_url(token)).status_code == 403
    copy = tmp_path / "upload.svs"
    shutil.copy(slide_file, copy)
    token = tileserver.mint(copy, sid, "upload")
    assert client.get(tileserver.dzi_url(token)).status_code == 200
    make_pyramid(tmp_path / "other.tif", width=512, height=512, levels=1)
    shutil.move(tmp_path / "other.tif", copy)  # re-uploaded under the same name: the old token names the old file
    assert client.get(tileserver.dzi_url(token)).status_code == 403
    assert tileserver.mint(copy, sid, "upload") != token


def test_the_server_entry_point_serves_the_tile_routes():
    from dashboard import server

    assert any(getattr(r, "path", "").startswith(tileserver.PREFIX) for r in server.ROUTES)
