"""What the budget advisor knows about each family, built from the registry and cached.

Per family with enough registered runs: joint laws of test loss and of error rate in
parameters N and effective data D' (``fit_law(..., "nd", unique=...)``), batch-1 p90
latency against forward FLOPs and training seconds per sample against training FLOPs per
sample (statsmodels OLS on logs), the empirical saturation of accuracy against training
FLOPs (``saturation_point``), and the family's dial grid as measured by FlopCounterMode.
Built once per registry state, cached as JSON: a cached answer needs neither torch nor
statsmodels.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from mlscale.cache import cache_dir, write_json
from mlscale.cost_card import COST_CARD
from mlscale.dial_grid import measure_grids, measured_grid
from mlscale.errors import MlscaleError
from mlscale.names import split_source
from mlscale.scaling import ScalingFit

if TYPE_CHECKING:
    from mlscale.registry import MlflowSettings

__all__ = ["FamilyModel", "LatencyModel", "RegistryModel", "TrainTimeModel",
           "load_registry_model"]

CACHE_FORMAT = 3  # bump when what the cache holds changes
MIN_RUNS = 7  # the joint law has 5 parameters; 2 more so that their covariance exists
MIN_DISTINCT = 3  # distinct parameter counts and distinct samples seen a fit needs
RUN_COLUMNS = ["model_uri", "run_name", "width", "depth", *COST_CARD]  # the fits' runs
FIT_COLUMNS = ["params", "samples_seen", "train_size", "test_loss", "error_rate"]


@dataclass(frozen=True)
class LogLogModel:
    """log y = intercept + slope * log x, by OLS, with 95% prediction intervals."""

    params: list[float]
    cov: list[list[float]]
    scale: float  # residual variance of log y
    t_975: float  # Student's t quantile for the 95% interval at the residual degrees of freedom
    nobs: int

    @staticmethod
    def _ols(x: pd.Series, y: pd.Series) -> tuple[list[float], list[list[float]], float,
                                                  float, int]:
        """(params, cov, scale, t_975, nobs) of log y on log x."""
        import statsmodels.api as sm
        from scipy.stats import t

        design = sm.add_constant(np.log(x.to_numpy(dtype=float)))
        result = sm.OLS(np.log(y.to_numpy(dtype=float)), design).fit()
        return ([float(v) for v in result.params], np.asarray(result.cov_params()).tolist(),
                float(result.scale), float(t.ppf(0.975, result.df_resid)), int(result.nobs))

    def predict(self, x: ArrayLike
                ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        """Predicted y with the 95% prediction interval for one new model."""
        log_x = np.log(np.asarray(x, dtype=float))
        (c00, c01), (_, c11) = self.cov
        mean = self.params[0] + self.params[1] * log_x
        se = np.sqrt(c00 + 2 * log_x * c01 + log_x**2 * c11 + self.scale)
        half = self.t_975 * se
        return np.exp(mean), np.exp(mean - half), np.exp(mean + half)


def _positive(runs: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``columns`` of the runs that have all of them, as positive numbers."""
    values = runs.reindex(columns=columns).apply(pd.to_numeric, errors="coerce").dropna()
    return values[(values > 0).all(axis=1)]


@dataclass(frozen=True)
class LatencyModel(LogLogModel):
    """Batch-1 p90 latency (ms) against forward FLOPs per sample.

    ``pooled``: fitted on every family's models because this family had too few.
    """

    pooled: bool
    threads: int  # the thread count every fitted latency was measured with

    @classmethod
    def fit(cls, runs: pd.DataFrame, pooled: bool = False) -> LatencyModel | None:
        """Fit the runs timed on the most common thread count (latencies on different
        thread counts are not comparable); None if they have too few distinct FLOPs."""
        timed = _positive(runs, ["flops_per_sample", "latency_p90_ms", "latency_threads"])
        if timed.empty:
            return None
        threads = int(timed["latency_threads"].mode().iloc[0])
        timed = timed[timed["latency_threads"] == threads]
        if timed["flops_per_sample"].nunique() < MIN_DISTINCT:
            return None
        return cls(*cls._ols(timed["flops_per_sample"], timed["latency_p90_ms"]), pooled,
                   threads)


