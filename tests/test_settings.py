"""`chatbot config` and the config file: where every setting comes from, secrets masked."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from chatbot.settings import SETTINGS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _config(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return _chatbot(cwd, "config", *args, **env)


def _chatbot(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``chatbot ARGS`` in ``cwd`` with none of this machine's CHATBOT_/SLACK_ variables, plus ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CHATBOT_", "SLACK_"))}
    return subprocess.run(
        [sys.executable, "-m", "chatbot", *args],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _sources(output: str) -> dict[str, tuple[str, str]]:
    rows = {}
    for line in output.splitlines()[1:]:
        match = re.match(r"^(\S+)\s+(.*?)\s+\[(.+)\]$", line)
        assert match, line
        rows[match.group(1)] = (match.group(2), match.group(3))
    return rows


def test_a_setting_comes_from_the_flag_then_the_environment_then_the_file_then_the_default(
    tmp_path: Path,
) -> None:
    (tmp_path / "chatbot.toml").write_text(
        'CHATBOT_LOG_FORMAT = "json"\nCHATBOT_DEVICE = "cuda"\nCHATBOT_STORE = "from-file.db"\n'
        'SLACK_SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"\nCHATBOT_STORE_UPGRADE = false\n'
    )
    done = _config(
        tmp_path, "--store", "from-flag.db", CHATBOT_DEVICE="cpu", SLACK_BOT_TOKEN="xoxb-1234-secret-part"
    )
    assert done.returncode == 0, done.stderr
    rows = _sources(done.stdout)
    assert rows["CHATBOT_STORE"] == ("from-flag.db", "flag --store")
    assert rows["CHATBOT_DEVICE"] == ("cpu", "environment")
    assert rows["CHATBOT_LOG_FORMAT"] == ("json", "config file chatbot.toml")
    assert rows["CHATBOT_STORE_UPGRADE"] == ("0", "config file chatbot.toml")
    assert rows["CHATBOT_VARIANT"] == ("auto", "default")
    assert rows["SLACK_BOT_TOKEN"][0] == "xoxb***" and rows["SLACK_SIGNING_SECRET"][0] == "8f74***"
    assert "secret-part" not in done.stdout and "b10e8888" not in done.stdout
    assert set(rows) == {s.variable for s in SETTINGS}


def test_the_config_file_reaches_the_commands_and_a_bad_one_is_named(tmp_path: Path) -> None:
    named = tmp_path / "elsewhere.toml"
    named.write_text('CHATBOT_STORE = "postgresql+psycopg://bot:pa55w0rd@db.example/chat"\n')
    done = _config(tmp_path, CHATBOT_CONFIG=str(named))
    assert _sources(done.stdout)["CHATBOT_STORE"] == (
        "postgresql+psycopg://bot:***@db.example/chat",
        f"config file {named}",
    )
    assert "pa55w0rd" not in done.stdout
    (tmp_path / "chatbot.toml").write_text('CHATBOT_STORE = "from-file.db"\n')
    upgraded = _chatbot(tmp_path, "db", "upgrade")
    assert upgraded.returncode == 0 and (tmp_path / "from-file.db").is_file()  # a command used the file
    (tmp_path / "chatbot.toml").write_text('CHATBOT_STOER = "typo.db"\n')
    refused = _config(tmp_path)
    assert refused.returncode == 1 and "chatbot.toml: 'CHATBOT_STOER' is not a setting" in refused.stderr
    missing = _config(tmp_path, CHATBOT_CONFIG=str(tmp_path / "none.toml"))
    assert missing.returncode == 1 and "which is not a file" in missing.stderr


def test_the_readme_lists_exactly_the_settings_of_the_code() -> None:
    listed = set(re.findall(r"^\| `((?:CHATBOT|SLACK|XDG)_[A-Z_]+|CC)` \|", README, re.M))
    assert listed == {s.variable for s in SETTINGS}


def test_the_environment_is_read_in_one_place():
    """chatbot.settings reads every setting; the rest of the engine and training ask it or take values."""
    root = Path(__file__).resolve().parents[1]
    readers = [
        path.relative_to(root).as_posix()
        for package in ("chatbot", "training")
        for path in (root / package).rglob("*.py")
        if ("os.environ" in (text := path.read_text(encoding="utf-8")) or "os.getenv" in text)
    ]
    assert readers == ["chatbot/settings.py"]
