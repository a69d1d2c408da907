"""Model versions kept side by side, with a pointer to the one being served.

A *versions root* (``models/`` by default) holds complete model folders and a relative symlink
to the current one::

    models/
      v1/  v2/  v3/          complete model folders; numbers only grow and are never reused
      current -> v3          swapped atomically (a new link, then os.replace)
      history.jsonl          one JSON object per change: time, action, version, previous

``models/current`` is therefore a model folder path like any other, and ``models`` itself may be
given wherever a model folder is expected: :func:`resolve_model_path` turns it into the current
version's folder (``chatbot chat models``).

**Rollback is undo.** The versions that were made current (by ``add`` or ``use``) form a stack;
:meth:`ModelVersions.rollback` pops it, so repeated rollbacks walk further back. A ``use`` after
rollbacks pushes onto what is left: the versions rolled back from are not redone by a later
rollback (to go forward again, ``use`` them by name). Versions whose folder was deleted are
skipped. A pointer changed by hand counts as the latest change.

>>> versions = ModelVersions(root="models")                     # doctest: +SKIP
>>> versions.add("build/model", make_current=True).version      # doctest: +SKIP
'v4'
>>> versions.rollback().version                                  # doctest: +SKIP
'v3'

Only POSIX systems are supported (symlinks and ``flock``). A running server keeps the version
it started with; restart it after ``use`` or ``rollback``.
"""

from __future__ import annotations

import builtins
import json
import os
import re
import shutil
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chatbot.card import card_path, read_card
from chatbot.errors import ModelFolderError
from chatbot.folder import ModelFolder

if sys.platform != "win32":
    import fcntl

__all__ = [
    "CURRENT",
    "HISTORY",
    "ModelVersionError",
    "ModelVersions",
    "VersionInfo",
    "is_versions_root",
    "no_versions_error",
    "resolve_model_path",
]

CURRENT = "current"  # the symlink to the served version
HISTORY = "history.jsonl"  # one JSON object per change of the versions root
LOCK = ".lock"  # flock'ed while the pointer or the history changes
STAGING_PREFIX = ".staging-"  # folders being copied in, or written by training, before they are added
VERSION_NAME = re.compile(r"v([1-9][0-9]*)")
CREATE_HINT = (
    "create a version with `chatbot train --out {root}`, "
    "or add a model folder with `chatbot models add FOLDER --root {root}`"
)


class ModelVersionError(ModelFolderError):
    """A versions root that cannot do what was asked: unknown version, nothing to roll back to..."""


@dataclass(frozen=True)
class VersionInfo:
    """One version in a versions root, as read from its ``card.json``.

    ``problem`` says why the folder is not usable (no card, unreadable card); it is ``None`` for
    a complete-looking folder. ``card`` is a copy: changing it changes nothing on disk.
    """

    version: str  # "v3"
    number: int  # 3
    path: Path
    current: bool
    card: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None

    @property
    def name(self) -> str:
        return str(self.card.get("name") or self.version)

    @property
    def created_at(self) -> str:
        return str(self.card.get("created_at") or "")

    @property
    def metrics(self) -> dict[str, float]:
        """The card's numeric metrics, nested keys joined with dots (``eval.loss``)."""
        return _flat_numbers(self.card.get("metrics"))


