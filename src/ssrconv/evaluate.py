"""Accuracy on labelled faces (UTKFace-style names): age MAE and gender accuracy."""

from __future__ import annotations

import numpy as np

ADULT_AGE = 16


def evaluate(runtime, faces) -> dict:
    """Per-image predictions and a summary for ``runtime`` on a :class:`FaceSet`.

    Age MAE is reported on adults (16+, the ages SSR-Net's training sets cover well) and on all
    labelled faces; gender accuracy compares P(male) > 0.5 with the label.
    """
    from ssrconv.parity import _run_batched

    outputs = _run_batched(runtime, faces.inputs)
    labelled = np.isfinite(faces.ages)
    adults = labelled & (faces.ages >= ADULT_AGE)
    summary: dict = {"backend": runtime.backend, "engine": runtime.engine,
                     "model": str(runtime.path) if runtime.path else f"{runtime.engine} reference",
                     "faces": len(faces), "labelled": int(labelled.sum()), "adults": int(adults.sum())}
    if "age" in outputs:
        err = np.abs(outputs["age"].astype(np.float64) - faces.ages)
        summary["age_mae_adults"] = float(err[adults].mean()) if adults.any() else None
        summary["age_mae_all"] = float(err[labelled].mean()) if labelled.any() else None
    if "p_male" in outputs:
        right = (outputs["p_male"] > 0.5) == (faces.is_male == 1.0)
        summary["gender_accuracy_adults"] = float(right[adults].mean()) if adults.any() else None
        summary["gender_accuracy_all"] = float(right[labelled].mean()) if labelled.any() else None
    predictions = []
    for i, name in enumerate(faces.names):
        row = {"file": name}
        if "age" in outputs:
            row["age"] = round(float(outputs["age"][i]), 4)
        if "p_male" in outputs:
            row["p_male"] = round(float(outputs["p_male"][i]), 6)
        row["label_age"] = None if np.isnan(faces.ages[i]) else int(faces.ages[i])
        row["label_male"] = None if np.isnan(faces.is_male[i]) else bool(faces.is_male[i])
        predictions.append(row)
    return {"summary": summary, "predictions": predictions}


def render_summary(summary: dict) -> str:
    """One readable paragraph of the summary."""
    parts = [f"{summary['model']} ({summary['engine']}) on {summary['faces']} faces"]
    if summary.get("age_mae_adults") is not None:
        parts.append(f"age MAE {summary['age_mae_adults']:.3f} y on {summary['adults']} adults (16+)")
    if summary.get("age_mae_all") is not None:
        parts.append(f"{summary['age_mae_all']:.3f} y on all {summary['labelled']} labelled")
    if summary.get("gender_accuracy_adults") is not None:
        parts.append(f"gender accuracy {summary['gender_accuracy_adults']:.1%} adults, "
                     f"{summary['gender_accuracy_all']:.1%} all")
    return "; ".join(parts)
