"""The renderings of a parity report (:class:`ssrconv.parity.ParityReport`): the Markdown table
the CLI prints and writes, JUnit XML for CI, and JSON."""

from __future__ import annotations

import json

from ssrconv.parity import ParityReport
from ssrconv.platforms import describe_features


def render_json(report: ParityReport) -> str:
    """The report as JSON (:meth:`ParityReport.as_dict`)."""
    return json.dumps(report.as_dict(), indent=2) + "\n"


def render_markdown(report: ParityReport) -> str:
    """A Markdown table: one row per artifact, the statistics the budgets judge."""
    faces = max((r.faces for r in report.results), default=0)
    engine = report.reference_engine or "keras"
    # A platform column once anything ran off this process (--platform): x86 and arm64 rows
    # of the same (artifact, engine) side by side.
    several = any(not p.get("host", True) for p in report.platforms.values())
    lines = [f"Parity against the reference ({engine}) on {faces} "
             f"real faces ({report.faces_dir}); synthetic inputs reported separately.", "",
             "| artifact | member (crop rule) | engine | " + ("platform | " if several else "")
             + "max age diff (y) | mean | p99 | P(male) max diff | gender agreement "
             "| synthetic max age diff | result |",
             "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if several else "")]
    for r in report.results:
        age, gender = r.real.get("age"), r.real.get("p_male")
        synth_age = r.synthetic_stats.get("age")
        where = ""
        if several:
            where = f"{r.platform} ({r.machine or '?'}{', emulated' if r.emulated else ''}) | "
        lines.append("| {} | {} | {} | {}{} | {} | {} | {} | {} | {} | {} |".format(
            r.artifact, f"{r.member or '-'} ({r.crop_rule or '-'})", r.engine, where,
            f"{age.max_abs:.2g}" if age else "-", f"{age.mean_abs:.2g}" if age else "-",
            f"{age.p99_abs:.2g}" if age else "-",
            f"{gender.max_abs:.2g}" if gender else "-",
            f"{gender.agreement:.1%}" if gender else "-",
            f"{synth_age.max_abs:.2g}" if synth_age else "-",
            ("not run: " + r.not_run) if r.not_run
            else "pass" if r.passed else "**FAIL**: " + "; ".join(r.violations)))
    if several:
        lines.append("")
        for name, p in report.platforms.items():
            how = ("emulated: " + p["runner"] + "; its numerics are the platform's kernels', "
                   "its time is not the platform's speed") if p["emulated"] else p["runner"]
            lines.append(f"- {name}: {p['machine']}, CPU features {describe_features(p)} "
                         f"({p['features_source']}); {how}.")
    lines += ["", "Where drift starts: max |diff| of the stage tensors on the first "
              f"{report.stage_faces} "
              "faces (stage probabilities, width shifts delta_k, local shifts; both heads), on "
              "the engine named (TFLite's come from its builtin kernels: XNNPACK keeps no "
              "intermediate tensors).", "",
              "| artifact | stage engine | stage probabilities | deltas | local deltas | largest |",
              "|---|---|---|---|---|---|"]
    for r in report.results:
        label = f"{r.artifact} ({r.platform})" if several else r.artifact
        if r.stages is None:
            lines.append(f"| {label} | - | - | - | - | n/a: {r.stages_note or 'not run'} |")
            continue
        by_kind = {}
        for key, value in r.stages.items():
            kind = ("deltas" if ".delta_s" in key else "local" if ".local_delta" in key else "probs")
            by_kind[kind] = max(by_kind.get(kind, 0.0), value)
        worst = max(r.stages, key=r.stages.get)
        lines.append(f"| {label} | {r.stages_engine} | {by_kind.get('probs', 0):.2g} | {by_kind.get('deltas', 0):.2g} "
                     f"| {by_kind.get('local', 0):.2g} | {worst} ({r.stages[worst]:.2g}) |")
    return "\n".join(lines) + "\n"


def render_junit(report: ParityReport) -> str:
    """JUnit XML: one test case per (artifact, engine), a failure element naming each broken
    budget, a skipped element for a pair that was not run (and why)."""
    from xml.sax.saxutils import escape, quoteattr

    failures = sum(not r.passed for r in report.results)
    skipped = sum(bool(r.not_run) for r in report.results)
    cases = []
    for r in report.results:
        body = ""
        if not r.passed:
            message = "; ".join(r.violations)
            body = f"<failure message={quoteattr(message)}>{escape(message)}</failure>"
        elif r.not_run:
            body = f"<skipped message={quoteattr(r.not_run)}/>"
        name = r.artifact if r.engine in ("", "-") else f"{r.artifact} on {r.engine}"
        if r.emulated or (r.platform and len(report.platforms) > 1):
            name += f" ({r.platform}{', emulated' if r.emulated else ''})"
        cases.append(f'  <testcase classname="ssrconv.parity" name={quoteattr(name)}>'
                     f"{body}</testcase>")
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<testsuite name="ssrconv-parity" '
            f'tests="{len(report.results)}" failures="{failures}" skipped="{skipped}">\n'
            + "\n".join(cases)
            + "\n</testsuite>\n")
