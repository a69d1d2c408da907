"""The web chat served for tests as a user starts it, and the headless browser that drives it
(shared by the chat's tests and the staff console's)."""

from __future__ import annotations

import base64
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from served import ServedProcess

from plugins.web.access import COOKIE

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"


class Server(ServedProcess):
    """The web chat, with the address it printed and the store it writes."""

    def __init__(
        self, model_dir: Path, store: Path | str, *flags: str, env: dict[str, str] | None = None
    ) -> None:
        args = ["serve", "--channel", "web", str(model_dir), "--port", "0", "--store", str(store)]
        # every visitor of these tests comes from 127.0.0.1: no per-address limit (tested in test_limits)
        args += ["--client-rate-limit", "0"]
        super().__init__([*args, "--max-new-tokens", "12", *flags], env={**os.environ, **(env or {})})
        self.store = store
        self.url = self.wait_for_line(r"web chat on (http://\S+)").group(1)

    def client(self, cookie: str | None = None, **headers: str) -> Any:
        from gradio_client import Client

        if cookie is not None:
            headers["Cookie"] = f"{COOKIE}={cookie}"
        return Client(self.url, verbose=False, headers=headers or None, download_files=False)


def texts(update: Any) -> list[tuple[str, str]]:
    """(role, text) of each message in what an endpoint returned for the chat."""
    messages = update["value"] if isinstance(update, dict) else update
    return [(m["role"], "".join(part["text"] for part in m["content"])) for m in messages]


def new_cookie() -> str:
    return base64.urlsafe_b64encode(os.urandom(24)).decode()


CHROMIUM = os.environ.get("CHATBOT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        message = "chromium is not installed (`make test` installs Debian's chromium)"
        if os.environ.get("CHATBOT_BROWSER_TESTS") == "required":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
        yield launched
        launched.close()


def screenshot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def wait_for(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