def is_versions_root(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a versions root: it has a ``current`` link or a history file."""
    root = Path(path)
    return root.is_dir() and ((root / CURRENT).is_symlink() or (root / HISTORY).is_file())


def resolve_model_path(path: str | os.PathLike[str]) -> Path:
    """The model folder to load for ``path``.

    A versions root (``models``) and its pointer (``models/current``) give the folder of the
    current version (``models/v3``), read once, so a later ``use`` cannot swap files under a
    loading engine. Any other path is returned as given.
    """
    given = Path(path).expanduser()
    root = given.parent if given.name == CURRENT and given.is_symlink() else given
    if not is_versions_root(root):
        return given
    return ModelVersions(root=root).require_current().path


def model_folder(path: str | os.PathLike[str]) -> ModelFolder:
    """The model folder at ``path``, or the current version's when ``path`` is a versions root or
    its ``current`` pointer (:func:`resolve_model_path`)."""
    return ModelFolder(resolve_model_path(path))


class ModelVersions:
    """The versions in one versions root.

    ``root`` is the folder that holds ``v1``, ``v2``, ... and ``current`` (created by the first
    :meth:`add`). Reading methods never change anything; changes of the pointer and the history
    are serialised between processes by a lock file.
    """

    def __init__(self, *, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser()
        if self.root.exists() and not self.root.is_dir():
            raise ModelVersionError(
                f"{self.root} is not a folder", hint="give the folder that holds v1, v2, ..."
            )
        if (self.root / "config.json").is_file():
            raise ModelVersionError(
                f"{self.root} is a model folder, not a versions root",
                hint="give the folder that holds the versions (v1, v2, ...), e.g. `models`",
            )

    def __repr__(self) -> str:
        return f"ModelVersions(root={str(self.root)!r})"

    # -- reading ---------------------------------------------------------------------------

    def list(self) -> builtins.list[VersionInfo]:  # builtins.list: this method shadows list here
        """Every version, oldest first (an empty list for a missing or empty root)."""
        current = self._pointer()
        return [self._info(name, current=name == current) for name in self._names()]

    def current(self) -> VersionInfo | None:
        """The version ``current`` points at; ``None`` when there is no pointer yet."""
        name = self._pointer()
        if name is None:
            return None
        if not (self.root / name).is_dir():
            raise ModelVersionError(
                f"{self.root / CURRENT} points at {name}, which does not exist",
                hint=f"pick an existing version with `chatbot models use VERSION --root {self.root}`",
            )
        return self._info(name, current=True)

    def require_current(self) -> VersionInfo:
        """The current version; an error saying how to pick or create one when there is none."""
        info = self.current()
        if info is not None:
            return info
        if not self._names():
            raise no_versions_error(self.root)
        raise ModelVersionError(
            f"{self.root} is a versions root with no current version",
            hint=f"pick one with `chatbot models use VERSION --root {self.root}`",
        )

    def get(self, version: str | int) -> VersionInfo:
        """One version by name (``"v3"``, ``"3"`` or ``3``); unknown ones list the known ones."""
        name = self._existing(version)
        return self._info(name, current=name == self._pointer())

    def history(self) -> builtins.list[dict[str, Any]]:
        """The recorded changes, oldest first (lines that cannot be read are skipped)."""
        try:
            lines = (self.root / HISTORY).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        return [record for line in lines if isinstance(record := _json_or_none(line), dict)]

    # -- changing --------------------------------------------------------------------------

    def staging_dir(self) -> Path:
        """A new empty folder inside the root for a model being written; pass it to ``add(move=True)``.

        It is on the same filesystem as the versions, so adding it is a rename.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
        staging.mkdir()  # not mkdtemp: the version keeps this folder's mode, so the umask applies
        return staging

    def add(
        self, folder: str | os.PathLike[str], *, make_current: bool = True, move: bool = False
    ) -> VersionInfo:
        """Add a finished model folder as the next version and (by default) make it current.

        The folder is validated first. ``move=True`` renames it into place (atomic within one
        filesystem; across filesystems it is copied, then removed); otherwise it is copied and
        left as it was. Two processes adding at once get different numbers.
        """
        source = _validated(folder)
        self._check_not_mine(source)
        self.root.mkdir(parents=True, exist_ok=True)
        staged = source if move and _same_device(source, self.root) else self._copy_in(source)
        try:
            name = self._install(staged, make_current=make_current)
        finally:
            if staged != source:
                shutil.rmtree(staged, ignore_errors=True)  # only left when installing failed
        if move and staged != source:
            shutil.rmtree(source)
        return self.get(name)

    def use(self, version: str | int) -> VersionInfo:
        """Make ``version`` current (after checking it is a complete model folder)."""
        name = self._existing(version)
        with self._locked():
            if name != self._pointer():
                _validated(self.root / name)
                self._switch(name, action="use")
        return self.get(name)

    def rollback(self) -> VersionInfo:
        """Make the version that was current before the present one current again."""
        with self._locked():
            present = self.require_current().version
            target = self._previous(present)
            _validated(self.root / target)
            self._switch(target, action="rollback")
        return self.get(target)

    # -- helpers ---------------------------------------------------------------------------

    def _names(self) -> builtins.list[str]:
        """Version folder names, by number."""
        if not self.root.is_dir():
            return []
        found = [p.name for p in self.root.iterdir() if VERSION_NAME.fullmatch(p.name) and p.is_dir()]
        return sorted(found, key=_number)

    def _pointer(self) -> str | None:
        """The version name ``current`` links to, or ``None`` without a link."""
        link = self.root / CURRENT
        if not link.is_symlink():
            if link.exists():
                raise ModelVersionError(
                    f"{link} is not a link", hint="move it away; `chatbot models use VERSION` recreates it"
                )
            return None
        return Path(os.readlink(link)).name

    def _info(self, name: str, *, current: bool) -> VersionInfo:
        path = self.root / name
        card, problem = _read_card(path)
        return VersionInfo(name, _number(name), path, current, card, problem)

    def _existing(self, version: str | int) -> str:
        """The folder name of ``version``; raises with the known versions when it does not exist."""
        text = str(version).strip()
        name = text if text.startswith("v") else f"v{text}"
        if VERSION_NAME.fullmatch(name) and (self.root / name).is_dir():
            return name
        known = self._names()
        if not known:
            raise no_versions_error(self.root)
        raise ModelVersionError(
            f"no version {text!r} in {self.root}", hint=f"the versions are {', '.join(known)}"
        )

    def _check_not_mine(self, source: Path) -> None:
        """Refuse to add one of this root's versions (moving it would break ``current``)."""
        real = source.resolve()
        if real.parent == self.root.resolve() and VERSION_NAME.fullmatch(real.name):
            raise ModelVersionError(
                f"{source} is already version {real.name} of {self.root}",
                hint=f"make it current with `chatbot models use {real.name} --root {self.root}`",
            )

    def _install(self, staged: Path, *, make_current: bool) -> str:
        """Rename ``staged`` to the next version folder, record it, and maybe make it current."""
        with self._locked():
            target = self._claim_next()
            try:
                os.replace(staged, target)
            except OSError:
                target.rmdir()  # give the number back: nothing was installed
                raise
            _fsync_dir(self.root)
            self._record("add", target.name, previous=self._pointer())
            if make_current:
                self._switch(target.name, action="use")
        return target.name

    def _claim_next(self) -> Path:
        """Create the folder of the next free version number (os.mkdir is the claim)."""
        recorded = [_number(str(r.get("version", ""))) for r in self.history()]
        number = max([0, *recorded, *(_number(n) for n in self._names())]) + 1
        while True:
            try:
                (target := self.root / f"v{number}").mkdir()
                return target
            except FileExistsError:
                number += 1

    def _copy_in(self, source: Path) -> Path:
        """A copy of ``source`` in a staging folder inside the root (same filesystem as the versions)."""
        staged = self.staging_dir()
        try:
            shutil.copytree(source, staged, symlinks=True, dirs_exist_ok=True)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        return staged

    def _previous(self, present: str) -> str:
        """The version to roll back to from ``present`` (see the module docstring)."""
        stack = self._undo_stack()
        if stack and stack[-1] == present:
            stack.pop()
        for name in reversed(stack):
            if name != present and (self.root / name).is_dir():
                return name
        raise ModelVersionError(
            f"there is no version before {present} to roll back to in {self.root}",
            hint="`chatbot models list` shows the versions; `chatbot models use VERSION` picks any of them",
        )

    def _undo_stack(self) -> builtins.list[str]:
        """The versions made current, replayed from the history: use pushes, rollback pops."""
        stack: builtins.list[str] = []
        for record in self.history():
            version = str(record.get("version", ""))
            if record.get("action") == "use":
                stack.append(version)
            elif record.get("action") == "rollback":
                while stack and stack[-1] != version:
                    stack.pop()
        return stack

    def _switch(self, name: str, *, action: str) -> None:
        """Point ``current`` at ``name`` atomically, then record it (the caller holds the lock)."""
        previous = self._pointer()
        link = self.root / f".{CURRENT}-{os.getpid()}"
        link.unlink(missing_ok=True)
        link.symlink_to(name, target_is_directory=True)
        os.replace(link, self.root / CURRENT)
        _fsync_dir(self.root)
        self._record(action, name, previous=previous)

    def _record(self, action: str, version: str, *, previous: str | None) -> None:
        """Append one line to the history (the caller holds the lock)."""
        when = datetime.now(UTC).isoformat(timespec="seconds")
        line = json.dumps({"time": when, "action": action, "version": version, "previous": previous})
        with open(self.root / HISTORY, "a", encoding="utf-8") as history:
            history.write(line + "\n")
            history.flush()
            os.fsync(history.fileno())

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the root's lock file (other processes wait)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK, "a") as lock:
            if sys.platform != "win32":
                fcntl.flock(lock, fcntl.LOCK_EX)
            yield


def _create_hint(root: Path) -> str:
    return CREATE_HINT.format(root=root)


def no_versions_error(root: Path) -> ModelVersionError:
    """The error for a versions root that holds no versions yet, saying how to create one."""
    return ModelVersionError(f"{root} holds no versions", hint=_create_hint(root))


def _number(name: str) -> int:
    match = VERSION_NAME.fullmatch(name)
    return int(match[1]) if match else 0


def _validated(folder: str | os.PathLike[str]) -> Path:
    """``folder`` if it is a complete model folder; ModelFolderError naming what is wrong otherwise."""
    return ModelFolder(folder).path


def _same_device(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _read_card(path: Path) -> tuple[dict[str, Any], str | None]:
    """A version's card and, when it cannot be read, why."""
    if not card_path(path).is_file():
        return {}, "no card.json (incomplete folder)"
    try:
        return read_card(path), None
    except ModelFolderError as error:
        return {}, error.message


def _flat_numbers(value: object, prefix: str = "") -> dict[str, float]:
    """Numbers in a nested JSON object, keyed by dotted paths."""
    if isinstance(value, bool) or value is None:
        return {}
    if isinstance(value, (int, float)):
        return {prefix: float(value)} if prefix else {}
    if isinstance(value, dict):
        flat: dict[str, float] = {}
        for key, inner in value.items():
            flat |= _flat_numbers(inner, f"{prefix}.{key}" if prefix else str(key))
        return flat
    return {}


def _json_or_none(line: str) -> object:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None
