"""Which generator serves a model folder: the choice of graph (variant) and what drives it.

Above the generators themselves: :class:`~chatbot.generation.OnnxGenerator` on the reference
export, and the fused graphs (:mod:`chatbot.fused`) behind the batching scheduler
(:mod:`chatbot.scheduler`). The engine asks :func:`load_generator` for one.
"""

from __future__ import annotations

import logging

import numpy as np

from chatbot import settings
from chatbot.cpu import int8_initializers, int8_kind
from chatbot.drafting import DRAFT_POSITIONS
from chatbot.errors import ChatbotError, ModelFolderError
from chatbot.folder import ModelFolder
from chatbot.fused import FusedSession, Prefiller, QuantizingPrefill
from chatbot.generation import CUDA, Generator, OnnxGenerator, choose_providers
from chatbot.scheduler import BatchingGenerator

log = logging.getLogger(__name__)

REFERENCE = "reference"
# what "auto" serves on each device when the folder has it
AUTO_VARIANTS = {"cpu": "cpu-int8", "cuda": "cuda-fp16"}
INT4 = "cpu-int4"
INT8 = "cpu-int8"  # also what prefills for cpu-int4 (see load_generator)
# the CPUs' int8 kinds (chatbot.cpu) on which cpu-int4 decoded faster than cpu-int8 (README, "Speed")
INT4_FASTER_ON = frozenset({"vnni"})
INT4_MAX_PERPLEXITY_CHANGE = 0.03  # cpu-int4 serves by default only within 3 % of the reference
# replies drafting together on int4 feed at most 16 positions a step (64 on the others: draft_positions)
INT4_DRAFT_POSITIONS = 16


def choose_variant(folder: ModelFolder, device: str, variant: str | None = None) -> str:
    """The graph to serve on ``device``: ``variant``, else ``$CHATBOT_VARIANT``, else "auto".

    "auto" is the fast variant built for the device (``cpu-int8`` on a CPU, ``cuda-fp16`` on a
    GPU) when the folder has it, and the reference export otherwise; on a CPU where int4 is the
    faster, ``cpu-int4`` when its perplexity is within 3 % of the reference's
    (:func:`int4_serves`); "reference" always serves ``onnx/model.onnx``.
    """
    wanted = variant or settings.variant()
    if wanted == "auto":
        fast = AUTO_VARIANTS.get(device)
        if device == "cpu" and int4_serves(folder):
            return INT4
        if fast is None or fast not in folder.variants:
            return REFERENCE
        if not folder.variant_is_current(fast):  # keep serving, slower, and say how to fix it
            log.warning(
                "%s's %s graph was built by an older chatbot; serving the reference export. "
                "Rebuild it with `chatbot export %s --variant %s`",
                folder.path,
                fast,
                folder.path,
                fast,
            )
            return REFERENCE
        return fast
    if wanted != REFERENCE and wanted not in folder.variants:
        built = ", ".join([REFERENCE, *folder.variants])
        raise ModelFolderError(
            f"model folder {folder.path} has no {wanted!r} variant (it has: {built})",
            hint=f"build it with `chatbot export {folder.path} --variant {wanted}`, or choose another",
        )
    if wanted != REFERENCE and not folder.variant_is_current(wanted):
        raise ModelFolderError(
            f"the {wanted!r} graph of {folder.path} was built by an older chatbot",
            hint=f"build it again with `chatbot export {folder.path} --variant {wanted}`",
        )
    if wanted != REFERENCE and not wanted.startswith(device):
        raise ChatbotError(
            f"the {wanted!r} variant does not run on the {device} device",
            hint=f"choose a {device} variant, or --variant reference",
        )
    return wanted


def int4_serves(folder: ModelFolder, kind: str | None = None) -> bool:
    """Whether "auto" serves ``cpu-int4`` on a ``kind`` CPU (default: this one): the folder has it,
    built by this version, it decoded faster than int8 on that kind of CPU, and its card records a
    perplexity within :data:`INT4_MAX_PERPLEXITY_CHANGE` of the reference export's (measured by
    ``chatbot train``; a graph of unknown quality is never chosen for the customer)."""
    if INT4 not in folder.variants or not folder.variant_is_current(INT4):
        return False
    if (kind or int8_kind()) not in INT4_FASTER_ON:
        return False
    perplexity = (folder.card.get("onnx") or {}).get(INT4, {}).get("perplexity") or {}
    change = perplexity.get("change")
    return isinstance(change, int | float) and change <= INT4_MAX_PERPLEXITY_CHANGE


def variant_initializers(folder: ModelFolder, variant: str) -> dict[str, np.ndarray]:
    """What ``variant`` of ``folder`` is loaded with on this CPU: its int8 activations where its
    8-bit weights would saturate AVX2 (:mod:`chatbot.cpu`); nothing for other graphs."""
    entry = (folder.card.get("onnx") or {}).get(variant)
    return int8_initializers(entry) if isinstance(entry, dict) else {}