@dataclass(frozen=True)
class TrainTimeModel(LogLogModel):
    """Seconds of training per sample seen against training FLOPs per sample.

    Fitted on one family's registered runs that recorded their time in training steps,
    on the thread count most of them trained with: thin models run fewer FLOPs per
    second, so the rate is the family's own at its size. Past the largest timed size the
    FLOP rate is held at that size's (a log-log line with a slope under 1 would promise
    bigger models ever more FLOPs per second, past any machine's peak); below the
    smallest, the line goes on (per-step overhead keeps small models slow per FLOP).
    Runs of other precisions or batch sizes on those threads are fitted together.
    """

    threads: int  # CPU threads the fitted runs trained with (0: on a GPU)
    high: float  # the largest timed training FLOPs per sample

    @classmethod
    def fit(cls, runs: pd.DataFrame) -> TrainTimeModel | None:
        """None if fewer than ``MIN_DISTINCT`` model sizes recorded their time."""
        timed = _positive(runs, ["train_flops_per_sample", "train_time_s", "samples_seen"])
        threads = pd.to_numeric(runs.reindex(columns=["train_threads"])["train_threads"],
                                errors="coerce").reindex(timed.index).dropna()
        if threads.empty:
            return None
        common = int(threads.mode().iloc[0])
        timed = timed.loc[threads.index[threads == common]]
        if timed["train_flops_per_sample"].nunique() < MIN_DISTINCT:
            return None
        sizes = timed["train_flops_per_sample"]
        per_sample = timed["train_time_s"] / timed["samples_seen"]
        return cls(*cls._ols(sizes, per_sample), threads=common, high=float(sizes.max()))

    def predict(self, x: ArrayLike
                ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        """Seconds per sample with the 95% prediction interval, at the largest timed
        size's FLOP rate past it."""
        sizes = np.asarray(x, dtype=float)
        fitted = np.minimum(sizes, self.high)
        value, lower, upper = super().predict(fitted)
        scale = sizes / fitted
        return value * scale, lower * scale, upper * scale


@dataclass(frozen=True, eq=False)
class FamilyModel:
    """One family's fits, latency and training-time models, measured dial grid and runs."""

    family: str
    loss_fit: ScalingFit
    error_fit: ScalingFit
    latency: LatencyModel | None
    train_time: TrainTimeModel | None
    candidates: pd.DataFrame  # width, depth, params, flops_per_sample, train_flops_per_sample
    runs: pd.DataFrame  # RUN_COLUMNS, one row per registered version
    saturation_flops: float | None  # accuracy gain per 10x FLOPs < 0.1 points for good

    @property
    def largest_run_flops(self) -> float:
        return float(self.runs["train_flops"].max())

    @property
    def largest_params(self) -> float:
        return float(self.runs["params"].max())

    def max_epochs(self, unique: int) -> float:
        """The passes over their data the fitted runs typically made (the median) on at
        least half of the ``unique`` samples: past that the law rests on a few runs at most,
        and on small data more passes raise the test loss, which the law cannot show. One
        pass when no run used that much data."""
        large = self.runs[self.runs["train_size"] >= unique / 2]
        if large.empty:
            return 1.0
        return float((large["samples_seen"] / large["train_size"]).median())

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "loss_fit": self.loss_fit.to_dict(),
                "error_fit": self.error_fit.to_dict(),
                "latency": None if self.latency is None else asdict(self.latency),
                "train_time": None if self.train_time is None else asdict(self.train_time),
                "candidates": self.candidates.to_dict("list"), "runs": self.runs.to_dict("list"),
                "saturation_flops": self.saturation_flops}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> FamilyModel:
        latency, train_time = payload["latency"], payload["train_time"]
        return cls(payload["family"], ScalingFit.from_dict(payload["loss_fit"]),
                   ScalingFit.from_dict(payload["error_fit"]),
                   None if latency is None else LatencyModel(**latency),
                   None if train_time is None else TrainTimeModel(**train_time),
                   pd.DataFrame(payload["candidates"]), pd.DataFrame(payload["runs"]),
                   payload["saturation_flops"])


