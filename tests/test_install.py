"""Installing as a user would, into fresh virtual environments: `pip install .` is enough to serve (no
torch), and the training and channel extras settle beside a transformers 5 that is already there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "optimum", "datasets", "accelerate")


def _source(tmp_path):
    """A copy of the project as a user's checkout has it (no build leftovers)."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("chatbot", "plugins", "training"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    return source


def _venv(path):
    venv.EnvBuilder(with_pip=True).create(path)
    return path / "bin" / "python"


def _pip(python, *args, timeout=900):
    result = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_the_serving_install_has_no_torch_and_chats(tiny_model_dir, tmp_path):
    source = _source(tmp_path)
    env_dir = tmp_path / "venv"
    python = _venv(env_dir)
    _pip(python, "install", "--quiet", str(source))
    listed = _pip(python, "list", "--format=freeze")
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
    # the training tools' commands are listed all the same, and say what to install when run
    chatbot = str(env_dir / "bin" / "chatbot")
    listed = subprocess.run([chatbot, "--help"], capture_output=True, text=True, timeout=120)
    for command in ("chat", "serve", "train", "export", "eval", "bench", "demo", "models", "feedback"):
        assert f"    {command} " in listed.stdout, command
    data = tmp_path / "data.jsonl"
    data.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    )
    for args in (
        ["train", "--data", str(data), "--from-scratch", "tiny", "--out", str(tmp_path / "models")],
        ["export", str(tiny_model_dir)],
        ["eval", str(tiny_model_dir), str(data)],
        ["bench", "--config", "tiny"],
        ["demo", "--channel", "terminal"],
    ):
        run = subprocess.run(
            [chatbot, *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
        )
        assert run.returncode == 1, (args, run.stderr)
        assert "pip install 'chatbot[train]'" in run.stderr and "Traceback" not in run.stderr, run.stderr


# Caps of other projects' that move a package below what transformers 5 brought; each is checked to
# still be there, so the exception goes when upstream lifts it. Ours move nothing.
UPSTREAM_CAPS = {"tomlkit": "gradio"}  # gradio 6.31: tomlkit<0.15 (transformers' kernels takes 0.15)


def test_the_extras_downgrade_nothing_beside_transformers_5(tmp_path):
    """A team's environment that already holds the newest transformers 5 takes the training and
    channel extras without pip moving any version it holds back (resolved, not installed)."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    python = _venv(tmp_path / "venv")
    _pip(python, "install", "--quiet", "transformers>=5,<6")
    held = {p["name"].lower(): p["version"] for p in json.loads(_pip(python, "list", "--format=json").stdout)}
    assert held["transformers"].startswith("5.")
    report = tmp_path / "report.json"
    # torch as the Makefile installs it (a looser torch would be resolved as PyPI's CUDA build)
    _pip(python, "install", "--dry-run", "--quiet", "--report", str(report),
         f"{_source(tmp_path)}[train,web,slack]", "torch==2.13.0")  # fmt: skip
    planned = {
        item["metadata"]["name"].lower(): item["metadata"]
        for item in json.loads(report.read_text())["install"]
    }
    assert "transformers" not in planned  # kept as it was
    back = {
        n: (held[n], m["version"])
        for n, m in planned.items()
        if n in held and Version(m["version"]) < Version(held[n])
    }
    for name, (had, gets) in back.items():
        capper = UPSTREAM_CAPS.get(name)
        assert capper is not None, f"pip would move {name} back from {had} to {gets}"
        caps = [Requirement(r) for r in planned[capper].get("requires_dist", [])]
        assert any(r.name.lower() == name and not r.specifier.contains(had) for r in caps), (
            f"{capper} no longer caps {name}: remove it from UPSTREAM_CAPS"
        )
