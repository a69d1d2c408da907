"""Every setting read from the environment, and a config file that fills in what it leaves unset.

A setting comes from, in order: a command-line flag (for the settings that have one), the
environment, the config file, the default. The config file is TOML (``$CHATBOT_CONFIG``, else
``chatbot.toml`` in the current folder when there is one), one key per variable::

    CHATBOT_STORE = "postgresql+psycopg://chatbot@db/chatbot"
    CHATBOT_LOG_FORMAT = "json"

:func:`apply_config_file` puts its values into the environment of this process, under the real
environment (a variable already set wins), so every part of the code that reads a variable
sees them. ``chatbot config`` prints each setting with its value and where it came from; secrets
are masked.

This module is the one place that reads the environment: the rest of the code asks it for a
setting (:func:`device`, :func:`store_location`, ...) or is given the value by its caller.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatbot.errors import ChatbotError

CONFIG_VARIABLE = "CHATBOT_CONFIG"
DEFAULT_CONFIG = "chatbot.toml"


@dataclass(frozen=True)
class Setting:
    variable: str
    default: str  # as shown; "" = unset
    secret: bool = False
    flag: str | None = None  # the command-line flag that overrides it, if any


SETTINGS: tuple[Setting, ...] = (
    Setting("CHATBOT_CONFIG", "chatbot.toml (when present)"),
    Setting("CHATBOT_STORE", "$XDG_DATA_HOME/chatbot/conversations.db", secret=True, flag="--store"),
    Setting("CHATBOT_STORE_UPGRADE", "1"),
    Setting("CHATBOT_DEVICE", "auto", flag="--device"),
    Setting("CHATBOT_VARIANT", "auto", flag="--variant"),
    Setting("CHATBOT_CUDA_GRAPHS", "1"),
    Setting("CHATBOT_CPU", "auto"),
    Setting("CHATBOT_ATTENTION", "auto"),
    Setting("CC", "cc"),
    Setting("CHATBOT_PREFIX_CACHE_MB", "256"),
    Setting("CHATBOT_DRAFT_TOKENS", "8 where the model folder has a draft table, else 0"),
    Setting("CHATBOT_LOG_FORMAT", "text"),
    Setting("CHATBOT_LOG_CONTENT", ""),
    Setting("CHATBOT_MODELS", "models", flag="--root"),
    Setting("CHATBOT_WEB_AUTH", "", secret=True),
    Setting("CHATBOT_STAFF", "", secret=True),
    Setting("XDG_DATA_HOME", "~/.local/share"),
    Setting("XDG_CACHE_HOME", "~/.cache"),
    Setting("SLACK_BOT_TOKEN", "", secret=True),
    Setting("SLACK_APP_TOKEN", "", secret=True),
    Setting("SLACK_SIGNING_SECRET", "", secret=True),
    Setting("SLACK_API_URL", "https://slack.com/api/"),
    Setting("SLACK_HANDOVER_MENTION", ""),
    Setting("SLACK_STAFF_USERS", ""),
    Setting("SLACK_STAFF_GROUP", "the group SLACK_HANDOVER_MENTION calls"),
    Setting("SLACK_SUPPORT_CHANNEL", ""),
)
_KNOWN = {setting.variable for setting in SETTINGS}

# What apply_config_file loaded: variable -> the file it came from (for `chatbot config`)
loaded_from_file: dict[str, Path] = {}

DEFAULT_PREFIX_CACHE_MB = 256
SUGGESTED_DRAFT_TOKENS = 8  # the default where a folder has a draft table (README "Speculative decoding")
LOG_FORMATS = ("text", "json")


def read(variable: str) -> str:
    """The variable's value, "" when unset: every setting is read through here."""
    return os.environ.get(variable, "")


