"""Kernels of our own, compiled on the machine that serves: attention over an int8 cache.

ONNX Runtime's CPU GroupQueryAttention over an int8 cache converts each head's keys and values
to float in a buffer before it multiplies: on GPT-2 124M it was 41-42 % of a 32-conversation
decode step, at ~13 GB/s against a machine that reads 45-70 (README, "Fast graphs").
``attention.c`` is the same attention as an ONNX Runtime custom operator (``ai.chatbot``
``Int8Attention``) that reads each cached row once, as int8, straight into its sums, and asks
for the rows ahead: 12 layers, 32 rows at 160 positions, 3.1-3.2 ms against 8.2-8.9.

It is compiled here, by the machine's C compiler (``$CC``, else ``cc``), for the machine's own
instructions (``-march=native``: an AVX-512 path or an AVX2 path; plain C, slower than ONNX
Runtime's, only when asked for by name), once: the library is kept in
``$XDG_CACHE_HOME/chatbot/kernels`` under a name made of the source, the compiler, the flags and
the CPU, so a home folder shared by two kinds of machine keeps one for each. Graphs are not
changed on disk: :func:`native_graph` rewrites a fused graph's int8-cache attention nodes when
it is loaded, and a machine without a compiler serves the same folder with ONNX Runtime's
(``$CHATBOT_ATTENTION``).

Example::

    from chatbot.kernels import attention_library
    attention_library()  # Path of the built library, or None where it cannot be built
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from chatbot import settings
from chatbot.cpu import cpu_features
from chatbot.errors import ChatbotError

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("attention.c")
DOMAIN = "ai.chatbot"
OPERATOR = "Int8Attention"
NATIVE_FLAGS = ("-march=native",)
BASE_FLAGS = ("-O3", "-std=gnu11", "-fPIC", "-shared", "-fvisibility=default")
# ONNX Runtime reads the external data (the embedding tables) of a graph given as bytes from here
EXTERNAL_FOLDER = "session.model_external_initializers_file_folder_path"
X86 = ("x86_64", "amd64")


class KernelError(ChatbotError):
    """A kernel could not be built on this machine."""


def build_library(flags: tuple[str, ...] = NATIVE_FLAGS, *, folder: Path | None = None) -> Path:
    """The attention library compiled with ``flags`` (besides -O3 and the shared-library ones),
    built into ``folder`` (default ``$XDG_CACHE_HOME/chatbot/kernels``) unless it is there already.
    :class:`KernelError` saying why when it cannot be."""
    compiler = settings.compiler()
    found = shutil.which(compiler)
    if found is None:
        raise KernelError(
            f"no C compiler: {compiler!r} is not on PATH",
            hint="install one (Debian: apt-get install gcc) or name it in $CC; meanwhile "
            "CHATBOT_ATTENTION=onnxruntime serves with ONNX Runtime's attention",
        )
    try:
        identity = subprocess.run(
            [found, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError) as error:
        raise KernelError(
            f"{found} --version failed: {error}", hint="name a working C compiler in $CC"
        ) from error
    source = SOURCE.read_bytes()
    key = hashlib.sha256()
    for part in (source, identity.encode(), " ".join(flags).encode(), platform.machine().encode()):
        key.update(part + b"\0")
    key.update(" ".join(sorted(cpu_features())).encode())
    folder = folder or settings.cache_home() / "kernels"
    target = folder / f"attention-{key.hexdigest()[:16]}.so"
    if target.is_file():
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
        scratch_folder = tempfile.TemporaryDirectory(dir=folder, prefix=".build-")
    except OSError as error:
        raise KernelError(
            f"cannot write the attention kernel into {folder}: {error}",
            hint="point XDG_CACHE_HOME at a folder this user can write",
        ) from error
    with scratch_folder as scratch:
        built = Path(scratch) / target.name
        command = [found, *BASE_FLAGS, *flags, "-o", str(built), str(SOURCE), "-lm"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as error:
            raise KernelError(
                f"{found} could not run: {error}", hint="name a working C compiler in $CC"
            ) from error
        if done.returncode != 0:
            said = " ".join(done.stderr.split())[:400]
            raise KernelError(
                f"{compiler} could not build {SOURCE.name} ({' '.join(flags)}): {said}",
                hint="use GCC 12 or later, or clang (CC=clang); meanwhile CHATBOT_ATTENTION=onnxruntime "
                "serves with ONNX Runtime's attention",
            )
        os.replace(built, target)  # whole or not at all, for another process building the same
    log.info("built the attention kernel for this CPU: %s", target)
    return target


@functools.cache
def attention_library() -> Path | None:
    """The native attention library for this process, or None where ``$CHATBOT_ATTENTION`` says
    onnxruntime, or says auto and it cannot be built here (logged once, with why). With
    ``native``, a :class:`KernelError` instead of None."""
    wanted = settings.attention()
    if wanted == "onnxruntime":
        return None
    if wanted == "auto" and (platform.machine().lower() not in X86 or not {"avx2", "AVX2"} & cpu_features()):
        # its plain C path is correct but slower than ONNX Runtime's (32 rows at 160 positions:
        # 14.4 against 8.7 ms), so only a CPU with AVX2 or better gets it unasked
        log.info("attention over the int8 cache: ONNX Runtime's (the native kernel wants x86-64 with AVX2)")
        return None
    try:
        return build_library()
    except KernelError as error:
        if wanted == "native":
            raise
        log.warning("attention over the int8 cache: ONNX Runtime's, slower on many conversations (%s)", error)
        return None


def replace_attention(model: Any) -> int:
    """Replace the GroupQueryAttention nodes of ONNX ``model`` (a ModelProto, changed in place)
    that the native kernel computes (an int8 cache with a scale per channel, as many key/value
    heads as query heads, packed projections, nothing else) by ``Int8Attention``; the number
    replaced (0: the model is as it was)."""
    from onnx import helper

    replaced = 0
    for node in model.graph.node:
        if node.op_type != "GroupQueryAttention" or node.domain != "com.microsoft":
            continue
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        inputs = list(node.input) + [""] * (17 - len(node.input))
        if not _computes(attributes, inputs):
            continue
        mine = [inputs[0], inputs[3], inputs[4], inputs[5], inputs[6], inputs[12], inputs[13]]
        if inputs[16]:
            mine.append(inputs[16])
        new = helper.make_node(
            OPERATOR,
            mine,
            list(node.output),
            name=node.name,
            domain=DOMAIN,
            num_heads=int(attributes["num_heads"]),
            scale=float(attributes.get("scale", 0.0)) or 1.0 / cache_head_size(model, inputs[3]) ** 0.5,
        )
        node.CopyFrom(new)
        replaced += 1
    if replaced and not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return replaced


def _computes(attributes: dict[str, Any], inputs: list[str]) -> bool:
    """Whether a GroupQueryAttention with these attributes and inputs is one the kernel computes."""

    def text(name: str) -> str:
        value = attributes.get(name, b"")
        return value.decode() if isinstance(value, bytes) else str(value)

    known = {"num_heads", "kv_num_heads", "scale", "k_quant_type", "v_quant_type", "kv_cache_bit_width"}
    return (
        set(attributes) <= known
        and attributes.get("kv_num_heads") == attributes.get("num_heads")
        and text("k_quant_type") == "PER_CHANNEL"
        and text("v_quant_type") == "PER_CHANNEL"
        and attributes.get("kv_cache_bit_width") == 8
        and all(inputs[:1] + inputs[3:6] + inputs[12:14])  # packed qkv, the cache, lengths, scales
        and not any(inputs[1:3] + inputs[7:12] + inputs[14:16])  # no separate k/v, rotary, bias...
        and len(inputs) <= 17
    )


def cache_head_size(model: Any, past: str) -> int:
    """The head size of ONNX ``model``'s cache input ``past`` (its last dimension)."""
    graph_input = next(i for i in model.graph.input if i.name == past)
    return int(graph_input.type.tensor_type.shape.dim[3].dim_value)


def native_graph(path: Path) -> bytes | None:
    """The graph at ``path`` with its int8-cache attention on the native kernel, serialised for
    ONNX Runtime (its external data stays where it is: :data:`EXTERNAL_FOLDER`), or None where
    it has no such attention."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if not replace_attention(model):
        return None
    return bytes(model.SerializeToString())
