"""Export options: a frozen dataclass, validated once, before any work starts."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ssrconv.errors import OptionsError
from ssrconv.reference import TASKS
from ssrconv.targets import (
    CALIBRATED_PRECISIONS,
    DEFAULT_OPSET,
    DEFAULT_PRECISION,
    FAMILIES,
    OPT_IN_FAMILIES,
    INT8_IO_TYPES,
    PRECISIONS,
    TARGETS,
    Target,
    precisions_of,
    targets_taking,
)


MAX_STATIC_BATCH = 256
# Options only some targets take (the Target rows' ``options``): field -> its flag.
TARGET_OPTIONS = {"int8_io": "--int8-io", "image_input": "--image-input", "opset": "--opset"}


def without_fast_only(targets, to, why: str) -> tuple[list, list]:
    """(the rows of ``targets`` an export converting the original graph makes, the rows it
    leaves out: those only the fast graph makes, ssrconv.graph.fast_graph_only) when ``why``
    (--graph original, or a model the fast graph cannot express) rules the fast graph out.
    `--to all` (in ``to``) leaves them out; asked for by name, or when nothing else would be
    made, they are refused in one line (OptionsError), before any work."""
    from ssrconv.graph import fast_graph_only

    fast_only = [t for t in targets if fast_graph_only(t.variant)]
    if fast_only and ("all" not in to or len(fast_only) == len(targets)):
        keys = [t.key for t in fast_only]
        raise OptionsError(f"{why}: {', '.join(keys)} {'is' if len(keys) == 1 else 'are'} "
                           "integer-only, made from the fast graph only (the original graph's "
                           "SSR merge divides); leave --graph out, or export --precision "
                           "int8-mixed (the mixed int8 TFLite file converts the original graph)")
    return [t for t in targets if t not in fast_only], fast_only


def _as_tuple(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


@dataclass(frozen=True)
class ExportOptions:
    """What to export. ``to`` holds families ("onnx", "tflite", "coreml") or "all";
    ``precision`` holds precisions or is empty for each family's default (all of them with "all").
    """

    to: tuple[str, ...] = ("all",)
    precision: tuple[str, ...] = ()
    task: str = "age-gender"
    age_weights: str | None = None
    gender_weights: str | None = None
    arch: str | None = None  # the family member every weights file must be (None: by its names)
    calibration: Path | None = None
    out: Path = Path("ssrconv-out")
    opset: int | None = None  # None: each target's own (Target.opset)
    int8_io: str = "float32"
    image_input: bool = False
    calibration_limit: int = 300
    calibration_kind: str = "auto"  # how --calibration files are read: auto, chips, photos
    graph: str = "fast"  # "fast": ssrconv.graph's fused export graph; "original": the reference's
    # A static batch for the input (runtimes without a resize call, e.g. LiteRT.js); None: variable.
    batch: int | None = None
    targets: tuple[Target, ...] = field(init=False)
    # `--to all` rows left out because this export cannot make them (fast_graph_only rows with
    # --graph original); the exporter says so.
    left_out: tuple[Target, ...] = field(init=False, default=())

    def __post_init__(self):
        set_ = object.__setattr__  # frozen: normalise fields once, here
        to = _as_tuple(self.to) or ("all",)
        for family in to:
            if family != "all" and family not in FAMILIES:
                raise OptionsError(f"unknown target {family!r}: choose from {', '.join(FAMILIES)}, all")
        precision = _as_tuple(self.precision)
        for p in precision:
            if p not in PRECISIONS:
                raise OptionsError(f"unknown precision {p!r}: choose from {', '.join(PRECISIONS)}")
        if self.task not in TASKS:
            raise OptionsError(f"unknown task {self.task!r}: choose from {', '.join(TASKS)}")
        if self.arch is not None:
            from ssrconv.reference.family import get_member

            get_member(self.arch)  # one line naming the known members
        if self.int8_io not in INT8_IO_TYPES:
            raise OptionsError(f"unknown int8 I/O type {self.int8_io!r}: choose from "
                               f"{', '.join(INT8_IO_TYPES)}")
        from ssrconv.graph import GRAPHS

        if self.graph not in GRAPHS:
            raise OptionsError(f"unknown graph {self.graph!r}: choose from {', '.join(GRAPHS)}")
        if self.batch is not None and not 1 <= int(self.batch) <= MAX_STATIC_BATCH:
            raise OptionsError(f"--batch {self.batch}: choose a static batch from 1 to "
                               f"{MAX_STATIC_BATCH}, or leave it out for a variable batch")
        if self.calibration_limit < 1:
            raise OptionsError("--calibration-limit must be at least 1")
        set_(self, "to", to)
        set_(self, "precision", precision)
        set_(self, "out", Path(self.out).expanduser())
        if self.opset is not None:
            try:
                set_(self, "opset", int(self.opset))
            except (TypeError, ValueError):
                raise OptionsError(f"--opset {self.opset!r}: give an integer, e.g. "
                                   f"{DEFAULT_OPSET}") from None
        if self.calibration is not None:
            set_(self, "calibration", Path(self.calibration).expanduser())
        set_(self, "targets", tuple(self._select_targets()))
        self._check_combinations()

    def _select_targets(self) -> list[Target]:
        families = (tuple(f for f in FAMILIES if f not in OPT_IN_FAMILIES or f in self.to)
                    if "all" in self.to else tuple(dict.fromkeys(self.to)))
        chosen = []
        for family in families:
            offered = precisions_of(family)
            if not self.precision:
                wanted = (precisions_of(family, in_all=True) if "all" in self.to
                          else [DEFAULT_PRECISION[family]])
            elif "all" in self.to:
                wanted = [p for p in self.precision if p in offered]
            else:
                missing = [p for p in self.precision if p not in offered]
                if missing:
                    raise OptionsError(f"{family} has no {missing[0]} export (available: "
                                       f"{', '.join(offered)})")
                wanted = list(self.precision)
            chosen += [TARGETS[f"{family}-{p}"] for p in dict.fromkeys(wanted)]
        if not chosen:
            raise OptionsError(f"no target offers precision {', '.join(self.precision)}")
        return chosen

    def _check_combinations(self) -> None:
        # int8 without --calibration is calibrated data-free (inputs distilled from the model's
        # BatchNorm statistics, ZeroQ): see CalibrationSet.distilled.
        if self.calibration is not None and not any(t.precision in CALIBRATED_PRECISIONS
                                                    for t in self.targets):
            raise OptionsError(f"--calibration applies to {', '.join(CALIBRATED_PRECISIONS)} "
                               "exports only; add --precision int8")
        if self.graph == "original":
            kept, left_out = without_fast_only(self.targets, self.to, "--graph original")
            object.__setattr__(self, "targets", tuple(kept))
            object.__setattr__(self, "left_out", tuple(left_out))
        defaults = {name: ExportOptions.__dataclass_fields__[name].default for name in TARGET_OPTIONS}
        for name, flag in TARGET_OPTIONS.items():
            if getattr(self, name) == defaults[name] or any(name in t.options for t in self.targets):
                continue
            takers = [t.key for t in targets_taking(name)]
            raise OptionsError(f"{flag} applies to the {', '.join(takers)} export"
                               f"{'s' if len(takers) > 1 else ''} only")
        if self.opset is None:
            return
        takers = [t for t in self.targets if "opset" in t.options]
        # the opsets every chosen row can be written at (the advice must hold for all of them)
        first = max(t.opsets[0] for t in takers)
        last = min(t.opsets[1] for t in takers)
        for target in takers:
            if not target.opsets[0] <= self.opset <= target.opsets[1]:
                choice = ("export them separately" if first > last else
                          f"pass --opset {first}" if first == last else
                          f"choose from {first}..{last}")
                raise OptionsError(f"--opset {self.opset}: {target.key} is written at opset "
                                   f"{target.opsets_in_words()} only; {choice} or leave "
                                   "--opset out")

    def check_paths(self) -> None:
        """Check the output directory is writable and the calibration directory usable,
        creating nothing but the output directory itself."""
        from ssrconv.reference.preprocess import list_images

        if self.calibration is not None:
            if not self.calibration.is_dir():
                raise OptionsError(f"--calibration {self.calibration}: not a directory")
            if not list_images(self.calibration):
                raise OptionsError(f"--calibration {self.calibration}: no images in this directory")
        if self.out.exists() and not self.out.is_dir():
            raise OptionsError(f"--out {self.out}: exists and is not a directory")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.out, prefix=".ssrconv-write-test-"):
                pass
        except OSError as err:
            raise OptionsError(f"--out {self.out}: not writable ({err.strerror or err}); "
                               "choose another directory") from None
        if not os.access(self.out, os.W_OK):
            raise OptionsError(f"--out {self.out}: not writable; choose another directory")
