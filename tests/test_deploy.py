"""deploy/, checked offline: no Docker engine or cluster runs here, so the Dockerfiles go through
hadolint, the manifests through the Kubernetes schemas (kubernetes-validate, strict), and every
command, variable, port and path they name is checked against the code. ``test_e2e.py`` runs
what the images run (PostgreSQL, two replicas, nginx) for real on loopback."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from chatbot.cli import _chosen_channel, build_parser
from plugins.serving import OPERATIONS_PATHS

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILES = sorted(DEPLOY.glob("Dockerfile.*"))
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))
PORTS = {"web": 7860, "slack": 3000}  # the channels' default ports


def _tool(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(found).exists():
        pytest.fail(f"{name} is missing: pip install -e '.[dev]'")
    return found


def _documents() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, doc)
        for path in [DEPLOY / "compose.yaml", *MANIFESTS]
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def _commands() -> list[list[str]]:
    """Every command line the deployment runs: compose's and the manifests' ``chatbot ...`` lists."""
    found: list[list[str]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            if node and node[0] == "chatbot" and all(isinstance(item, str) for item in node):
                found.append(node)
            for value in node:
                walk(value)

    for _, document in _documents():
        walk(document)
    for dockerfile in DOCKERFILES:
        for match in re.finditer(r"^(?:CMD|ENTRYPOINT) (\[.*\])$", dockerfile.read_text(), re.M):
            command = yaml.safe_load(match.group(1))
            if command[0] == "chatbot":
                found.append(command)
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_dockerfiles_pass_hadolint_and_run_as_a_numeric_non_root_user(dockerfile: Path) -> None:
    linted = subprocess.run([_tool("hadolint"), str(dockerfile)], capture_output=True, text=True, check=False)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    text = dockerfile.read_text()
    (user,) = re.findall(r"^USER (\S+)$", text, re.M)
    assert user.isdigit() and user != "0"
    assert re.search(r"^HEALTHCHECK ", text, re.M)
    for copied in re.findall(r"^COPY (\S+) ", text, re.M):
        assert (ROOT / copied).exists(), f"{dockerfile.name} copies {copied}, which is not in the repository"


def test_the_manifests_validate_against_the_kubernetes_schemas() -> None:
    validated = subprocess.run(
        [_tool("kubernetes-validate"), "--strict", "--quiet", *map(str, MANIFESTS)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert validated.returncode == 0, validated.stdout + validated.stderr
    kinds = {doc["kind"] for path, doc in _documents() if path.parent.name == "k8s"}
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "Job",
        "Secret",
        "PersistentVolumeClaim",
    } <= kinds


def test_every_command_the_deployment_runs_is_one_the_cli_takes() -> None:
    commands = _commands()
    assert {tuple(c[1:3]) for c in commands} >= {("serve", "--channel"), ("db", "upgrade"), ("train",)}
    for command in commands:
        args = command[1:]
        if args == ["train"]:  # the training image's entry point: its arguments come with `docker run`
            args = ["train", "--data", "/data/transcripts.jsonl", "--base", "gpt2", "--out", "/models"]
        parsed = build_parser(channel_flags=_chosen_channel(args)).parse_args(args)
        if getattr(parsed, "channel", None) in PORTS:
            assert parsed.port == PORTS[parsed.channel] and parsed.host == "0.0.0.0"
            assert str(parsed.model_dir) == "/models/current"


def test_every_variable_probe_port_and_path_exists_in_the_code() -> None:
    code = "\n".join(
        p.read_text() for d in ("chatbot", "plugins", "training") for p in (ROOT / d).rglob("*.py")
    )
    named = set()
    for path in [*DOCKERFILES, DEPLOY / "compose.yaml", *MANIFESTS]:
        named |= set(re.findall(r"\bCHATBOT_[A-Z_]+\b", path.read_text()))
    assert named and not {v for v in named if v not in code}, "deploy/ names variables the code never reads"
    for path, doc in _documents():
        if doc.get("kind") not in ("Deployment", "Job"):
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            for probe in ("readinessProbe", "livenessProbe"):
                if probe in container:
                    assert container[probe]["httpGet"]["path"] in OPERATIONS_PATHS, path.name
            for mount in container.get("volumeMounts", ()):
                assert mount["mountPath"] == "/models"
            ports = {p["containerPort"] for p in container.get("ports", ())}
            assert ports <= set(PORTS.values()), path.name


def test_compose_wires_what_exists() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "migrate", "web-1", "web-2", "nginx", "slack"} <= set(services)
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on {dependency}"
        for volume in service.get("volumes", ()):
            source = volume.split(":")[0]
            if source.startswith("./"):  # deploy's own files (../models is the operator's)
                assert (DEPLOY / source).exists(), f"{name} mounts {source}"
        build = service.get("build")
        if build:
            assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()
    nginx = (DEPLOY / "nginx" / "nginx.conf").read_text()
    assert all(f"server {name}:{PORTS['web']}" in nginx for name in ("web-1", "web-2"))


def test_deploy_readme_names_every_file_and_folder_in_deploy() -> None:
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for path in sorted(DEPLOY.iterdir()):
        if path.name != "README.md" and not path.name.startswith("."):
            name = path.name + ("/" if path.is_dir() else "")
            assert f"`{name}`" in readme, f"deploy/README.md does not say what {name} is"