def load_generator(
    folder: ModelFolder, *, device: str | None = None, variant: str | None = None, max_batch: int = 32
) -> Generator:
    """The generator that serves ``folder``: the fused variant for the device behind the batching
    scheduler when there is one (see :func:`choose_variant`), the reference export otherwise."""
    providers = choose_providers(device)
    on = "cuda" if providers[0] == CUDA else "cpu"
    chosen = choose_variant(folder, on, variant)
    if chosen == REFERENCE:
        return OnnxGenerator(folder, device=device)
    cuda_graphs = settings.cuda_graphs()
    session = FusedSession(
        folder.variant_path(chosen),
        folder.spec,
        providers=providers,
        cuda_graphs=cuda_graphs,
        initializers=variant_initializers(folder, chosen),
    )
    return BatchingGenerator(
        session,
        stop_token_ids=folder.stop_token_ids,
        max_batch=max_batch,
        kept_bytes=settings.prefix_cache_bytes(),
        draft_tokens=draft_tokens(folder),
        drafts=folder.drafts,
        prefill_session=_prefill_session(folder, chosen, on),
        draft_batches=True,  # where the graph pads rows (query_seqlens), within draft_positions
        draft_positions=draft_positions(chosen),
    )


def draft_positions(variant: str) -> int:
    """The most positions a step of greedy replies drafting together feeds on ``variant``
    (:func:`chatbot.drafting.batch_draft_tokens`): 16 on int4, whose ``MatMulNBits`` is slow on
    many rows (8 rows × 9 positions cost 4.5× a plain step on GPT-2 124M's shape, int8 2.7×),
    64 on the others. Replayed on the demo model's held-out drafts at GPT-2-shape step costs,
    int4 within 16 gave an estimated 1.40-1.51× at 2 replies, 1.21-1.27× at 4, 1.20× at 8, and
    without a limit 0.97× at 4, 0.73× at 8 (README, "Speculative decoding")."""
    return INT4_DRAFT_POSITIONS if variant == INT4 else DRAFT_POSITIONS


def draft_tokens(folder: ModelFolder) -> int:
    """How many tokens the scheduler drafts a step: ``$CHATBOT_DRAFT_TOKENS`` when set, else
    :data:`~chatbot.settings.SUGGESTED_DRAFT_TOKENS` where the folder has a draft table (its
    training replies: 1.6-1.8x on the demo model's held-out conversations, README "Speculative
    decoding") and 0 where it has none (the conversation and recent replies alone paid 1.25x)."""
    wanted = settings.draft_tokens()
    if wanted is not None:
        return wanted
    return settings.SUGGESTED_DRAFT_TOKENS if folder.drafts is not None else 0


def kv_cache_format(folder: ModelFolder, variant: str) -> str:
    """How ``variant`` keeps keys and values, as its card entry records it: "float" (float32), or
    "int8:<fingerprint of its per-channel scales>" (``training.export.kv_cache``). Two graphs whose
    formats match can fill each other's cache; a folder with one of them built again by another
    version prefills int4's prompts on int4 rather than mixing them."""
    entry = (folder.card.get("onnx") or {}).get(variant)
    kept = entry.get("kv_cache") if isinstance(entry, dict) else None
    if not isinstance(kept, dict):
        return "float"
    return f"{kept.get('dtype')}:{kept.get('fingerprint')}"


def _prefill_session(folder: ModelFolder, chosen: str, device: str) -> Prefiller | None:
    """What runs ``chosen``'s prompts on a CPU, when not ``chosen`` itself.

    * A graph keeping keys and values in int8 (``--kv-cache int8``), where the folder's int8
      graph has its float32-cache twin (``prefill``): that twin, quantising what it writes into
      the int8 cache (:class:`~chatbot.fused.QuantizingPrefill`): ONNX Runtime's int8-cache
      attention is ~3x slower over a prompt, its own prefill 29.8 ms against 24.0 on GPT-2 124M.
    * int4: the int8 graph, when the folder has a current one keeping them the same way: int4
      decodes faster and prefills 2-3x slower (``MatMulNBits`` unpacks and quantises per block),
      so each graph does what it is fast at, over the same keys and values.
    """
    if device != "cpu":
        return None
    twin = _float_prefill(folder, chosen)
    if twin is not None:
        return twin
    if (
        chosen != INT4
        or INT8 not in folder.variants
        or not folder.variant_is_current(INT8)
        or kv_cache_format(folder, INT8) != kv_cache_format(folder, INT4)
    ):
        return None
    return FusedSession(
        folder.variant_path(INT8), folder.spec, initializers=variant_initializers(folder, INT8)
    )


def _float_prefill(folder: ModelFolder, chosen: str) -> QuantizingPrefill | None:
    """The int8 graph's float32-cache twin quantising into ``chosen``'s int8 cache, where both exist."""
    onnx = folder.card.get("onnx") or {}
    kept = (onnx.get(chosen) or {}).get("kv_cache") or {}
    twin = (onnx.get(INT8) or {}).get("prefill") or {}
    if kept.get("dtype") != "int8" or not twin.get("path") or not kept.get("scales_file"):
        return None
    same = kv_cache_format(folder, INT8) == kv_cache_format(folder, chosen)
    if not folder.variant_is_current(INT8) or not same:
        return None  # built apart: the int8 graph's scales may not be chosen's
    graph, scales = folder.path / twin["path"], folder.path / kept["scales_file"]
    if not graph.is_file() or not scales.is_file():
        raise ModelFolderError(
            f"{folder.path} lacks {graph if not graph.is_file() else scales}",
            hint=f"build the variants again with `chatbot export {folder.path} --kv-cache int8`",
        )
    # the twin keeps float32 keys and values: ONNX Runtime's attention, nothing to rewrite
    session = FusedSession(
        graph, folder.spec, initializers=variant_initializers(folder, INT8), native_attention=False
    )
    return QuantizingPrefill(session, np.load(scales))
