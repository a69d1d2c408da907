"""What the machine under `chatbot bench` can do: its CPU, its load, its read bandwidth and its
GEMM throughput, measured in the bench's own run with the bench's thread count.

These are the limits the bench's figures are held against (:mod:`training.evaluation.floors`):
a decode step at batch 1 reads every weight once, so it cannot beat bytes / read bandwidth; a
prompt's prefill is matrix products, so it cannot beat their FLOPs / GEMM throughput.

* Read bandwidth: a 1 GiB buffer (written first, so every page is real memory rather than the
  kernel's shared zero page) read two ways: reduced with numpy's ``bitwise_or`` over 64-bit
  words, split into one chunk per thread, the threads started together (numpy lets go of the
  GIL in the loop); and streamed by ONNX Runtime's int8 kernel as the weight of one token's
  product, as a decode step streams its weights. Each is the median of several passes (a single
  pass can be an outlier); the bench takes the higher of the two, at the start and the end of
  its run, for its floors: a floor must not sit above what the machine did. (On a quiet 2-core
  AMD EPYC the two gave 42 and 45 GB/s; on a busy one, both moved by a quarter.)
* GEMM throughput: one ONNX Runtime session per shape, the weight an initializer as in our
  graphs, ``intra_op_num_threads`` = the bench's threads: ``MatMulInteger`` (uint8 activations ×
  int8 weights, the kernel behind the int8 graph's ``MatMulIntegerToFloat``) and ``MatMul``
  (fp32). The fastest of several runs after a warm-up.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# the flags that decide which int8 and fp32 kernels ONNX Runtime and CTranslate2 can use
RELEVANT_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
BANDWIDTH_BYTES = 1 << 30  # 1 GiB: far beyond any last-level cache
GEMV_BYTES = 1 << 28  # 256 MiB of int8 weights: 8× a 32 MiB L3 (ONNX Runtime holds copies of it)
BANDWIDTH_PASSES = 5
ROUND_PASSES = 3  # BandwidthProbe's passes, every round
GEMM_RUNS = 10


@dataclass(frozen=True)
class Gemm:
    """One matrix product: (m × k) · (k × n), ``count`` times in a prompt's prefill."""

    m: int
    k: int
    n: int
    count: int = 1

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n * self.count


# ---------------------------------------------------------------------------------------------
# The CPU and its load


def cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """The CPU's model name and which of :data:`RELEVANT_FLAGS` it has (from /proc/cpuinfo)."""
    model, flags = platform.processor() or platform.machine(), set[str]()
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            model = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
        if flags and key.strip() == "flags":
            break
    return {
        "model": model,
        "flags": [flag for flag in RELEVANT_FLAGS if flag in flags],
        "lacks": [flag for flag in RELEVANT_FLAGS if flag not in flags] if flags else [],
    }


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, where the platform has them."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None


# ---------------------------------------------------------------------------------------------
# Read bandwidth


def read_bandwidth(
    threads: int, size: int = BANDWIDTH_BYTES, passes: int = BANDWIDTH_PASSES
) -> dict[str, float]:
    """GB/s read from a ``size``-byte buffer by ``threads`` threads, the median of ``passes``, two ways:
    numpy reducing it, and ONNX Runtime's int8 kernel streaming it as one token's weights."""
    return {
        "numpy": _numpy_bandwidth(threads, size, passes),
        "onnxruntime_int8_gemv": _gemv_bandwidth(threads, min(size, GEMV_BYTES), passes),
    }


def bandwidth_how(threads: int, size: int = BANDWIDTH_BYTES, passes: int = BANDWIDTH_PASSES) -> str:
    gemv = min(size, GEMV_BYTES)
    return (
        f"the median of {passes} passes with {threads} thread(s), two ways, at the start and at the end of "
        f"the run: numpy's bitwise_or reduction of a written {size / 2**30:.3g} GiB buffer as 64-bit "
        f"words, one chunk per thread; ONNX Runtime's MatMulInteger of one token by a "
        f"(4096 × {gemv // 4096}) int8 weight ({gemv / 2**20:.0f} MiB)"
    )


def _numpy_bandwidth(threads: int, size: int, passes: int) -> float:
    words = _distinct_words(size)
    chunks = np.array_split(words, threads)
    rates = []
    for _ in range(passes):
        workers = [threading.Thread(target=np.bitwise_or.reduce, args=(chunk,)) for chunk in chunks]
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        rates.append(words.nbytes / (time.perf_counter() - started) / 1e9)
    return statistics.median(rates)


