"""The scaling report's figures and its HTML and Markdown pages (``mlscale.report._scaling``
computes what they show)."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlscale.markdown import markdown_table
from mlscale.report._page import cell, html_page, html_table, img_tag, save_figure

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["plot_study", "write_pages"]

HTML_NAME, MARKDOWN_NAME = "scaling_report.html", "scaling_report.md"
COST_NAMES = {"N": "parameters", "C": "training FLOPs"}
REGIME_SHADES = (("small", "#e3f4e3"), ("middle", "#fdf6dd"), ("large", "#e6e6e6"))


def _colours(study: dict[str, Any]) -> dict[str, str]:
    return {family: f"C{i % 10}" for i, family in enumerate(study["families"])}


def _shade_regimes(axes: Any, regimes: Any, low: float, high: float) -> None:
    """Shade the three regimes along the parameter axis (the large one is saturation; a
    middle regime too narrow to speak of is not drawn)."""
    from mlscale.scaling import curve_start, middle_regime

    def edge(crossing: float | None) -> float:  # at the curve's start: from the first run
        return high if crossing is None else low if crossing <= curve_start(regimes) else crossing

    edges = [low, edge(regimes.small_until), edge(regimes.saturated_from), high]
    edges[1] = min(edges[1], edges[2])
    narrow = middle_regime(regimes) == "narrow"
    for (name, colour), left, right in zip(REGIME_SHADES, edges, edges[1:], strict=False):
        if right > left and not (narrow and name == "middle"):
            label = "large: saturated" if name == "large" else name
            axes.axvspan(left, right, color=colour, zorder=0, label=f"regime {label}")


def _saturation_plot(study: dict[str, Any], points: pd.DataFrame, out: Path) -> Path:
    from matplotlib.figure import Figure

    colours = _colours(study)
    figure = Figure(figsize=(9, 5))
    axes = figure.subplots()
    regimes = study["regimes"]
    if not isinstance(regimes, dict):
        _shade_regimes(axes, regimes, float(points["N"].min()) / 1.3,
                       float(points["N"].max()) * 1.3)
        axes.plot(regimes.frontier["N"], regimes.frontier["accuracy"], color="black",
                  linewidth=0.8, linestyle=":", drawstyle="steps-post",
                  label="frontier, all families (best with at most N params)")
    for family, info in study["families"].items():
        runs = points[points["arch"] == family]
        best = runs.groupby("N")["accuracy"].max()
        axes.scatter(best.index, best.to_numpy(), s=16, color=colours[family], label=family)
        saturation = info["saturation"]
        if "curve" in saturation:
            axes.plot(saturation["curve"]["x"], saturation["curve"]["smoothed"],
                      color=colours[family], linewidth=1.2)
        if saturation.get("saturation_params"):
            axes.scatter([saturation["saturation_params"]], [saturation["saturation_accuracy"]],
                         marker="*", s=180, color=colours[family], edgecolor="black", zorder=4)
    axes.set(xscale="log", xlabel="parameters N", ylabel="test accuracy (best run at each N)",
             title="saturation: lines are each family's frontier (best accuracy with at most N "
             "params),\nstars where 10x more parameters buy under 0.1 points")
    axes.legend(fontsize=7, loc="lower right")
    return save_figure(figure, out / "saturation.png")


def _frontier_plot(study: dict[str, Any], points: pd.DataFrame, out: Path) -> Path:
    from matplotlib.figure import Figure

    colours = _colours(study)
    figure = Figure(figsize=(12, 4.6))
    panels = figure.subplots(1, 2)
    for axes, (value, front_key, label) in zip(panels, (
            ("loss", "loss_front", "test loss (nats)"),
            ("accuracy", "accuracy_front", "test accuracy")), strict=True):
        for family in study["families"]:
            runs = points[points["arch"] == family]
            axes.scatter(runs["C"], runs[value], s=12, alpha=0.6, color=colours[family],
                         label=family)
        front = study["frontier"][front_key]
        axes.step(front["C"], front[value], where="post", color="black", linewidth=1,
                  label="compute frontier")
        for decade in study["frontier"]["decades"]:
            axes.axvline(decade["to_flops"], color="#bbb", linewidth=0.6, zorder=0)
        axes.set(xscale="log", yscale="log" if value == "loss" else "linear",
                 xlabel="training FLOPs", ylabel=label, title=f"best {label} for the compute")
        axes.legend(fontsize=7)
    return save_figure(figure, out / "compute_frontier.png")


def _efficiency_plot(study: dict[str, Any], points: pd.DataFrame, out: Path) -> Path:
    from matplotlib.figure import Figure

    from mlscale.scaling import best_by

    colours = _colours(study)
    figure = Figure(figsize=(12, 4.6))
    for axes, cost in zip(figure.subplots(1, 2, sharey=True), ("N", "C"), strict=True):
        for family in study["families"]:
            front = best_by(points[points["arch"] == family], cost, "accuracy")
            axes.plot(front[cost], front["accuracy"], marker="o", markersize=3,
                      color=colours[family], label=family)
        axes.set(xscale="log", xlabel=COST_NAMES[cost], ylabel="best test accuracy so far",
                 title=f"accuracy at equal {COST_NAMES[cost]}")
        axes.legend(fontsize=7)
    return save_figure(figure, out / "parameter_efficiency.png")


def plot_study(study: dict[str, Any], points: pd.DataFrame, out: Path) -> list[Path]:
    """The cross-family figures, then every family's fit plots (already written)."""
    plots = [_saturation_plot(study, points, out), _frontier_plot(study, points, out),
             _efficiency_plot(study, points, out)]
    for info in study["families"].values():
        plots += [Path(p) for fit in info["fits"].values() for p in fit.get("plots", [])]
    return plots