def data_home() -> Path:
    """``$XDG_DATA_HOME/chatbot`` (``~/.local/share/chatbot``): conversations."""
    return Path(read("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "chatbot"


def cache_home() -> Path:
    """``$XDG_CACHE_HOME/chatbot`` (``~/.cache/chatbot``): the demo model, rebuilt when missing."""
    return Path(read("XDG_CACHE_HOME") or Path.home() / ".cache") / "chatbot"


def store_location() -> str:
    """``$CHATBOT_STORE`` (a SQLite path or a SQLAlchemy URL), else a SQLite file in data_home()."""
    return read("CHATBOT_STORE") or str(data_home() / "conversations.db")


def store_upgrade() -> bool:
    """Whether opening a store applies the schema revisions it lacks (``$CHATBOT_STORE_UPGRADE``)."""
    return read("CHATBOT_STORE_UPGRADE") != "0"


def models_root() -> Path:
    """The versions root: ``$CHATBOT_MODELS``, else ``./models``."""
    return Path(read("CHATBOT_MODELS") or "models")


def device() -> str:
    """``$CHATBOT_DEVICE``: auto (default), cpu or cuda."""
    return (read("CHATBOT_DEVICE") or "auto").lower()


def variant() -> str:
    """``$CHATBOT_VARIANT``: the graph to serve, auto by default."""
    return read("CHATBOT_VARIANT") or "auto"


def cpu() -> str:
    """``$CHATBOT_CPU``: the CPU's int8 instructions (auto: detected; avx2, vnni or amx to
    say so, e.g. to build or serve a folder as another machine would)."""
    return (read("CHATBOT_CPU") or "auto").lower()


ATTENTIONS = ("auto", "native", "onnxruntime")


def attention() -> str:
    """``$CHATBOT_ATTENTION``: what attends over an int8 cache on the CPU. ``native``: the kernel
    compiled on this machine (:mod:`chatbot.kernels`), an error where it cannot be built;
    ``onnxruntime``: ONNX Runtime's GroupQueryAttention; ``auto`` (default): native where it
    builds, else ONNX Runtime's (said once in the log)."""
    wanted = (read("CHATBOT_ATTENTION") or "auto").lower()
    if wanted not in ATTENTIONS:
        raise ChatbotError(
            f"CHATBOT_ATTENTION={wanted!r} is not a kind of attention",
            hint=f"set it to one of {', '.join(ATTENTIONS)}",
        )
    return wanted


def compiler() -> str:
    """``$CC``, else ``cc``: the C compiler that builds :mod:`chatbot.kernels` on this machine."""
    return read("CC") or "cc"


def cuda_graphs() -> bool:
    """Whether GPU decode steps replay from CUDA graphs (``$CHATBOT_CUDA_GRAPHS`` = 0 turns it off)."""
    return read("CHATBOT_CUDA_GRAPHS") != "0"


def prefix_cache_bytes() -> int:
    """``$CHATBOT_PREFIX_CACHE_MB`` (default 256) in bytes: the memory the CPU scheduler may keep
    for conversations' keys and values between their turns (0 keeps nothing)."""
    value = read("CHATBOT_PREFIX_CACHE_MB").strip() or str(DEFAULT_PREFIX_CACHE_MB)
    try:
        megabytes = float(value)
    except ValueError:
        megabytes = -1.0
    if not megabytes >= 0:
        raise ChatbotError(
            f"CHATBOT_PREFIX_CACHE_MB={value!r} is not a size in megabytes",
            hint=f"set it to a number such as {DEFAULT_PREFIX_CACHE_MB}, or 0 to keep nothing between turns",
        )
    return int(megabytes * 2**20)


def draft_tokens() -> int | None:
    """``$CHATBOT_DRAFT_TOKENS``: the tokens the CPU scheduler drafts per step for greedy replies
    (speculative decoding, README "Speculative decoding"); 0 turns it off; ``None`` when unset
    (the loader then drafts :data:`SUGGESTED_DRAFT_TOKENS` where the folder has a draft table)."""
    value = read("CHATBOT_DRAFT_TOKENS").strip()
    if not value:
        return None
    if not value.isdigit():
        raise ChatbotError(
            f"CHATBOT_DRAFT_TOKENS={value!r} is not a whole number of tokens",
            hint=f"set it to a number such as {SUGGESTED_DRAFT_TOKENS}, or 0 to turn speculative decoding "
            "off",
        )
    return int(value)


def log_format() -> str:
    """``$CHATBOT_LOG_FORMAT``: text (default) or json."""
    wanted = (read("CHATBOT_LOG_FORMAT") or "text").lower()
    if wanted not in LOG_FORMATS:
        raise ChatbotError(f"CHATBOT_LOG_FORMAT={wanted!r} is not a log format", hint="use text or json")
    return wanted


def log_content() -> bool:
    """Whether log lines may carry what customers wrote (``$CHATBOT_LOG_CONTENT`` = 1)."""
    return read("CHATBOT_LOG_CONTENT") == "1"


def launcher_processes() -> int:
    """How many processes a distributed launcher (torchrun, accelerate launch) started: ``$WORLD_SIZE``."""
    return int(read("WORLD_SIZE") or "1")


def prefer_cudnn_attention() -> None:
    """Let ONNX Runtime's CUDA attention use cuDNN's kernel rather than XQA (5-13 % faster for GPT-2's
    heads, README "Speed"): ``ORT_ENABLE_XQA=0`` unless set, read when a CUDA session is created."""
    os.environ.setdefault("ORT_ENABLE_XQA", "0")


def config_path() -> Path | None:
    """The config file in use: ``$CHATBOT_CONFIG`` (which must exist), else ./chatbot.toml if present."""
    named = os.environ.get(CONFIG_VARIABLE)
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise ChatbotError(
                f"{CONFIG_VARIABLE} names {path}, which is not a file",
                hint=f"create it, or unset {CONFIG_VARIABLE}",
            )
        return path
    default = Path(DEFAULT_CONFIG)
    return default if default.is_file() else None


def read_config_file(path: Path) -> dict[str, str]:
    """The file's settings; a clear error for bad TOML, an unknown key or a non-scalar value."""
    import tomllib

    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ChatbotError(
            f"cannot read the config file {path}: {error}", hint="fix it, or remove it"
        ) from error
    values = {}
    for key, value in data.items():
        if key not in _KNOWN or key == CONFIG_VARIABLE:
            raise ChatbotError(
                f"{path}: {key!r} is not a setting",
                hint="see `chatbot config` for the settings (README: Environment)",
            )
        if isinstance(value, bool):
            value = "1" if value else "0"
        if not isinstance(value, (str, int, float)):
            raise ChatbotError(f"{path}: {key} must be a string or a number, not {type(value).__name__}")
        values[key] = str(value)
    return values


def apply_config_file() -> Path | None:
    """Fill the environment from the config file, under what is already set; the file used."""
    path = config_path()
    loaded_from_file.clear()
    if path is None:
        return None
    for key, value in read_config_file(path).items():
        if key not in os.environ:
            os.environ[key] = value
            loaded_from_file[key] = path
    return path


def mask(value: str) -> str:
    """A secret as ``xoxb…***`` (the first 4 characters at most, never more than a quarter)."""
    if not value:
        return ""
    shown = min(4, len(value) // 4)
    return value[:shown] + "***"


def describe(
    flags: dict[str, Any] | None = None, *, show_store: Callable[[str], str] | None = None
) -> list[tuple[str, str, str]]:
    """(setting, value as shown, source) for every setting; ``flags`` are the command's parsed
    flags by option string (e.g. ``{"--store": "x.db"}`` when given on the command line).
    ``show_store`` shows a store location without its password (masked whole by default)."""
    rows = []
    for setting in SETTINGS:
        if flags and setting.flag and flags.get(setting.flag) is not None:
            value, source = str(flags[setting.flag]), f"flag {setting.flag}"
        elif setting.variable in loaded_from_file:
            value, source = os.environ[setting.variable], f"config file {loaded_from_file[setting.variable]}"
        elif setting.variable in os.environ:
            value, source = os.environ[setting.variable], "environment"
        else:
            value, source = setting.default, "default"
        if setting.secret and source != "default":
            value = _mask_secret(setting.variable, value, show_store)
        rows.append((setting.variable, value, source))
    return rows


def _mask_secret(variable: str, value: str, show_store: Callable[[str], str] | None) -> str:
    if variable != "CHATBOT_STORE" or show_store is None:
        return mask(value)
    try:
        return show_store(value)
    except ChatbotError:  # not a parsable URL: mask it all
        return mask(value)
