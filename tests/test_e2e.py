"""What the deployment runs, run for real on loopback: PostgreSQL, two web-chat replicas and nginx
(Debian's) in front of them with ``deploy/nginx``'s proxy settings; customers talk through nginx."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from gradio_client import Client
from served import ServedProcess, free_port, run_to_end

from chatbot import SQLStore
from plugins.web.access import COOKIE, conversation_id

ROOT = Path(__file__).resolve().parents[1]
NGINX = os.environ.get("CHATBOT_NGINX") or shutil.which("nginx") or "/usr/sbin/nginx"
STAFF = "ada:ada-password-1"


class Replica(ServedProcess):
    def __init__(self, model_dir: Path, store: str, port: int, max_new_tokens: int = 12) -> None:
        env = {**os.environ, "CHATBOT_STORE_UPGRADE": "0", "CHATBOT_STAFF": STAFF}  # upgraded once, before
        args = ["serve", "--channel", "web", str(model_dir), "--port", str(port), "--store", store]
        super().__init__([*args, "--max-new-tokens", str(max_new_tokens)], env=env)
        self.port = port
        self.wait_for_line(r"web chat on http://")


class Nginx:
    """nginx in the foreground with a configuration in ``folder`` that includes deploy/nginx's files."""

    def __init__(self, folder: Path, ports: list[int]) -> None:
        self.port = free_port()
        servers = "\n".join(f"server 127.0.0.1:{p} max_fails=1 fail_timeout=10s;" for p in ports)
        user = "user root;" if os.geteuid() == 0 else ""  # workers must read the temporary folder
        deploy = ROOT / "deploy" / "nginx"
        config = folder / "nginx.conf"
        config.write_text(
            f"""{user}
worker_processes 1;
daemon off;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format upstreams '$upstream_addr';
    access_log {folder}/access.log upstreams;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
    upstream chatbot_web {{
        include {deploy}/upstream.conf;
        {servers}
    }}
    server {{
        listen 127.0.0.1:{self.port};
        location / {{ include {deploy}/chatbot-proxy.conf; }}
    }}
}}
"""
        )
        self.process = subprocess.Popen([NGINX, "-c", str(config), "-p", str(folder)], stderr=subprocess.PIPE)
        self.url = f"http://127.0.0.1:{self.port}/"
        self.access_log = folder / "access.log"
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(self.url + "healthz", timeout=2):
                    break
            except OSError:
                assert self.process.poll() is None, self.process.stderr and self.process.stderr.read()
                assert time.monotonic() < deadline, "nginx did not answer"
                time.sleep(0.2)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGQUIT)  # graceful
        self.process.wait(timeout=20)
        if self.process.stderr is not None:
            self.process.stderr.close()


@pytest.fixture
def deployment(
    tiny_model_dir: Path, postgres_url: str, tmp_path: Path
) -> Iterator[tuple[Nginx, list[Replica]]]:
    if not Path(NGINX).exists():
        if os.environ.get("CHATBOT_NGINX_TESTS") == "required" or os.environ.get("CI"):
            pytest.fail(f"nginx is missing at {NGINX} (`make test` installs Debian's nginx-light)")
        pytest.skip("nginx is not installed")
    upgraded = run_to_end(["db", "upgrade", "--store", postgres_url])
    assert upgraded.returncode == 0, upgraded.stderr
    replicas = [Replica(tiny_model_dir, postgres_url, free_port()) for _ in range(2)]
    proxy = Nginx(tmp_path, [r.port for r in replicas])
    yield proxy, replicas
    proxy.stop()
    for replica in replicas:
        replica.stop()


def _say(url: str, cookie: str, text: str) -> None:
    client = Client(url, verbose=False, headers={"Cookie": f"{COOKIE}={cookie}"}, download_files=False)
    client.predict(text, api_name="/chat")
    client.close()


def test_conversations_through_nginx_survive_the_loss_of_a_replica(
    deployment: tuple[Nginx, list[Replica]], postgres_url: str
) -> None:
    proxy, replicas = deployment
    customers = [f"customer-{i}-{os.urandom(8).hex()}" for i in range(12)]
    for cookie in customers:
        _say(proxy.url, cookie, "Where is my order?")
    used = proxy.access_log.read_text()
    assert all(f"127.0.0.1:{r.port}" in used for r in replicas)  # the sessions spread over both
    with SQLStore(postgres_url) as store:
        for cookie in customers:
            turns = store.get_conversation(conversation_id(cookie)).messages
            assert [t.role for t in turns] == ["user", "assistant"]
    # one replica dies mid-service; every customer goes on, with the whole history
    replicas[0].process.send_signal(signal.SIGKILL)
    replicas[0].process.wait(timeout=20)
    for cookie in customers:
        _say(proxy.url, cookie, "It was order 1234")
    with SQLStore(postgres_url) as store:
        for cookie in customers:
            turns = store.get_conversation(conversation_id(cookie)).messages
            assert [(t.role, t.content) for t in turns if t.role == "user"] == [
                ("user", "Where is my order?"),
                ("user", "It was order 1234"),
            ]
            first, second = (t for t in turns if t.role == "assistant")
            assert second.meta["prompt_tokens"] > first.meta["prompt_tokens"]  # the history was in the prompt
    with urllib.request.urlopen(proxy.url + "readyz", timeout=10) as response:
        assert response.status == 200


def test_the_load_script_runs_against_the_replicas_and_finds_every_turn_in_the_store(
    deployment: tuple[Nginx, list[Replica]], postgres_url: str, tmp_path: Path
) -> None:
    proxy, _ = deployment
    out = tmp_path / "load"
    script = ROOT / "deploy" / "loadtest.py"
    args = ["--url", proxy.url, "--store", postgres_url, "--conversations", "4", "--duration", "4"]
    done = subprocess.run(
        [sys.executable, str(script), *args, "--think", "0.2", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((out / "loadtest.json").read_text())
    assert results["replies"] >= 4 and results["errors"] == 0
    assert results["store"]["missing"] == {} and results["store"]["replies_stored"] >= results["replies"]
    assert "| replies | replies/s | p50 (s)" in (out / "loadtest.md").read_text()


def test_a_staff_reply_written_on_one_replica_reaches_a_customer_on_the_other(
    deployment: tuple[Nginx, list[Replica]],
) -> None:
    """The staff console on one replica, the customer's page on the other, one PostgreSQL store."""
    _, (first, second) = deployment
    cookie = base64.urlsafe_b64encode(os.urandom(24)).decode()
    customer = Client(
        f"http://127.0.0.1:{first.port}/", verbose=False, headers={"Cookie": f"{COOKIE}={cookie}"}
    )
    customer.predict(api_name="/talk_to_a_person")
    key = urllib.parse.quote(conversation_id(cookie), safe="")
    auth = {
        "Authorization": "Basic " + base64.b64encode(STAFF.encode()).decode(),
        "Accept": "application/json",
    }
    for action, form in (("take", {}), ("reply", {"text": "Ada here, from the other replica."})):
        request = urllib.request.Request(
            f"http://127.0.0.1:{second.port}/staff/conversations/{key}/{action}",
            data=urllib.parse.urlencode(form).encode(),
            headers=auth,
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 200
    history = customer.predict(api_name="/history")
    last = history[-1] if isinstance(history, list) else history["value"][-1]
    text = "".join(part["text"] for part in last["content"])
    assert text.startswith("Ada here, from the other replica.") and "a person from our support team" in text
    customer.close()
