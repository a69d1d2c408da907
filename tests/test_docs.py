"""Meta-tests: the README keeps up with the commands, channels and environment variables."""

from __future__ import annotations

import argparse
import re
from importlib.metadata import entry_points
from pathlib import Path

from chatbot.channels import GROUP
from chatbot.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_command_is_in_the_readme():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in commands.choices:
        assert f"chatbot {name}" in README, f"`chatbot {name}` is not documented in README.md"


def test_every_environment_variable_is_in_the_readme():
    code = "\n".join(
        p.read_text(encoding="utf-8")
        for d in ("chatbot", "plugins", "training")
        for p in (ROOT / d).rglob("*.py")
    )
    variables = set(re.findall(r"\bCHATBOT_[A-Z_]+\b", code))
    assert variables, "expected the code to read some CHATBOT_* variables"
    for variable in variables:
        assert f"`{variable}`" in README, f"{variable} is read by the code but not documented"


def test_every_built_in_channel_is_in_the_readme():
    ours = [ep for ep in entry_points(group=GROUP) if ep.value.startswith("plugins.")]
    assert ours
    for ep in ours:
        assert f"`{ep.name}`" in README and ep.value in README


def test_the_two_setup_commands_are_in_the_readme_and_ci_runs_the_test_one():
    assert "make demo" in README and "make test" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_channel_flag_and_slack_variable_is_in_the_readme():
    from plugins.slack import SlackChannel
    from plugins.web import WebChannel

    for channel in (WebChannel, SlackChannel):
        parser = argparse.ArgumentParser(add_help=False)
        channel.add_arguments(parser)
        for action in parser._actions:
            for flag in action.option_strings:
                assert f"`{flag}" in README, f"{channel.__name__}'s {flag} is not documented in README.md"
    code = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "plugins" / "slack").glob("*.py"))
    for variable in set(re.findall(r"\bSLACK_[A-Z_]+\b", code)):
        assert f"`{variable}`" in README, f"{variable} is read by the Slack channel but not documented"


def test_the_code_points_only_at_what_the_repository_holds():
    """Docstrings and comments name README sections, never notes outside the repository."""
    outside = "../" + "shared/"  # spelt in two so that this file does not name it
    for package in ("chatbot", "plugins", "training", "tests"):
        for path in (ROOT / package).rglob("*.py"):
            assert outside not in path.read_text(encoding="utf-8"), path


def _layout_section() -> str:
    return README[README.index("## Layout and layers") :]


def test_the_layout_section_names_every_folder_of_training():
    section = _layout_section()
    for folder in sorted(p for p in (ROOT / "training").iterdir() if (p / "__init__.py").is_file()):
        assert f"`training/{folder.name}/`" in section, (
            f"README's layout does not say what training/{folder.name} is"
        )
    for module in ("card.py", "commands.py", "pytest_plugin.py"):
        assert f"`training/{module}`" in section


def test_the_layout_section_draws_the_engines_layers_as_the_contract_holds_them():
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(
        c["layers"] for c in contracts if c["type"] == "layers" and c.get("containers") == ["chatbot"]
    )
    drawn = _layout_section().split("```")[3].strip().splitlines()
    assert ["__main__", *drawn] == layers, "README's layers and pyproject.toml's layers contract differ"
    modules = {p.stem for p in (ROOT / "chatbot").glob("*.py")} - {"__init__", "__main__"}
    in_layers = {name.strip() for row in layers for name in row.split("|")}
    assert modules <= in_layers, f"not in a layer: {sorted(modules - in_layers)}"
