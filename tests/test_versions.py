"""Model versions side by side: add, list, use, rollback, and serving the current one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chatbot import Engine, ModelFolder, ModelFolderError
from chatbot.versions import ModelVersionError, ModelVersions, model_folder, resolve_model_path


def chatbot(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, stdin: str = ""):
    return subprocess.run(
        [sys.executable, "-m", "chatbot", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def make_model(tiny_model_dir, tmp_path):
    """``make_model(name, metrics=None)``: a copy of the tiny model folder whose card has that name."""

    def make(name: str, metrics: dict | None = None) -> Path:
        folder = shutil.copytree(tiny_model_dir, tmp_path / "builds" / name)
        card = json.loads((folder / "card.json").read_text())
        card["name"] = name
        if metrics is not None:
            card["metrics"] = metrics
        (folder / "card.json").write_text(json.dumps(card))
        return folder

    return make


@pytest.fixture
def three_versions(make_model, tmp_path) -> ModelVersions:
    """A versions root with v1, v2, v3 (named a, b, c), each made current in turn."""
    versions = ModelVersions(root=tmp_path / "models")
    for name in ("a", "b", "c"):
        versions.add(make_model(name))
    return versions


def current(versions: ModelVersions) -> str | None:
    info = versions.current()
    return None if info is None else info.version


def test_added_versions_sit_side_by_side_with_a_relative_pointer(make_model, tmp_path):
    versions = ModelVersions(root=tmp_path / "models")
    assert versions.list() == [] and versions.current() is None
    first = versions.add(make_model("a", metrics={"eval": {"loss": 1.5}, "note": "text", "ok": True}))
    second = versions.add(make_model("b"))
    assert (first.version, second.version) == ("v1", "v2")
    link = tmp_path / "models" / "current"
    assert link.is_symlink() and os.readlink(link) == "v2"  # relative: the root can be moved
    listed = versions.list()
    assert [(i.version, i.name, i.current) for i in listed] == [("v1", "a", False), ("v2", "b", True)]
    assert listed[0].metrics == {"eval.loss": 1.5} and listed[0].created_at
    assert (tmp_path / "builds" / "a" / "card.json").is_file()  # copied, not moved, by default
    ModelFolder(tmp_path / "models" / "current")  # the pointer is a complete model folder
    actions = [(r["action"], r["version"], r["previous"]) for r in versions.history()]
    assert actions == [("add", "v1", None), ("use", "v1", None), ("add", "v2", "v1"), ("use", "v2", "v1")]


def test_rollback_walks_back_and_a_use_starts_a_new_branch(three_versions):
    versions = three_versions
    assert versions.rollback().version == "v2"
    assert versions.rollback().version == "v1"
    with pytest.raises(ModelVersionError, match="no version before v1 to roll back to") as error:
        versions.rollback()
    assert "chatbot models use VERSION" in str(error.value)
    assert versions.use("v3").version == "v3"  # after v1: the branch is v1 -> v3
    assert versions.rollback().version == "v1"  # not v2: rolled-back-from versions are not redone
    assert versions.use(2).version == "v2"
    assert versions.rollback().version == "v1"


def test_rollback_skips_a_deleted_version_and_counts_a_pointer_changed_by_hand(three_versions, tmp_path):
    versions, root = three_versions, tmp_path / "models"
    shutil.rmtree(root / "v2")
    assert versions.rollback().version == "v1"  # v3 -> (v2 is gone) -> v1
    (root / "current").unlink()
    (root / "current").symlink_to("v3")  # someone pointed it by hand
    assert versions.rollback().version == "v1"  # the version current before the hand-made change


def test_numbers_are_never_reused(three_versions, make_model, tmp_path):
    versions = three_versions
    versions.use("v2")
    shutil.rmtree(tmp_path / "models" / "v3")
    assert versions.add(make_model("d"), make_current=False).version == "v4"
    assert current(versions) == "v2"


def test_a_staged_folder_is_moved_in(three_versions, tiny_model_dir):
    versions = three_versions
    staged = versions.staging_dir()
    assert staged.parent == versions.root and staged.name.startswith(".staging-")
    shutil.copytree(tiny_model_dir, staged, dirs_exist_ok=True)
    info = versions.add(staged, move=True)
    assert info.version == "v4" and info.current and not staged.exists()
    assert [i.version for i in versions.list()] == ["v1", "v2", "v3", "v4"]  # staging is not a version


def test_a_broken_folder_is_refused_before_a_number_is_taken(make_model, tmp_path):
    versions = ModelVersions(root=tmp_path / "models")
    broken = make_model("broken")
    (broken / "onnx" / "model.onnx").unlink()
    with pytest.raises(ModelFolderError, match=r"has no onnx/model\.onnx"):
        versions.add(broken)
    assert versions.list() == [] and not (tmp_path / "models" / "v1").exists()
    assert broken.is_dir()


def test_a_broken_version_is_not_made_current(three_versions, tmp_path):
    versions = three_versions
    (tmp_path / "models" / "v1" / "config.json").write_text("{broken")
    with pytest.raises(ModelFolderError, match=r"config\.json is not readable JSON"):
        versions.use("v1")
    assert current(versions) == "v3"
    assert versions.rollback().version == "v2"
    with pytest.raises(ModelFolderError, match=r"config\.json is not readable JSON"):
        versions.rollback()  # to v1, which is broken
    assert current(versions) == "v2"


def test_errors_say_what_exists_and_what_to_do(three_versions, make_model, tmp_path):
    with pytest.raises(ModelVersionError, match=r"no version 'v7' in .*the versions are v1, v2, v3"):
        three_versions.use("v7")
    with pytest.raises(ModelVersionError, match="is already version v2"):
        three_versions.add(tmp_path / "models" / "v2", move=True)
    empty = ModelVersions(root=tmp_path / "empty")
    for action in (lambda: empty.use("v1"), empty.rollback):
        with pytest.raises(ModelVersionError, match="holds no versions") as error:
            action()
        assert "chatbot train --out" in str(error.value)
    with pytest.raises(ModelVersionError, match="is a model folder, not a versions root"):
        ModelVersions(root=make_model("x"))


def test_resolving_a_versions_root_gives_the_current_version(three_versions, make_model, tmp_path):
    root = tmp_path / "models"
    assert resolve_model_path(root) == root / "v3"
    assert resolve_model_path(root / "current") == root / "v3"  # pinned: a later `use` swaps nothing
    plain = make_model("plain")
    assert resolve_model_path(plain) == plain
    (root / "current").unlink()
    with pytest.raises(ModelFolderError, match="no current version") as error:
        model_folder(root)
    assert "chatbot models use" in str(error.value) and "chatbot train" not in str(error.value)


def test_the_engine_serves_the_current_version_at_start_up(three_versions, tmp_path):
    root = tmp_path / "models"
    with Engine.from_folder(root, store=tmp_path / "c.db") as engine:
        assert engine.folder.path == root / "v3" and engine.folder.name == "c"
        conversation = engine.start()
        assert engine.reply(conversation.id, "Where is my order?").message_id > 0
    three_versions.rollback()
    with Engine.from_folder(root) as engine:
        assert engine.folder.name == "b"


def test_concurrent_adds_get_different_numbers(make_model, tmp_path):
    source, root = make_model("same"), tmp_path / "models"
    adders = [
        subprocess.Popen(
            [sys.executable, "-m", "chatbot", "models", "add", str(source), "--root", str(root)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for adder in adders:
        _, stderr = adder.communicate(timeout=180)
        assert adder.returncode == 0, stderr
    versions = ModelVersions(root=root)
    assert [i.version for i in versions.list()] == ["v1", "v2", "v3", "v4"]
    for info in versions.list():
        ModelFolder(info.path)  # each one complete
    added = sorted(r["version"] for r in versions.history() if r["action"] == "add")
    assert added == ["v1", "v2", "v3", "v4"]
    assert current(versions) in {"v1", "v2", "v3", "v4"}


def test_the_models_commands(make_model, tmp_path):
    for name in ("a", "b"):
        result = chatbot("models", "add", str(make_model(name)), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    assert "added v2 (b, created" in result.stdout and "current version: v2" in result.stdout
    listed = chatbot("models", "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].startswith("  v1    a ") and lines[1].startswith("* v2    b ")
    rolled = chatbot("models", "rollback", cwd=tmp_path)
    assert rolled.returncode == 0 and "rolled back from v2 to v1 (a, created" in rolled.stdout
    assert "restart it" in rolled.stderr
    again = chatbot("models", "rollback", cwd=tmp_path)
    assert again.returncode == 1 and "no version before v1" in again.stderr
    used = chatbot("models", "use", "v9", "--root", str(tmp_path / "models"))
    assert used.returncode == 1 and "the versions are v1, v2" in used.stderr
    assert "Traceback" not in used.stderr + again.stderr


def test_the_list_shows_the_figures_that_compare_versions(make_model, tmp_path):
    evaluation = {"settings": {"max_new_tokens": 64}, "scores": {"model": {"rouge_l": 0.6758, "bleu": 54.69}}}
    metrics = {
        "train_loss": 0.16,
        "validation_loss": 0.4427,
        "validation_perplexity": 1.557,
        "evaluation": evaluation,
    }
    assert chatbot("models", "add", str(make_model("a", metrics)), cwd=tmp_path).returncode == 0
    assert chatbot("models", "add", str(make_model("b", {"eval_loss": 1.25})), cwd=tmp_path).returncode == 0
    lines = chatbot("models", "list", cwd=tmp_path).stdout.splitlines()
    assert lines[0].endswith("validation_loss=0.4427 perplexity=1.557 rouge_l=0.6758 bleu=54.69")
    assert lines[1].endswith("eval_loss=1.25")  # a card without them: its own numbers


def test_chat_on_a_versions_root_named_by_the_environment(make_model, tmp_path):
    root = tmp_path / "elsewhere"
    env = {"CHATBOT_MODELS": str(root)}
    empty = chatbot("models", "list", env=env, cwd=tmp_path)
    assert empty.returncode == 1 and f"{root} holds no versions" in empty.stderr
    assert "chatbot train --out" in empty.stderr
    for name in ("a", "b"):
        assert chatbot("models", "add", str(make_model(name)), env=env).returncode == 0
    assert chatbot("models", "use", "1", env=env).returncode == 0
    store = str(tmp_path / "c.db")
    chat = chatbot("chat", str(root), "--store", store, "--max-new-tokens", "4", stdin="hi\n")
    assert chat.returncode == 0, chat.stderr
    assert "chatting with a " in chat.stdout and "bot> " in chat.stdout


def test_models_alone_shows_its_actions():
    result = chatbot("models")
    assert result.returncode == 2 and "rollback" in result.stdout
