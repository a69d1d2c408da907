"""One resolved set of versions: what `make test` runs is what `make demo` and the images install.

``constraints.txt`` (and ``constraints-optimum.txt`` for the optimum environment) are written by
``make lock``. These tests hold every install to them, and them to pyproject.toml's ranges.
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
LOCK = ROOT / "constraints.txt"
OPTIMUM_LOCK = ROOT / "constraints-optimum.txt"
# what the test environment installs (Makefile: `.[dev]`) and the images (`web`, `slack`,
# `postgres`, `train`); `optimum` has its own lock, `bench` and `gpu` are optional peers
TESTED_EXTRAS = ("train", "web", "slack", "postgres", "dev")
DOCKERFILES = sorted((ROOT / "deploy").glob("Dockerfile.*"))


def _pins(lock: Path) -> dict[str, Version]:
    pins = {}
    for number, line in enumerate(lock.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        name, separator, version = line.partition("==")
        assert separator and version, f"{lock.name}:{number}: {line!r} is not NAME==VERSION"
        pins[canonicalize_name(name)] = Version(version)
    return pins


def _direct(*extras: str) -> list[Requirement]:
    """The project's own requirements (those that apply on this Python), the extras' included."""
    found = [Requirement(r) for r in PROJECT["dependencies"]]
    for extra in extras:
        found += [Requirement(r) for r in PROJECT["optional-dependencies"][extra]]
    environment = default_environment()
    return [
        r
        for r in found
        if canonicalize_name(r.name) != "chatbot" and (r.marker is None or r.marker.evaluate(environment))
    ]


def _installed(name: str) -> Version:
    return Version(Version(metadata.version(name)).base_version)  # torch's "+cpu" is a build label


def test_every_direct_dependency_is_locked_within_its_range() -> None:
    for lock, extras in ((LOCK, (*TESTED_EXTRAS, "gpu")), (OPTIMUM_LOCK, ("optimum",))):
        pins = _pins(lock)
        for requirement in _direct(*extras):
            name = canonicalize_name(requirement.name)
            assert name in pins, f"{requirement} is not in {lock.name}: run `make lock`"
            inside = requirement.specifier.contains(pins[name], prereleases=True)
            assert inside, f"{lock.name} pins {name}=={pins[name]}, outside {requirement}: run `make lock`"


def test_the_test_environment_is_the_lock() -> None:
    """Every direct dependency installed here is the locked version (`make install` used the lock)."""
    pins = _pins(LOCK)
    differ = {
        r.name: (str(_installed(r.name)), str(pins[canonicalize_name(r.name)]))
        for r in _direct(*TESTED_EXTRAS)
        if _installed(r.name) != pins[canonicalize_name(r.name)]
    }
    assert not differ, f"installed (here, locked) differ: {differ}; run `make install` again"


def test_the_stack_is_current() -> None:
    pins = _pins(LOCK)
    assert pins["transformers"].major == 5 and pins["huggingface-hub"].major >= 1
    assert pins["gradio"] >= Version("6.25") and pins["slack-bolt"] >= Version("1.28")
    assert "optimum" not in pins and "optimum-onnx" not in pins  # they hold transformers below 4.58
    optimum = _pins(OPTIMUM_LOCK)
    assert optimum["transformers"] < Version("4.58") and optimum["optimum-onnx"] < Version("0.2")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_image_installs_through_the_lock(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    copied = re.search(r"^COPY [^\n]*\bconstraints\.txt\b", text, re.MULTILINE)
    runs = [m.group(0) for m in re.finditer(r"^RUN (?:[^\n]*\\\n)*[^\n]*", text, re.MULTILINE)]
    installs = [part for run in runs for part in re.split(r"&&", run) if "pip install" in part]
    assert copied and installs, f"{dockerfile.name} copies no constraints.txt or installs nothing"
    for install in installs:
        assert "-c constraints.txt" in install, f"{dockerfile.name}: {install.strip()!r} bypasses the lock"
        # versions come from the lock; torch is named only to keep PyPI's build (see Makefile)
        pinned = [
            p for p in re.findall(r'"?([A-Za-z0-9_.-]+==[^"\s]+)"?', install) if not p.startswith("torch==")
        ]
        assert not pinned, f"{dockerfile.name} pins {pinned} itself: let the lock decide"


def test_the_makefile_installs_through_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    installs = re.findall(r"^\t[^\n]*pip[^\n]* install [^\n]*$", makefile, re.MULTILINE)
    project = [line for line in installs if '".[' in line or "-e" in line.split()]
    outside_lock = [line for line in project if "-c $(" not in line and ".lock/" not in line]
    assert project and not outside_lock, outside_lock
    assert re.search(r"^\$\(BIN\)/\.installed: .*\$\(LOCK\)", makefile, re.MULTILINE)  # a new lock reinstalls


def test_the_gpu_build_matches_the_gpu_image() -> None:
    """onnxruntime-gpu 1.31 is a CUDA 13 build: its provider loads on the image's CUDA 13."""
    pin = _pins(LOCK)["onnxruntime-gpu"]
    gpu_image = (ROOT / "deploy" / "Dockerfile.serve-gpu").read_text()
    cuda = re.search(r"^FROM nvidia/cuda:(\d+)\.", gpu_image, re.MULTILINE)
    assert cuda is not None
    assert (pin.major, pin.minor) == (1, 31) and cuda.group(1) == "13", (
        f"onnxruntime-gpu {pin} on CUDA {cuda.group(1)}: check the CUDA build of that release "
        "(onnxruntime.ai's CUDA execution provider requirements) and update both together"
    )


def test_the_supported_pythons_are_said_once_and_the_lowest_is_tested() -> None:
    floor = PROJECT["requires-python"]
    assert floor == ">=3.11"  # onnxruntime ships no Python 3.10 wheels from 1.24
    tools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]
    assert tools["mypy"]["python_version"] == "3.11" and tools["ruff"]["target-version"] == "py311"
    assert "Python 3.11" in (ROOT / "README.md").read_text()
    locked = re.search(r"Python (\d+\.\d+)", LOCK.read_text().splitlines()[0])
    assert locked is not None and locked.group(1) == "3.11", "lock with the lowest supported Python"
    assert sys.version_info >= (3, 11)