@dataclass(frozen=True)
class RegistryModel:
    """Everything the advisor knows about one dataset's registered models."""

    dataset: str
    unique: int  # unique training samples available (the train split less validation)
    fingerprint: str
    versions: int
    families: dict[str, FamilyModel]
    skipped: dict[str, str]  # family -> why it has no fit
    zoo: list[str]  # every family the zoo knows (checked without importing torch)

    def to_dict(self) -> dict[str, Any]:
        return {"format": CACHE_FORMAT, "dataset": self.dataset, "unique": self.unique,
                "fingerprint": self.fingerprint, "versions": self.versions,
                "families": {name: fm.to_dict() for name, fm in self.families.items()},
                "skipped": self.skipped, "zoo": self.zoo}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> RegistryModel:
        return cls(payload["dataset"], int(payload["unique"]), payload["fingerprint"],
                   int(payload["versions"]),
                   {name: FamilyModel.from_dict(fm) for name, fm in payload["families"].items()},
                   dict(payload["skipped"]), list(payload["zoo"]))


def _usable_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """Registered versions whose cost card has every figure a fit needs, all positive."""
    values = frame[FIT_COLUMNS].apply(pd.to_numeric, errors="coerce")
    return frame[(values > 0).all(axis=1)]


def _fit_family(family: str, runs: pd.DataFrame, input_shape: tuple[int, int, int],
                num_classes: int, pooled: LatencyModel | None,
                on_status: Callable[[str], None]) -> FamilyModel:
    from mlscale.scaling import fit_law, saturation_point

    points = {"N": runs["params"], "D": runs["samples_seen"], "unique": runs["train_size"]}
    loss_fit = fit_law({**points, "loss": runs["test_loss"]}, "nd", unique="unique")
    error_fit = fit_law({**points, "loss": runs["error_rate"]}, "nd", unique="unique")
    latency = LatencyModel.fit(runs) or pooled
    saturation = None
    with contextlib.suppress(MlscaleError):  # optional: too few or unusable points
        saturation = saturation_point(runs["train_flops"], runs["test_accuracy"]).x
    return FamilyModel(family, loss_fit, error_fit, latency, TrainTimeModel.fit(runs),
                       measured_grid(family, input_shape, on_status, num_classes,
                                     _dial_bounds(runs)),
                       runs.reindex(columns=RUN_COLUMNS).reset_index(drop=True), saturation)


