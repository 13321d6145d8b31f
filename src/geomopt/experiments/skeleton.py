"""The one experiment skeleton every reproduction is declared with.

A reproduction declares only its science:

- its **protocol**: a config dataclass deriving from :class:`Protocol` (the defaults are the ``full`` tier,
  classmethods ``quick()`` and ``mid()`` the smaller tiers, ``check()`` what the experiment cannot run);
- its **runs**: ``run(ctx) -> Ran``, which trains (problems, tuning and selection through
  :mod:`geomopt.experiments.tuning` or the sweep engine; finished runs skipped) and returns the rows and curves
  to store (:class:`geomopt.experiments.records.Records`) with the compute time spent;
- its **claims**: ``claims(exp)``, functions of the stored records only;
- its **report**: ``report(ctx, records, ran) -> Report``, the tables, figures and paragraphs of its section,
  computed from the stored records.

:class:`Experiment` binds them and drives one generic ``reproduce``: tier config (``--tier``, ``--seeds``,
``--set``) -> experiment folder with ``experiment.json`` -> runs -> ``results.csv`` and ``curves.csv`` written and
read back (the claims are decided on what is stored, as ``geomopt results check`` does) -> tables (``table.csv``)
and figures -> ``claims.json`` -> the report section (with the diverged and unconverged runs as warnings when the
experiment says how to name a run).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from geomopt.experiments.config import configure, experiment_dir, merge_overrides
from geomopt.experiments.records import Records, read_stored
from geomopt.experiments.tuning import Tuned
from geomopt.report import Section, run_warnings, write_section, write_tables
from geomopt.sweep import Claim, band, write_claims
from geomopt.train import read_metrics

__all__ = ["Protocol", "Context", "Ran", "Report", "Experiment", "plan_grid", "tuned_records", "planned_records",
           "epoch_records", "selected", "seed_band", "chance_loss"]


class Protocol:
    """Base of a reproduction's config dataclass (plain data; every field settable with ``--set key=value``).

    Declare the experiment's name in the class line (``class MyExperiment(Protocol, name="my-experiment")``);
    the field defaults are the ``full`` tier, classmethods ``quick()`` / ``mid()`` the smaller ones.
    """

    NAME: ClassVar[str] = ""

    def __init_subclass__(cls, name: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name:
            cls.NAME = name

    def replace(self, overrides: dict[str, Any]) -> Any:
        """A copy with ``overrides`` applied (type-checked: an unknown key or a wrong type raises ValueError
        naming it), then :meth:`check`-ed."""
        exp = type(self)(**merge_overrides(self, overrides, self.NAME))
        exp.check()
        return exp

    def check(self) -> None:
        """Raise ValueError naming the field whose value this experiment cannot run (none by default)."""


@dataclass(frozen=True)
class Context:
    """One ``geomopt reproduce`` call: the resolved config, the experiment's folder and the sweep options."""

    exp: Any
    root: Path
    tier: str
    jobs: int | None = None
    overwrite: bool = False


@dataclass
class Ran:
    """What an experiment's runs produced: the ``records`` to store, the compute ``seconds`` they cost, and
    ``state`` its report may read (e.g. the selections of :func:`geomopt.experiments.tuning.tune`)."""

    records: Records
    seconds: float
    state: Any = None


@dataclass
class Report:
    """An experiment's section, less what the skeleton adds (title, citations, order, run warnings):
    ``paragraphs``, ``tables`` (dicts with ``caption``, ``columns`` and ``rows``; all go to ``table.csv``) and
    ``figures`` (dicts with ``file``, already written into the experiment's folder, and ``caption``)."""

    paragraphs: list[str]
    tables: list[dict[str, Any]] = field(default_factory=list)
    figures: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Experiment:
    """A reproduction: its name, config class, report heading and the three functions it declares.

    Attributes:
        name: ``geomopt reproduce NAME``.
        config: Its :class:`Protocol` dataclass.
        title, citations, order: The report section's title, the papers by title, its place in the report.
        run: ``run(ctx) -> Ran``: the runs (finished ones skipped) and the records to store.
        claims: ``claims(exp) -> [Claim]``, decided on the stored records.
        report: ``report(ctx, records, ran) -> Report``: tables, figures and paragraphs from the stored records.
        describe, unconverged_above: When given, every diverged run and every chosen run whose final
            ``train_loss`` is above ``unconverged_above(row)`` is a warning of the section, named by
            ``describe(row)``, and a caveat paragraph ends it (:func:`geomopt.report.run_warnings`).
        also_seeds: Config fields that ``--seeds N`` sets too (other seeded dimensions).
    """

    name: str
    config: type
    title: str
    citations: tuple[str, ...]
    order: int
    run: Callable[[Context], Ran]
    claims: Callable[[Any], list[Claim]]
    report: Callable[[Context, Records, Ran], Report]
    describe: Callable[[dict[str, Any]], str] | None = None
    unconverged_above: Callable[[dict[str, Any]], float] | None = None
    also_seeds: tuple[str, ...] = ()

    def reproduce(self, out: str | Path, *, tier: str = "full", jobs: int | None = None,
                  overrides: dict[str, Any] | None = None, seeds: int | None = None, overwrite: bool = False) -> Path:
        """Run the reproduction at ``tier`` (``quick``, ``mid`` or ``full``) into ``out/NAME`` (finished runs
        skipped; ``overwrite`` retrains a run folder that holds a different run); write ``results.csv``,
        ``curves.csv``, ``table.csv``, the figures, ``claims.json`` (decided on the stored files) and the report
        section, whose path it returns. ``seeds``: ``--seeds N`` (seeds 0..N-1), ``overrides``: ``--set``."""
        exp = configure(self.config, self.name, tier, overrides, seeds, also_seeds=self.also_seeds)
        ctx = Context(exp, experiment_dir(out, self.name, exp), tier, jobs, overwrite)
        ran = self.run(ctx)
        ran.records.write(ctx.root)
        records = read_stored(ctx.root, exp)  # the claims are decided on what is stored, as `results check` does
        report = self.report(ctx, records, ran)
        write_tables(ctx.root / "table.csv", *[(t["columns"], t["rows"]) for t in report.tables])
        write_claims(ctx.root, self.name, self.claims(exp), records, title=self.title, seeds=exp.seeds,
                     seconds=ran.seconds, tier=tier)
        paragraphs, warnings = list(report.paragraphs), []
        if self.describe is not None and self.unconverged_above is not None:
            warnings, caveat = run_warnings(records.rows, self.describe, self.unconverged_above)
            paragraphs += [caveat] if caveat else []
        return write_section(ctx.root, Section(
            title=self.title, paragraphs=paragraphs, tables=report.tables, figures=report.figures, order=self.order,
            citations=list(self.citations), warnings=warnings))


