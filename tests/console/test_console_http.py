"""The console's assets and headers over HTTP, and GET /v1/whoami (no browser needed)."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

from api_helpers import ApiServer, tenant
from console_helpers import direct_client

from dvt_api.console import CSP, STATIC

REPO = Path(__file__).resolve().parents[2]

# Ways a string can become markup or code in a page; the console builds nodes instead.
UNSAFE_SINKS = re.compile(
    r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function\(|"
    r"setTimeout\(\s*['\"`]|\son[a-z]+\s*=\s*['\"]")


def test_every_ui_response_carries_the_csp(console_server: ApiServer) -> None:
    with direct_client(console_server) as c:
        moved = c.get("/ui")
        assert moved.status_code == 308
        assert moved.headers["location"] == "/ui/"
        for path in ("/ui/", "/ui/app.js", "/ui/app.css", "/ui/api.js", "/ui/dag.js"):
            answer = c.get(path)
            assert answer.status_code == 200, path
            assert answer.headers["content-security-policy"] == CSP
            assert answer.headers["x-content-type-options"] == "nosniff"
        assert "script-src 'self'" in CSP
        assert "unsafe-inline" not in CSP
        page = c.get("/ui/").text
        # No inline script or style: each script tag has a src, no style attribute anywhere.
        assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", page) == []
        assert "style=" not in page
        assert c.get("/ui/app.js").headers["content-type"].startswith("text/javascript")
        assert c.get("/ui/missing.js").status_code == 404


def test_assets_use_no_html_sinks_and_no_external_origin() -> None:
    sources = sorted(STATIC.iterdir())
    assert {p.name for p in sources} >= {"index.html", "app.js", "api.js", "dag.js",
                                         "dom.js", "app.css"}
    for path in sources:
        text = Path(path).read_text("utf-8")
        assert UNSAFE_SINKS.search(text) is None, path.name
        # No CDN, font service or other origin: the console works offline.
        assert re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text.replace(
            "http://www.w3.org/2000/svg", "")) is None, path.name


def test_whoami_names_the_key_its_tenant_and_roles(console_server: ApiServer) -> None:
    t = tenant()
    key, key_id = console_server.key_and_id(t, "reader", "approver")
    with console_server.client(key) as c:
        answer = c.get("/v1/whoami")
    assert answer.status_code == 200
    assert answer.json() == {"keyId": key_id, "tenantId": t, "roles": ["approver", "reader"]}
    with direct_client(console_server) as c:
        denied = c.get("/v1/whoami", headers={"Authorization": "Bearer nope"})
    assert denied.status_code == 401
    assert denied.json()["code"] == "UNAUTHENTICATED"


def test_every_asset_is_package_data_of_the_wheel() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))
    globs = config["tool"]["setuptools"]["package-data"]["dvt_api"]
    for path in STATIC.rglob("*"):
        if path.is_file():
            relative = path.relative_to(REPO / "dvt_api").as_posix()
            assert any(fnmatch.fnmatchcase(relative, g) and relative.count("/") == g.count("/")
                       for g in globs), f"{relative} would be left out of the wheel"