def build_registry_model(frame: pd.DataFrame, dataset: str, fingerprint: str,
                         on_status: Callable[[str], None] = lambda _: None) -> RegistryModel:
    """Fit every family of ``frame`` (``models_frame`` rows of one dataset) that has enough runs."""
    from mlscale.data import dataset_info, default_val_size
    from mlscale.models import list_models
    from mlscale.names import dataset_name

    info = dataset_info(dataset)
    unique = info.train_samples - default_val_size(info.train_samples)
    frame = frame[frame["dataset"] == dataset_name(dataset)]
    if frame.empty:
        raise MlscaleError(f"the frame has no models of dataset {dataset!r}")
    pooled = LatencyModel.fit(frame, pooled=True)
    families, skipped, eligible = {}, {}, {}
    for family, group in frame.groupby("arch", sort=True):
        runs = _usable_runs(group)
        sizes, data = runs["params"].nunique(), runs["samples_seen"].nunique()
        if len(runs) < MIN_RUNS or min(sizes, data) < MIN_DISTINCT:
            skipped[str(family)] = (
                f"{len(runs)} usable runs with {sizes} model sizes and {data} data sizes; the "
                f"joint law needs {MIN_RUNS} runs and {MIN_DISTINCT} of each")
        else:
            eligible[str(family)] = runs
    with contextlib.suppress(MlscaleError):  # a family the zoo cannot build fails its fit
        measure_grids({f: _dial_bounds(runs) for f, runs in eligible.items()},
                                   info.input_shape, info.num_classes, on_status)
    for family, runs in eligible.items():
        on_status(f"fitting {family} ({len(runs)} runs)")
        try:
            families[str(family)] = _fit_family(str(family), runs, info.input_shape,
                                                info.num_classes, pooled, on_status)
        except MlscaleError as error:
            skipped[str(family)] = f"the fit failed: {error}"
    if not families:
        reasons = "; ".join(f"{family}: {why}" for family, why in skipped.items())
        raise MlscaleError(f"no family of {dataset} has enough registered runs to fit ({reasons})")
    return RegistryModel(dataset, unique, fingerprint, len(frame), families, skipped,
                         list_models())


def _dial_bounds(runs: pd.DataFrame) -> tuple[tuple[float, float], tuple[int, int]]:
    """The widths and depths the runs span: the grid of a family with open ranges."""
    width, depth = (pd.to_numeric(runs[c], errors="coerce") for c in ("width", "depth"))
    return (float(width.min()), float(width.max())), (int(depth.min()), int(depth.max()))


def registry_fingerprint(settings: MlflowSettings) -> str:
    """Changes whenever a version is registered or deleted anywhere in the registry."""
    from mlscale.registry import all_pages, client, mlflow_errors

    mlflow_client = client(settings)
    with mlflow_errors(settings):
        models = all_pages(mlflow_client.search_registered_models, 1000)
    state = sorted((m.name, m.last_updated_timestamp) for m in models)
    return hashlib.sha256(json.dumps(state).encode()).hexdigest()[:16]


def load_registry_model(settings: MlflowSettings, dataset: str, *, refresh: bool = False,
                        on_status: Callable[[str], None] = lambda _: None
                        ) -> tuple[RegistryModel, bool]:
    """The advisor's model of the registry, and whether it came from the cache.

    The cache is keyed by the stores and the dataset and rebuilt when the registry's
    fingerprint moves (or ``refresh``).
    """
    from importlib.metadata import version

    from mlscale.registry import models_frame, no_models_message

    fingerprint = registry_fingerprint(settings)
    source = split_source(dataset)  # a user source's relative path: keyed by where it is
    where = dataset if source is None or source[0] == "torchvision" else (
        f"{source[0]}:{Path(source[1]).expanduser().resolve()}")
    store = f"{settings.tracking_uri}|{settings.registry_uri}|{where}"
    path = cache_dir() / f"budget-{hashlib.sha256(store.encode()).hexdigest()[:16]}.json"
    stamp = f"{fingerprint}-{version('mlscale')}-{CACHE_FORMAT}-{_source_hash()}"
    if not refresh and path.is_file():
        try:
            payload = json.loads(path.read_text())
            if payload.get("stamp") == stamp:
                return RegistryModel.from_dict(payload["model"]), True
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged or foreign cache file is rebuilt below
    on_status("reading the registry")
    frame = models_frame(settings, dataset=dataset)
    if frame.empty:
        raise MlscaleError(no_models_message(settings, dataset))
    model = build_registry_model(frame, dataset, fingerprint, on_status)
    write_json(path, {"stamp": stamp, "model": model.to_dict()})
    return model, False


def _source_hash() -> str:
    """A hash of mlscale's own source files: a changed fit or zoo invalidates the cache
    (an editable install keeps its version number through every change)."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parents[1].rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
