"""The pipeline benchmark's imports and per-run jobs still build from the platform, and its
memory sampler counts each address space once (no JVM)."""

import ast
import importlib
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from churn_platform.core import reasons
from churn_platform.core.models.kinds import KINDS, MODEL_KINDS, model_key

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = ("pipeline", "pipeline_baselines", "pipeline_measures")


def unresolved_imports(path: Path) -> list[str]:
    """Every `from X import a` in the file, function bodies included, that no longer resolves.

    The baselines import inside their run functions (each run loads only its own stack), so a
    moved platform function would otherwise only show in a benchmark run. Uninstalled optional
    packages (LightGBM) are skipped.
    """
    missing = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom) or node.level or node.module is None:
            continue
        if importlib.util.find_spec(node.module.split(".")[0]) is None:
            continue
        module = importlib.import_module(node.module)
        missing += [
            f"{node.module}.{a.name}"
            for a in node.names
            if not hasattr(module, a.name)
            and (not hasattr(module, "__path__") or not find_submodule(node.module, a.name))
        ]
    return missing


def find_submodule(package: str, name: str) -> bool:
    """`from package import name` of a module that is not imported yet is not an attribute."""
    return importlib.util.find_spec(f"{package}.{name}") is not None


def test_every_benchmark_imports_what_the_platform_still_has() -> None:
    """A benchmark is run by hand, seldom: a platform function moved or renamed would otherwise
    only show when someone next runs it."""
    scripts = sorted(BENCHMARKS.glob("*.py"))
    assert {p.stem for p in scripts} >= {"daemon", "startup", "accuracy", *SCRIPTS}
    assert {p.name: unresolved_imports(p) for p in scripts} == {p.name: [] for p in scripts}


def test_benchmark_jobs_build_from_current_platform_code(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    pipeline, baselines, measures = (importlib.import_module(name) for name in SCRIPTS)
    sklearn_run, pandas_run = (
        importlib.import_module(m) for m in ("baseline_sklearn", "baseline_pandas")
    )
    assert [i for name in SCRIPTS for i in unresolved_imports(BENCHMARKS / f"{name}.py")] == []
    for modules in baselines.IMPORTS.values():
        assert all(importlib.util.find_spec(m.split(".")[0]) for m in modules if m != "lightgbm")

    args, kinds = pipeline.parse_args(["--rows", "100", "--compare", "--models", "gbt,bagged_lr"])
    assert (args.rows, args.compare, kinds) == (100, True, ["gbt", "bagged_lr"])
    assert pipeline.parse_args(["--telco"])[1] == list(MODEL_KINDS)
    with pytest.raises(SystemExit):
        pipeline.parse_args(["--rows", "100", "--models", "no_such_model"])
    assert {measures.layer_of(model_key(kind)) for kind in MODEL_KINDS} == {"training"}

    monkeypatch.setenv("CHURN_HOME", str(tmp_path))
    for profile in ("quick", "default"):
        monkeypatch.setenv(pipeline.PROFILE_ENV, profile)
        common = pipeline.base_job(args, list(MODEL_KINDS), tmp_path / "customers.csv")
        assert list(common["params"]) == sorted(MODEL_KINDS)
        for name in ("platform", "pyspark", "pandas", "naive"):
            job = json.loads(json.dumps(pipeline.run_job(common, name, tmp_path)))
            assert ("spark_conf" in job) == (name in pipeline.SPARK_BASELINES)
            assert pipeline.run_command(name, tmp_path / "job.json")[-1] == str(
                tmp_path / "job.json"
            )
        # The pandas run has a scikit-learn stand-in for every learner the jobs name.
        y = np.array([0, 1] * 5)
        for kind, params in common["params"].items():
            learners = params["base_params"] if KINDS[kind].is_ensemble else {kind: params}
            for learner, values in learners.items():
                fixed = {k: v[0] if isinstance(v, list) else v for k, v in values.items()}
                assert sklearn_run._learner(learner, fixed, y[:, None], y, y, 0) is not None

    # The pandas run repeats core.reasons' settings rather than loading PySpark.
    ours = (pandas_run.TOP_REASONS, pandas_run.SURROGATE_MAX_ROWS, pandas_run.SURROGATE_REG_PARAM)
    assert ours == (reasons.TOP_REASONS, reasons.SURROGATE_MAX_ROWS, reasons.SURROGATE_REG_PARAM)
    assert pandas_run.LOGIT_CLIP == reasons.LOGIT_CLIP


HOLDER = """
import os, time
held = bytearray(300 * 2**20)  # touched: resident
for i in range(0, len(held), 4096):
    held[i] = 1
if os.fork() == 0:  # a child that never execs: the same pages, not new memory
    time.sleep(30)
    os._exit(0)
print("ready", flush=True)
time.sleep(30)
"""


def test_memory_sampler_counts_a_child_that_has_not_exec_d_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The JVM starts commands by posix_spawn; until the exec such a child reports its parent's
    whole RSS, which made a 4.9 GB run look like 14.8 GB."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    measures = importlib.import_module("pipeline_measures")
    monkeypatch.setattr(measures, "SAMPLE_SECONDS", 0.01)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        (child,) = psutil.Process(holder.pid).children()
        assert child.memory_info().rss > 250 * 2**20  # what the earlier sampler added again
        with measures.MemorySampler(holder.pid) as sampler:
            time.sleep(0.2)
    finally:
        for process in psutil.Process(holder.pid).children() + [psutil.Process(holder.pid)]:
            process.kill()
        holder.wait()
    assert sampler.samples
    assert min(s.driver for s in sampler.samples) > 250 * 2**20
    assert max(s.jvm for s in sampler.samples) < 50 * 2**20


def test_json_summary_of_a_data_only_run_has_no_scoring_rate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--data-only --json` ends with its summary line: a run without a scoring step has no
    scoring rate (it divided by zero and lost the run's table)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    measures = importlib.import_module("pipeline_measures")
    steps = {"raw_customers": (0.0, 10.0), "cleaned_customers": (10.0, 20.0)}
    run = measures.Run("platform", 0.0, 25.0, steps, "", 0.0, [], [], [])
    line = measures.summary(1_000_000, {"platform": run})
    assert line["etl_rows_per_s"] == 50_000.0
    assert line["score_rows_per_s"] is None
    assert json.loads(json.dumps(line)) == line
