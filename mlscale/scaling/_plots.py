"""Plots of a fit: log-log data with the fitted law and its 95% band, isoFLOP curves."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlscale.errors import MlscaleError

if TYPE_CHECKING:
    import pandas as pd

    from mlscale.scaling._results import ScalingFit

__all__ = ["plot_fit"]

LOSS_MARGIN = 3.0  # the loss axis spans the runs' losses, a factor 3 either side


def _loss_axis(axes: Any, points: pd.DataFrame) -> None:
    """A log loss axis over the runs' losses, not autoscaled to the fit's curves: a
    degenerate fit (alpha = 1737 on 7 sizes each trained on its own data size) predicts
    losses that overflow to inf off the runs, and ticks up to 1e308 crashed the layout."""
    losses = points["loss"].to_numpy(dtype=float)
    axes.set(yscale="log", ylim=(losses.min() / LOSS_MARGIN, losses.max() * LOSS_MARGIN))


def _band(fit: ScalingFit, grid: dict[str, np.ndarray], alpha: float = 0.05
          ) -> tuple[np.ndarray, np.ndarray] | None:
    """A pointwise band of predictions from the parameters' uncertainty (None when the
    fit has no usable covariance and no bootstrap draws)."""
    try:
        samples = fit.param_draws().to_numpy()
    except MlscaleError:
        return None
    names = fit.param_names
    curves = []
    for row in samples:
        curves.append(fit.law.evaluate(dict(zip(names, row, strict=True)), grid))
    lower, upper = np.nanquantile(np.array(curves), [alpha / 2, 1 - alpha / 2], axis=0)
    return lower, upper


def plot_fit(fit: ScalingFit, points: pd.DataFrame, law: str, out_dir: Path,
             optimal: dict[str, Any] | None) -> list[str]:
    """Log-log data with the fit and its 95% band; isoFLOP curves for the joint law."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MlscaleError(f"cannot write plots to {out_dir}: {error.strerror}") from None
    paths = []
    variables = fit.law.variables
    for var in variables:
        figure, axes = plt.subplots(figsize=(6, 4.2))
        others = [v for v in variables if v != var]
        x = np.logspace(np.log10(points[var].min()), np.log10(points[var].max() * 10), 120)
        if others:  # one curve per value of the other variable (its largest and smallest)
            for value in sorted({points[others[0]].min(), points[others[0]].max()}):
                grid = {var: x, others[0]: np.full_like(x, value)}
                line = axes.plot(x, fit.predict(**grid), label=f"fit, {others[0]}={value:.3g}")
                band = _band(fit, grid)
                if band is not None:
                    axes.fill_between(x, *band, alpha=0.2, color=line[0].get_color())
        else:
            axes.plot(x, fit.predict(**{var: x}), label="fit")
            band = _band(fit, {var: x})
            if band is not None:
                axes.fill_between(x, *band, alpha=0.2, label="95% band")
        axes.scatter(points[var], points["loss"], s=14, color="black", label="runs", zorder=3)
        label = "D' (effective samples)" if var == "D" and fit.data_constrained else var
        axes.set(xscale="log", xlabel=label, ylabel="loss",
                 title=f"{fit.law.formula} (fit to {fit.nobs} runs)")
        _loss_axis(axes, points)
        axes.legend(fontsize=7)
        path = out_dir / f"fit_{law}_{var}.png"
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)
        paths.append(str(path))
    if law == "nd" and optimal is not None:
        paths.append(str(_plot_isoflops(fit, points, optimal["k"], out_dir)))
    return paths


def _plot_isoflops(fit: ScalingFit, points: pd.DataFrame, k: float, out_dir: Path) -> Path:
    import matplotlib.pyplot as plt

    from mlscale.scaling._fit import compute_optimal

    allocation = compute_optimal(fit, k)
    c_values = np.logspace(np.log10(points["C"].min()), np.log10(points["C"].max() * 10), 5)
    figure, axes = plt.subplots(figsize=(6, 4.2))
    for c in c_values:
        n_opt = float(allocation.N_opt(c))
        if not (np.isfinite(n_opt) and n_opt > 0):  # a degenerate fit (few, noisy runs)
            continue
        n = np.logspace(np.log10(n_opt) - 1.5, np.log10(n_opt) + 1.5, 100)
        axes.plot(n, fit.predict(N=n, D=c / (k * n)), label=f"C = {c:.2g}")
        axes.scatter([n_opt], fit.predict(N=n_opt, D=c / (k * n_opt)), color="black", s=12)
    axes.set(xscale="log", xlabel="N (parameters)", ylabel="predicted loss",
             title=f"isoFLOP curves, C = {k:.3g} N D; dots: N_opt ~ C^{allocation.a:.3f}")
    _loss_axis(axes, points)
    axes.legend(fontsize=7)
    path = out_dir / "isoflops.png"
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
