"""What a bench run measures and how hard: runs, rounds, warm-up, batch sizes, time budgets."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ssrconv.errors import SsrconvError


@dataclass(frozen=True)
class Settings:
    """What to measure and how hard. ``runs`` timed calls per row and batch size are split into
    ``rounds`` interleaved blocks; ``warmup`` untimed calls per row and batch size come first."""

    threads: int = 1
    batch: int = 8
    runs: int = 200
    warmup: int = 20
    rounds: int = 10
    gemm_size: int = 512
    gemm_calls: int = 5  # GEMMs per round: ~3 ms each at 95 GFLOP/s
    block_seconds: float = 1.0  # a block stops early past this (min 2 calls): slow rows get fewer
    faces_dir: str | None = None
    # Passes of each sample photo through YuNet + crop + model per row (0: no pipeline rows),
    # split over the same interleaved rounds.
    pipeline_runs: int = 20
    pipeline_warmup: int = 2
    input_count: int = 64
    seed: int = 0
    load_timeout: float = 600.0
    call_timeout: float = 300.0

    def __post_init__(self):
        for name in ("threads", "batch", "runs", "rounds", "input_count", "gemm_size"):
            if getattr(self, name) < 1:
                raise SsrconvError(f"--{name.replace('_', '-')} must be at least 1, got "
                                   f"{getattr(self, name)}")
        if not self.block_seconds > 0:
            raise SsrconvError(f"--block-seconds must be positive, got {self.block_seconds}")
        if self.warmup < 0:
            raise SsrconvError(f"--warmup must be 0 or more, got {self.warmup}")
        if self.pipeline_runs < 0:
            raise SsrconvError(f"--pipeline-runs must be 0 or more, got {self.pipeline_runs}")

    @property
    def batches(self) -> list[int]:
        """Batch sizes measured: 1 always, and the chosen batch."""
        return sorted({1, self.batch})

    @property
    def block(self) -> int:
        """Timed calls per row in one round."""
        return math.ceil(self.runs / self.rounds_used)

    @property
    def rounds_used(self) -> int:
        return min(self.rounds, self.runs)

    @property
    def pipeline_rounds(self) -> int:
        return min(self.rounds, self.pipeline_runs)

    @property
    def pipeline_block(self) -> int:
        """Timed passes of each photo per row in one round."""
        return math.ceil(self.pipeline_runs / self.pipeline_rounds) if self.pipeline_runs else 0

    def as_dict(self) -> dict:
        return {"threads": self.threads, "batch": self.batch, "batches": self.batches,
                "runs": self.block * self.rounds_used, "runs_requested": self.runs,
                "warmup": self.warmup, "rounds": self.rounds_used, "block": self.block,
                "block_seconds": self.block_seconds, "gemm_size": self.gemm_size,
                "gemm_calls_per_round": self.gemm_calls,
                "pipeline_runs": self.pipeline_block * self.pipeline_rounds,
                "pipeline_rounds": self.pipeline_rounds, "pipeline_warmup": self.pipeline_warmup}