def _gemv_bandwidth(threads: int, size: int, passes: int) -> float:
    gemm = Gemm(1, 4096, size // 4096)
    weight = _distinct_words(size).view(np.int8).reshape(gemm.k, gemm.n)
    ms = gemm_ms(gemm, "int8", threads, runs=passes, weight=weight, pick=statistics.median)
    return gemm.k * gemm.n / ms / 1e6


def _distinct_words(size: int) -> np.ndarray[Any, Any]:
    """``size`` bytes, written, and no two pages alike: a buffer of equal pages (``np.ones``) once
    read at 69 GB/s against 43-45 for every other measurement, as if the host had merged them."""
    return np.arange(size // 8, dtype=np.uint64)


# ---------------------------------------------------------------------------------------------
# GEMM throughput


def gemm_ms(
    gemm: Gemm,
    precision: str,
    threads: int,
    runs: int = GEMM_RUNS,
    weight: np.ndarray[Any, Any] | None = None,
    pick: Callable[[list[float]], float] = min,
) -> float:
    """Milliseconds of one ``gemm`` (count ignored) in ONNX Runtime: the fastest of ``runs`` (or
    what ``pick`` takes of them)."""
    return _TimedGemm(gemm, precision, threads, weight).ms(runs, pick)


class _TimedGemm:
    """One ONNX Runtime session computing ``gemm`` (the weight an initializer), its input ready;
    its threads stop spinning when a run ends, so they leave the cores to whatever runs next."""

    def __init__(
        self, gemm: Gemm, precision: str, threads: int, weight: np.ndarray[Any, Any] | None = None
    ) -> None:
        import onnxruntime as ort

        from chatbot.generation import STOP_SPINNING

        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = threads
        session_options.add_session_config_entry(STOP_SPINNING, "1")
        self.gemm = gemm
        self.session = ort.InferenceSession(
            _gemm_model(gemm, precision, weight), session_options, providers=["CPUExecutionProvider"]
        )
        rng = np.random.default_rng(0)
        self.a: np.ndarray[Any, Any] = (
            rng.integers(0, 256, (gemm.m, gemm.k), dtype=np.uint8)
            if precision == "int8"
            else rng.standard_normal((gemm.m, gemm.k), dtype=np.float32)
        )
        self.session.run(None, {"a": self.a})  # untimed: first-run allocations

    def ms(self, runs: int, pick: Callable[[list[float]], float]) -> float:
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            self.session.run(None, {"a": self.a})
            times.append(time.perf_counter() - started)
        return pick(times) * 1e3


class BandwidthProbe:
    """The read bandwidth again in every round of `chatbot bench`, beside the figures of that round.

    This machine's memory reads at 44 to 66 GB/s from one minute to the next (README, "Speed"),
    and a decode step's time moves with it; a floor from the start and the end of a run then
    says as much about the minutes between as about the graph. So each round also measures the
    bandwidth (ONNX Runtime's int8 GEMV over :data:`GEMV_BYTES`, the median of
    :data:`ROUND_PASSES` passes, ~20 ms) and each graph's decode is held against the floor of
    its own round too (``decode_vs_round_floor``). The session lives in a child process started
    once, so its 256 MiB weight stays out of the bench's memory figures; calls are sequential, so
    it never runs beside a side being timed.
    """

    def __init__(self, threads: int, size: int = GEMV_BYTES) -> None:
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        self._pool.submit(_open_probe, threads, size).result()

    def __call__(self) -> float:
        """GB/s now."""
        return float(self._pool.submit(_probe_gbs, ROUND_PASSES).result())

    def close(self) -> None:
        self._pool.shutdown()

    def __enter__(self) -> BandwidthProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_PROBE: list[_TimedGemm] = []  # in the probe's child process: its one session


def _open_probe(threads: int, size: int) -> None:
    gemm = Gemm(1, 4096, size // 4096)
    weight = _distinct_words(size).view(np.int8).reshape(gemm.k, gemm.n)
    _PROBE.append(_TimedGemm(gemm, "int8", threads, weight))


def _probe_gbs(passes: int) -> float:
    probe = _PROBE[0]
    return probe.gemm.k * probe.gemm.n / probe.ms(passes, statistics.median) / 1e6


def _gemm_model(gemm: Gemm, precision: str, given: np.ndarray[Any, Any] | None = None) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight: np.ndarray[Any, Any]
    if precision == "int8":
        weight = given if given is not None else rng.integers(-63, 64, (gemm.k, gemm.n), dtype=np.int8)
        node = helper.make_node("MatMulInteger", ["a", "b", "a_zero"], ["y"])
        initializers = [
            numpy_helper.from_array(weight, "b"),
            numpy_helper.from_array(np.array(128, np.uint8), "a_zero"),
        ]
        types = TensorProto.UINT8, TensorProto.INT32
    elif precision == "fp32":
        weight = rng.standard_normal((gemm.k, gemm.n), dtype=np.float32)
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
        initializers = [numpy_helper.from_array(weight, "b")]
        types = TensorProto.FLOAT, TensorProto.FLOAT
    else:
        raise ValueError(f"no GEMM measured for {precision!r}: int8 or fp32")
    graph = helper.make_graph(
        [node],
        "gemm",
        [helper.make_tensor_value_info("a", types[0], [gemm.m, gemm.k])],
        [helper.make_tensor_value_info("y", types[1], [gemm.m, gemm.n])],
        initializers,
    )
    return bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())


def gemm_throughput(
    gemms: dict[str, Gemm], threads: int, precisions: tuple[str, ...] = ("int8", "fp32")
) -> dict[str, dict[str, dict[str, float]]]:
    """For each precision and named shape: its milliseconds (one product) and GOPS."""
    measured: dict[str, dict[str, dict[str, float]]] = {}
    for precision in precisions:
        measured[precision] = {}
        for name, gemm in gemms.items():
            ms = gemm_ms(gemm, precision, threads)
            one = Gemm(gemm.m, gemm.k, gemm.n)
            measured[precision][name] = {
                "m": gemm.m,
                "k": gemm.k,
                "n": gemm.n,
                "ms": ms,
                "gops": one.flops / ms / 1e6,
            }
    return measured
