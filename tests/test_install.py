"""`pip install .` is enough to serve: a fresh virtual environment with no torch chats with a model."""

from __future__ import annotations

import shutil
import subprocess
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "optimum", "datasets", "accelerate")


def test_the_serving_install_has_no_torch_and_chats(tiny_model_dir, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("chatbot", "plugins", "training"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True
    )
    installed = {line.split("==")[0].lower() for line in listed.stdout.splitlines()}
    assert not installed & set(HEAVY), f"serving pulled in {installed & set(HEAVY)}"
    command = [str(env_dir / "bin" / "chatbot"), "chat", str(tiny_model_dir)]
    chat = subprocess.run(
        [*command, "--store", str(tmp_path / "c.db"), "--max-new-tokens", "4"],
        input="Where is my order?\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert chat.returncode == 0, chat.stderr
    assert "bot> " in chat.stdout
