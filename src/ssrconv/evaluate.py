"""Accuracy on labelled faces (UTKFace-style names or labels.csv): age MAE, RMSE, error per age
band, gender accuracy, and the biases a model card reports."""

from __future__ import annotations

import numpy as np

ADULT_AGE = 16
# (label, lowest age, highest age) inclusive; the model card's bands
AGE_BANDS = (("0-15", 0, 15), ("16-30", 16, 30), ("31-45", 31, 45), ("46-60", 46, 60),
             ("61+", 61, 200))


def evaluate(runtime, faces) -> dict:
    """Per-image predictions and a summary for ``runtime`` on a :class:`FaceSet`.

    Age MAE is reported on adults (16+, the ages SSR-Net's training sets cover well) and on all
    labelled faces; gender accuracy compares P(male) > 0.5 with the label.
    """
    from ssrconv.parity import run_batched

    outputs = run_batched(runtime, faces.inputs)
    labelled = np.isfinite(faces.ages)
    adults = labelled & (faces.ages >= ADULT_AGE)
    summary: dict = {"backend": runtime.backend, "engine": runtime.engine,
                     "model": str(runtime.path) if runtime.path else f"{runtime.engine} reference",
                     "faces": len(faces), "labelled": int(labelled.sum()), "adults": int(adults.sum())}
    if "age" in outputs:
        age = outputs["age"].astype(np.float64)
        signed = age - faces.ages
        err = np.abs(signed)
        summary["age_mae_adults"] = float(err[adults].mean()) if adults.any() else None
        summary["age_mae_all"] = float(err[labelled].mean()) if labelled.any() else None
        summary["age_rmse_adults"] = float(np.sqrt((err[adults] ** 2).mean())) if adults.any() else None
        summary["age_rmse_all"] = float(np.sqrt((err[labelled] ** 2).mean())) if labelled.any() else None
        bands = {}
        for name, lo, hi in AGE_BANDS:
            inside = labelled & (faces.ages >= lo) & (faces.ages <= hi)
            bands[name] = {"faces": int(inside.sum()),
                           "mae": float(err[inside].mean()) if inside.any() else None,
                           "mean_signed_error": float(signed[inside].mean()) if inside.any() else None}
        summary["age_bands"] = bands
        summary["predicted_age_min"] = float(age.min())
        summary["predicted_age_max"] = float(age.max())
    if "p_male" in outputs:
        p = outputs["p_male"].astype(np.float64)
        right = (p > 0.5) == (faces.is_male == 1.0)
        summary["gender_accuracy_adults"] = float(right[adults].mean()) if adults.any() else None
        summary["gender_accuracy_all"] = float(right[labelled].mean()) if labelled.any() else None
        # the head is a regression, not a sigmoid: its raw output leaves [0, 1]
        summary["p_male_raw_min"] = float(p.min())
        summary["p_male_raw_max"] = float(p.max())
        summary["p_male_raw_outside_0_1"] = int(((p < 0) | (p > 1)).sum())
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
    if summary.get("age_rmse_adults") is not None:
        parts.append(f"age RMSE {summary['age_rmse_adults']:.3f} y adults, "
                     f"{summary['age_rmse_all']:.3f} y all")
    if summary.get("age_bands"):
        parts.append("MAE by age " + ", ".join(
            f"{name} {b['mae']:.1f} y ({b['faces']})" for name, b in summary["age_bands"].items()
            if b["mae"] is not None))
    if summary.get("gender_accuracy_adults") is not None:
        parts.append(f"gender accuracy {summary['gender_accuracy_adults']:.1%} adults, "
                     f"{summary['gender_accuracy_all']:.1%} all")
    return "; ".join(parts)
