"""Driving the console in a real browser: sign in, open a run, wait for stream events."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from api_helpers import ApiServer, sse_messages


def wait_for_event(server: ApiServer, key: str, run_id: str, event_type: str) -> None:
    """Follow the run's stream over HTTP until ``event_type`` arrives (pushed, not polled)."""
    with server.client(key) as c, c.stream("GET", f"/v1/runs/{quote(run_id, safe='')}/stream") as s:
        for message in sse_messages(s.iter_lines()):
            if message.event == event_type:
                return
    raise AssertionError(f"{event_type} never came")


def events_of(server: ApiServer, key: str, run_id: str) -> list[dict[str, Any]]:
    """Every stored event of the run."""
    with server.client(key) as c:
        answer = c.get(f"/v1/runs/{quote(run_id, safe='')}/events", params={"limit": 1000})
        assert answer.status_code == 200, answer.text
        items: list[dict[str, Any]] = answer.json()["items"]
        return items


class Console:
    """One browser context signed in to the console with one key; records page errors."""

    def __init__(self, browser: Any, base_url: str, key: str) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error"
                     else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(f"{base_url}/ui/")
        self.page.fill("#api-key", key)
        self.page.click("#login button[type=submit]")
        self.page.wait_for_selector("#roles")

    def open_run(self, run_id: str) -> None:
        """Show one run (through the console's own link format, no reload)."""
        self.page.evaluate("id => { location.hash = '#/run/' + encodeURIComponent(id); }",
                           run_id)
        self.page.wait_for_selector("#run-status")

    def shot(self, where: Path, name: str) -> Path:
        """A full-page screenshot saved as a test artifact."""
        path = where / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> None:
        """Close the context (the module's browser stays)."""
        self.context.close()


def direct_client(server: ApiServer) -> httpx.Client:
    """An unauthenticated client (for /ui and its headers)."""
    return httpx.Client(base_url=server.base_url, timeout=30)