def plan_grid(axes: Mapping[str, Sequence[Any]],
              make: Callable[..., tuple[Any, Path]]) -> list[tuple[Any, Path, dict[str, Any]]]:
    """A full factorial grid of runs: for every combination of ``axes`` (field -> values; the last axis varies
    fastest), ``(config, run dir, key)`` with ``config, run dir = make(**key)`` and ``key`` the combination, for
    :func:`geomopt.sweep.run_all` and :func:`planned_records`."""
    plan = []
    for values in itertools.product(*axes.values()):
        key = dict(zip(axes, values))
        plan.append((*make(**key), key))
    return plan


def selected(tuned: Tuned, value: float, summary: Mapping[str, Any]) -> dict[str, Any]:
    """A tuned run's selection fields of its row: ``chosen`` (its value is the selected one), ``edge`` (the
    selection's grid edge, on the chosen rows) and its training ``seconds``."""
    chosen = value == tuned.value
    return {"chosen": chosen, "edge": tuned.selection.edge if chosen else None, "seconds": summary.get("seconds", 0.0)}


def epoch_records(run_dir: Path, entry: Callable[[dict[str, Any]], dict[str, Any]]) -> list[dict[str, Any]]:
    """A run's curve: ``entry(record)`` for each ``kind == "epoch"`` record of its metrics, in order."""
    return [entry(r) for r in read_metrics(run_dir) if r["kind"] == "epoch"]


def tuned_records(exp: Any, tuned: Mapping[Hashable, Tuned], root: Path,
                  row: Callable[[Hashable, float, int, dict[str, Any], Tuned], dict[str, Any]],
                  epoch: Callable[[Hashable, dict[str, Any]], dict[str, Any]]) -> Records:
    """One row per run of every tuned problem and its per-epoch curve, in (problem, value, seed) order.

    ``row(key, value, seed, summary, tuned)`` gives a run's fields after its ``run`` id (the run folder relative
    to ``root``); ``epoch(key, record)`` the curve's entry for each epoch record of its metrics.
    """
    rows, curves = [], {}
    for key, t in tuned.items():
        for (value, seed), (_, run_dir, summary) in sorted(t.runs.items()):
            run = str(Path(run_dir).relative_to(root))
            rows.append({"run": run, **row(key, value, seed, summary, t)})
            curves[run] = epoch_records(run_dir, lambda r, key=key: epoch(key, r))
    return Records(exp, rows, curves)


def planned_records(exp: Any, planned: Sequence[tuple[Any, Path, dict[str, Any]]],
                    summaries: Sequence[dict[str, Any]], root: Path,
                    row: Callable[[dict[str, Any], Path], dict[str, Any]],
                    curve: Callable[[Path], list[dict[str, Any]]]) -> Records:
    """One row per planned run ``(config, run dir, key)`` with its summary (:func:`geomopt.sweep.run_all`'s, in
    the same order): its ``run`` id (the folder relative to ``root``), the key's fields, then
    ``row(summary, run dir)``; its curve is ``curve(run dir)``."""
    rows, curves = [], {}
    for (_, run_dir, key), summary in zip(planned, summaries):
        run = str(Path(run_dir).relative_to(root))
        rows.append({"run": run, **key, **row(summary, Path(run_dir))})
        curves[run] = curve(Path(run_dir))
    return Records(exp, rows, curves)


def seed_band(curves: Sequence[Sequence[float]], xs: Sequence[float] | None = None,
              scale: float = 1.0) -> tuple[list[float], list[float], list[float], list[float]]:
    """A figure's line with its band over seeds: ``(xs, mean, low, high)`` of the curves cut to their common
    length and multiplied by ``scale``; ``xs`` default ``0, 1, ...``."""
    n = min(len(c) for c in curves)
    cut = [[scale * v for v in c[:n]] for c in curves]
    return (list(range(n)) if xs is None else list(xs)[:n], *band(cut))


def chance_loss(row: dict[str, Any]) -> float:
    """The cross-entropy of a uniform guess over 10 classes: a chosen run that ends above it did not converge."""
    return math.log(10)