def _interval(entry: dict[str, float] | None, fmt: str = "{:.3f}") -> str:
    if not entry:
        return "not fitted"
    if not all(isinstance(entry[end], float) and math.isfinite(entry[end])
               for end in ("lower", "upper")):  # the covariance could not be estimated
        return f"{fmt.format(entry['value'])} [no interval]"
    return (f"{fmt.format(entry['value'])} [{fmt.format(entry['lower'])}, "
            f"{fmt.format(entry['upper'])}]")


def _exponent_table(study: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["family", "runs", "alpha of L(N)", "beta of L(D)", "alpha of L(N, D)",
               "beta of L(N, D)", "a = beta/(alpha+beta)", "R^2 (log)", "extrapolation |err|",
               "preferred law of N"]
    rows = [[r["family"], str(study["families"][r["family"]]["runs"]), _interval(r["alpha_n"]),
             _interval(r["beta_d"]), _interval(r["alpha"]), _interval(r["beta"]),
             _interval(r["a"]), cell(r["r2_log"], "{:.3f}"),
             cell(r["extrapolation_error_pct"], "{:.2f}%"), r["preferred_law"] or "n/a"]
            for r in study["exponents"]]
    return headers, rows


def _saturation_table(study: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["family", "params", "best accuracy", "saturates at N", "regime there",
               "lowest test loss at N", "loss rise at largest N"]
    regimes = study["regimes"]
    rows = []
    for family, info in study["families"].items():
        s = info["saturation"]
        point = s.get("saturation_params")
        regime = regimes.regime(point) if point and not isinstance(regimes, dict) else ""
        if regime in ("small", "middle"):  # saturated alone, not on the all-family frontier
            regime += ": the all-family frontier still gains there"
        rows.append([family, f"{s['params_range'][0]:,.0f}-{s['params_range'][1]:,.0f}",
                     f"{s['best_accuracy']:.2%}",
                     f"{point:,.0f}" if point else str(s.get("reason")), regime,
                     f"{s['params_at_lowest_loss']:,.0f}",
                     f"{100 * s['loss_rises_past_lowest']:.1f}%"])
    return headers, rows


def _regime_text(study: dict[str, Any]) -> str:
    """The rule, then where the regimes lie; without a middle regime to speak of (both
    crossings on one bend of the curve, or between the same two runs) it says so."""
    from mlscale.scaling import curve_start, middle_regime

    regimes = study["regimes"]
    if isinstance(regimes, dict):
        return f"Regimes {regimes['error']}."
    sizes = regimes.frontier["N"]
    low, high, first = float(sizes.min()), float(sizes.max()), curve_start(regimes)
    small, large = regimes.small_until, regimes.saturated_from
    middle = middle_regime(regimes)
    if small is None:
        here = (f"small over the whole range ({low:,.0f}-{high:,.0f} parameters), 10x more "
                f"parameters buying at least 1 point throughout; not saturated")
    elif large is not None and large <= first:
        here = (f"large (saturated) over the whole range ({low:,.0f}-{high:,.0f} "
                f"parameters): 10x more parameters never buy 0.1 points")
    elif large is not None and middle == "narrow":
        here = (f"small below {small:,.0f} and large (saturated) from {large:,.0f} "
                f"parameters, no middle regime: the gain per 10x falls from over 1 point to "
                f"under 0.1 points within {100 * (large / small - 1):.1f}% more parameters")
    elif large is not None and middle == "empty":
        here = (f"small up to the run at {float(sizes[sizes < small].max()):,.0f} parameters "
                f"and large (saturated) from the run at "
                f"{float(sizes[sizes >= large].min()):,.0f}, no run in a middle regime: the "
                f"gain per 10x falls from over 1 point to under 0.1 points between them")
    else:
        start = (f"no small regime (10x more parameters never buy 1 point past the gain's "
                 f"peak); middle from {low:,.0f}" if small <= first else
                 f"small below {small:,.0f} parameters; middle from {small:,.0f}")
        here = (f"{start}; not saturated within the data ({high:,.0f} parameters)"
                if large is None else f"{start} to {large:,.0f}; large (saturated) from "
                f"{large:,.0f}")
    return f"{regimes.rule} Here: {here}."


def _decade_table(study: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["training FLOPs up to", "lowest test loss", "by", "best accuracy", "by"]
    rows = [[f"{d['to_flops']:.0e}", f"{d['loss']:.4f}", d["loss_family"],
             f"{d['accuracy']:.2%}", d["accuracy_family"]] for d in study["frontier"]["decades"]]
    return headers, rows


def _efficiency_rows(study: dict[str, Any]) -> tuple[list[str], list[list[str]]] | str:
    from mlscale.report._scaling import BASE_FAMILY

    if isinstance(study["efficiency"], dict):
        return f"Parameter efficiency {study['efficiency']['error']}."
    headers = ["family", "at equal", "overlap", f"{BASE_FAMILY} ahead by (points, mean "
               "[min, max])", f"{BASE_FAMILY} best", "family's best",
               f"family needs to match {BASE_FAMILY}'s best"]
    rows = []
    for e in study["efficiency"]:
        gap = (e["note"] if e["overlap"] is None else
               f"{e['mean_gap_points']:+.2f} [{e['min_gap_points']:+.2f}, "
               f"{e['max_gap_points']:+.2f}]")
        match = ("never, within its runs" if e["other_cost_to_match"] is None else
                 f"{e['other_cost_to_match']:.3g} ({e['match_ratio']:.3g}x)")
        rows.append([e["family"], COST_NAMES[e["cost"]],
                     "none" if e["overlap"] is None else
                     f"{e['overlap'][0]:.3g}-{e['overlap'][1]:.3g}", gap,
                     f"{e['base_best_accuracy']:.2%} at {e['base_cost_at_best']:.3g}",
                     f"{e['other_best_accuracy']:.2%}", match])
    return headers, rows


def _efficiency_text(study: dict[str, Any]) -> str:
    """How the comparison is made, then one verdict per family in numbers."""
    from mlscale.report._scaling import BASE_FAMILY

    if isinstance(study["efficiency"], dict):
        return f"Parameter efficiency {study['efficiency']['error']}."
    text = ["Accuracy on each family's frontier (best run with at most that many parameters "
            "or training FLOPs), interpolated on the log axis where the families overlap."]
    for e in study["efficiency"]:
        at = f"At equal {COST_NAMES[e['cost']]}, {e['family']} against {BASE_FAMILY}:"
        gap = ("no overlap" if e["overlap"] is None else
               f"{BASE_FAMILY} is {abs(e['mean_gap_points']):.2f} points "
               f"{'ahead' if e['mean_gap_points'] >= 0 else 'behind'} on average")
        best = (f"{BASE_FAMILY}'s best {e['base_best_accuracy']:.2%} (at "
                f"{e['base_cost_at_best']:.3g} {COST_NAMES[e['cost']]})")
        match = (f"none of {e['family']}'s runs (best {e['other_best_accuracy']:.2%}) "
                 f"reaches {best}" if e["other_cost_to_match"] is None else
                 f"{e['family']} reaches {best} with {e['other_cost_to_match']:.3g} "
                 f"({e['match_ratio']:.3g}x)")
        text.append(f"{at} {gap}; {match}.")
    return " ".join(text)


def _law_rows(study: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["family", "points", "law", "formula", "AIC", "BIC", "delta AIC", "RMSE",
               "preferred"]
    rows = []
    for family, info in study["families"].items():
        selection = info["law_selection"]
        if "error" in selection:
            rows.append([family, "", "", selection["error"], "", "", "", "", ""])
            continue
        for cand in selection["candidates"]:
            preferred = ("AIC" if cand["name"] == selection["preferred"] else "") + (
                " BIC" if cand["name"] == selection["preferred_bic"] else "")
            rows.append([family, str(selection["nobs"]), cand["name"], cand["formula"],
                         f"{cand['aic']:.2f}", f"{cand['bic']:.2f}",
                         f"{selection['delta_aic'][cand['name']]:.2f}", f"{cand['rmse']:.4g}",
                         preferred.strip()])
    return headers, rows


def _fit_rows(info: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["law", "runs fitted", "parameters (95% intervals)", "R^2 (log)", "RMSE (log)",
               "extrapolation check"]
    rows = []
    for law, fit in info["fits"].items():
        if "error" in fit:
            rows.append([law, "", fit["error"], "", "", ""])
            continue
        params = "; ".join(f"{name} {_interval(v, '{:.4g}')}" for name, v in fit["params"].items())
        check = fit["extrapolation"]
        rows.append([
            law, str(fit["nobs"]), params, f"{fit['goodness']['r2_log']:.3f}",
            f"{fit['goodness']['rmse_log']:.4f}",
            "too few runs to hold any out" if not check else
            f"fit on {check['fit_points']}, {check['held_out_points']} held out from "
            f"{check['axis']} >= {check['held_out_from']:.3g}: mean |error| "
            f"{check['mean_abs_pct_error']:.2f}%, max {check['max_abs_pct_error']:.2f}%"])
    return headers, rows


def _sections(study: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(heading, text, table or None) in page order; figures are placed by heading."""
    efficiency = _efficiency_rows(study)
    return [
        ("Exponents across families", "Fits of test loss by Huber loss on log loss; 95% "
         "intervals (Wald); a is the compute-optimal N_opt ~ C^a of the joint law.",
         _exponent_table(study)),
        ("Saturation and regimes", _regime_text(study), _saturation_table(study)),
        ("Compute frontier", "Which family holds the frontier in each decade of compute: the "
         "best run trained with at most that many FLOPs.", _decade_table(study)),
        ("Parameter efficiency", _efficiency_text(study),
         None if isinstance(efficiency, str) else efficiency),
        ("Law selection", "Test loss against parameters at one data size per family "
         "(the one with most model sizes): power law, logarithmic law and saturating "
         "exponential, one Gaussian likelihood for all, AIC/BIC from statsmodels "
         "(k = curve parameters + 1 for the noise variance).", _law_rows(study)),
    ]


FIGURES = {"Saturation and regimes": ["saturation"], "Compute frontier": ["compute_frontier"],
           "Parameter efficiency": ["parameter_efficiency"]}


def write_pages(study: dict[str, Any], plots: list[Path], out: Path, intro: str
                ) -> tuple[Path, Path]:
    """The HTML page (figures embedded) and the Markdown twin (figures beside it)."""
    by_stem = {p.stem: p for p in plots[:3]}
    title = "Scaling: how each family scales and where it saturates"
    body = [f"<h1>{html.escape(title)}</h1><p class='note'>{html.escape(intro)}</p>"]
    markdown = [f"# {title}", intro]
    for heading, text, table in _sections(study):
        if heading:
            body.append(f"<h2>{html.escape(heading)}</h2>")
            markdown.append(f"## {heading}")
        body.append(f"<p class='note'>{html.escape(text)}</p>")
        markdown.append(text)
        for stem in FIGURES.get(heading, []):
            body.append(img_tag(by_stem[stem]))
            markdown.append(f"![{stem}]({stem}.png)")
        if table is not None:
            body.append(html_table(*table))
            markdown.append(markdown_table(*table))
    body.append("<h2>Per family</h2>")
    markdown.append("## Per family")
    for family, info in study["families"].items():
        family_plots = [Path(p) for fit in info["fits"].values() for p in fit.get("plots", [])]
        summaries = "".join(f"<pre>{html.escape(fit['summary'])}</pre>"
                            for fit in info["fits"].values() if "summary" in fit)
        body.append(f"<details open><summary>{html.escape(family)} ({info['runs']} runs)"
                    f"</summary>" + html_table(*_fit_rows(info))
                    + f"<div class='pair'>{''.join(img_tag(p) for p in family_plots)}</div>"
                    + f"<details><summary>fit summaries</summary>{summaries}</details>"
                    + "</details>")
        markdown += [f"### {family} ({info['runs']} runs)", markdown_table(*_fit_rows(info))]
        markdown += [f"![{family} {p.stem}]({p.relative_to(out).as_posix()})"
                     for p in family_plots]
    html_path, md_path = out / HTML_NAME, out / MARKDOWN_NAME
    html_path.write_text(html_page("mlscale scaling report", "".join(body)), encoding="utf-8")
    md_path.write_text("\n\n".join(markdown) + "\n", encoding="utf-8")
    return html_path, md_path
