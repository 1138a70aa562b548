"""Pure functions from raw per-call times to the numbers a benchmark report shows.

Nothing here reads a clock or a file: every function takes numbers (per-call times in
nanoseconds, sizes, counts) and returns numbers, so the report can be tested on synthetic
timings. Raw times are never corrected: the harness overhead is measured and reported beside
them, not silently subtracted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# One forward pass of one SSR-Net head on one face (conv + dense multiply-adds), as
# ssrconv.reference.model.count_macs counts it on the rebuilt model; the Keras worker recounts
# it at run time and the report uses its count when it has one.
MACS_PER_FACE_PER_HEAD = 17_078_926
FLOPS_PER_MAC = 2
# Stored parameters of one head (weights + batch-norm statistics), as in the original .h5.
PARAMS_PER_HEAD = 40_915
# Nominal bytes per stored parameter by precision. int8/dynamic keep float biases and
# per-channel scales on top of this: the nominal figure is a floor, the file size the truth.
BYTES_PER_PARAM = {"fp32": 4, "fp16": 2, "dynamic": 1, "int8": 1, "int8-mixed": 1,
                   "int8-integer": 1, "int16x8": 1}
PERCENTILES = (10, 50, 90, 99)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of already-sorted values, linear interpolation
    (numpy's default), so the report does not need numpy."""
    if not sorted_values:
        return math.nan
    position = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = position - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction


def summarize(times_ns: Sequence[int | float], divisor: float = 1.0) -> dict:
    """Summary statistics of per-call times, in microseconds, each divided by ``divisor``
    (the batch size turns per-call into per-face times).

    Returns n, mean, std (population), min, p10, median, p90, p99, max. An empty sequence
    gives n=0 and NaN statistics.
    """
    values = sorted(t / 1000.0 / divisor for t in times_ns)
    n = len(values)
    if n == 0:
        return {"n": 0, **{k: math.nan for k in ("mean", "std", "min", "p10", "median", "p90",
                                                   "p99", "max")}}
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    return {"n": n, "mean": mean, "std": std, "min": values[0],
            "p10": percentile(values, 10), "median": percentile(values, 50),
            "p90": percentile(values, 90), "p99": percentile(values, 99), "max": values[-1]}


def throughput(times_ns: Sequence[int | float], batch: int) -> float:
    """Sustained faces per second: all faces run divided by all time spent in the calls
    (the mean, not the median: a sustained rate pays for every slow call)."""
    total_ns = float(sum(times_ns))
    if total_ns <= 0:
        return math.nan
    return batch * len(times_ns) / (total_ns / 1e9)


def flops_per_face(heads: int, macs_per_head: int = MACS_PER_FACE_PER_HEAD) -> int:
    """Floating-point operations of one face through ``heads`` heads (2 FLOP per multiply-add)."""
    return FLOPS_PER_MAC * macs_per_head * heads


def achieved_gflops(flops: float, seconds_per_face: float) -> float:
    """GFLOP/s reached when one face costs ``flops`` and takes ``seconds_per_face``."""
    if not seconds_per_face or seconds_per_face <= 0 or math.isnan(seconds_per_face):
        return math.nan
    return flops / seconds_per_face / 1e9


def gemm_gflops(size: int, times_ns: Sequence[int | float]) -> dict:
    """GFLOP/s of square ``size`` x ``size`` float32 matrix multiplies from their times:
    median (the rate under the same noise as the backends) and best (the machine's peak)."""
    flops = 2.0 * size ** 3
    rates = sorted(flops / (t / 1e9) / 1e9 for t in times_ns if t > 0)
    if not rates:
        return {"size": size, "n": 0, "median_gflops": math.nan, "best_gflops": math.nan}
    return {"size": size, "n": len(rates), "median_gflops": percentile(rates, 50),
            "best_gflops": rates[-1], "p10_gflops": percentile(rates, 10)}


def fraction(part: float, whole: float) -> float:
    """``part / whole``, NaN when either is missing or ``whole`` is not positive."""
    if part is None or whole is None or math.isnan(part) or math.isnan(whole) or whole <= 0:
        return math.nan
    return part / whole


def param_bytes(params: int, precision: str) -> int | None:
    """Nominal parameter bytes: stored parameter count x bytes per parameter of the precision."""
    per = BYTES_PER_PARAM.get(precision)
    return None if per is None else params * per


def latency_ratios(medians: dict[str, float], reference: str | None,
                   fp32_names: Sequence[str]) -> dict[str, dict]:
    """For each row's median per-face latency: its speed-up over ``reference`` (Keras
    ``predict``: reference time / this time, >1 is faster) and its time relative to the fastest
    fp32 row (this time / fastest time, 1.0 for the fastest, >1 is slower)."""
    ref = medians.get(reference) if reference else None
    fp32 = [medians[n] for n in fp32_names if n in medians and not math.isnan(medians[n])]
    fastest = min(fp32) if fp32 else None
    out = {}
    for name, value in medians.items():
        out[name] = {
            "speedup_vs_keras_predict": fraction(ref, value) if ref is not None else math.nan,
            "time_vs_fastest_fp32": fraction(value, fastest) if fastest is not None else math.nan,
        }
    return out


def analyse_latency(times_ns: Sequence[int], overhead_ns: Sequence[int], batch: int,
                    heads: int, gemm_median_gflops: float, gemm_best_gflops: float = math.nan,
                    macs_per_head: int = MACS_PER_FACE_PER_HEAD) -> dict:
    """Everything the report says about one row at one batch size, from its raw times.

    ``per_call_us`` and ``per_face_us`` are raw (harness overhead included); ``overhead_us`` is
    the same timing loop around an empty call, reported so a reader can judge how much of a
    short call it is (``overhead_share`` = median overhead / median call).

    Efficiency is given two ways: median against median (the backend's and the GEMM's typical
    rate under the same noise) and best against best (the fastest call against the fastest
    GEMM: the least disturbed samples of both, the better estimate on a busy machine).
    """
    per_call = summarize(times_ns)
    per_face = summarize(times_ns, divisor=batch)
    overhead = summarize(overhead_ns)
    flops = flops_per_face(heads, macs_per_head)
    gflops = achieved_gflops(flops, per_face["median"] / 1e6)
    gflops_best = achieved_gflops(flops, per_face["min"] / 1e6)
    return {
        "batch": batch,
        "per_call_us": per_call,
        "per_face_us": per_face,
        "overhead_us": overhead,
        "overhead_share": fraction(overhead["median"], per_call["median"]),
        "throughput_faces_per_s": throughput(times_ns, batch),
        "flops_per_face": flops,
        "gflops": gflops,
        "fraction_of_core_gemm": fraction(gflops, gemm_median_gflops),
        "gflops_best": gflops_best,
        "fraction_of_core_gemm_best": fraction(gflops_best, gemm_best_gflops),
    }
