"""The ``imageindex_eval`` DAG: parses without I/O, and one real ``dag.test()`` run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAG_FILE = REPO / "dags" / "imageindex_eval.py"
sys.path.insert(0, str(REPO / "scripts"))
from airflow_local import airflow_env, migrate  # noqa: E402

PROBE = textwrap.dedent(
    """
    import json, sys, time
    t0 = time.perf_counter()
    from airflow.dag_processing.dagbag import DagBag
    bag = DagBag(dag_folder=sys.argv[1])
    heavy = sorted(
        m for m in ("torch", "onnxruntime", "lancedb", "sentence_transformers", "transformers",
                    "matplotlib", "imageindex.evaluation", "imageindex.embedders")
        if m in sys.modules
    )
    d = bag.dags.get("imageindex_eval")
    print(json.dumps({
        "errors": {k: str(v)[-500:] for k, v in bag.import_errors.items()},
        "seconds": time.perf_counter() - t0,
        "heavy_modules": heavy,
        "dag": None if d is None else {
            "tasks": sorted(t.task_id for t in d.tasks),
            "retries": [t.retries for t in d.tasks],
            "params": {k: d.params[k] for k in d.params.keys()},
            "schedule": type(d.timetable).__name__,
            "tags": sorted(d.tags),
            "doc": bool(d.doc_md),
        },
    }))
    """
)


def test_dag_parses_without_io(tmp_path):
    home = tmp_path / "home"
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'airflow.db'}",
        "IMAGEINDEX_HOME": str(home),
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(DAG_FILE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == {}
    # No model, plotting or evaluation code is imported, and nothing is built, at parse time.
    assert result["heavy_modules"] == []
    assert not home.exists()
    assert result["seconds"] < 20
    dag = result["dag"]
    assert dag["tasks"] == ["evaluate", "model_names", "prepare", "report"]
    assert dag["params"] == {
        "data_dir": "",
        "models": ["offline", "filename"],
        "out_dir": "",
        "ks": [1, 5, 10, 50, 100],
        "prompt": "a photo of a {tag}",
    }
    assert dag["schedule"] == "NullTimetable"  # schedule=None: triggered by hand
    assert "imageindex" in dag["tags"] and dag["doc"]
    assert all(r >= 1 for r in dag["retries"])


RUNNER = textwrap.dedent(
    """
    import importlib.util, json, sys
    spec = importlib.util.spec_from_file_location("imageindex_eval", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dr = module.eval_dag.test(run_conf=json.loads(sys.argv[2]))
    tries = {
        ti.task_id: [getattr(ti.state, "value", ti.state), ti.try_number]
        for ti in dr.get_task_instances()
    }
    print(f"TASK_TRIES={json.dumps(tries)}", flush=True)
    print(f"DAGRUN_STATE={getattr(dr.state, 'value', dr.state)}", flush=True)
    """
)


def task_tries(output: str) -> dict[str, list]:
    """``{task_id: [state, try_number]}`` that RUNNER printed for the run."""
    for line in output.splitlines():
        if line.startswith("TASK_TRIES="):
            return json.loads(line.split("=", 1)[1])
    raise AssertionError(f"no TASK_TRIES line in the output: {output[-3000:]}")


def run_eval_dag(env: dict, conf: dict) -> tuple[str | None, str]:
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(DAG_FILE), json.dumps(conf)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    state = None
    for line in proc.stdout.splitlines():
        if line.startswith("DAGRUN_STATE="):
            state = line.split("=", 1)[1]
    return state, proc.stdout + proc.stderr


@pytest.mark.slow
def test_dag_run_evaluates_models_and_reports(tmp_path):
    from imageindex.evaluation import sample_labels

    if not sample_labels():
        pytest.skip("no sample photos installed (see requirements.txt)")
    for module in ("torch", "onnxruntime", "sentence_transformers"):
        pytest.importorskip(module)
    var = tmp_path / "var"
    env = airflow_env(var, IMAGEINDEX_REGISTRY=str(tmp_path / "no-registry.yaml"))
    migrate(env)
    out = tmp_path / "out"
    # data_dir empty: the built-in set is built under $IMAGEINDEX_HOME/eval/data.
    state, output = run_eval_dag(env, {"models": ["filename", "offline"], "out_dir": str(out)})
    assert state == "success", output[-5000:]
    assert (var / "eval" / "data" / "dataset.jsonl").is_file()
    report = json.loads((out / "summary.json").read_text())
    assert list(report["models"]) == ["filename", "offline"]
    for model in ("filename", "offline"):
        m = report["models"][model]
        assert set(m["precision"]) == {"1", "5", "10", "50", "100"}
        assert m["images"] == report["images"] > 0
        assert (out / model / "per_tag.log").is_file()
        assert (out / model / "per_tag.jsonl").is_file()
    assert (
        report["models"]["offline"]["precision"]["1"]
        > report["models"]["filename"]["precision"]["1"]
    )
    assert (out / "precision_at_k.png").read_bytes()[:4] == b"\x89PNG"

    # A model name that does not exist fails the run in prepare, without retries (prepare has
    # retries=1: only AirflowFailException skips the second try), and nothing runs after it.
    state, output = run_eval_dag(env, {"models": ["clip"], "out_dir": str(tmp_path / "out2")})
    assert state == "failed"
    assert "model 'clip' is unknown" in output
    tries = task_tries(output)
    assert tries["prepare"] == ["failed", 1], tries
    assert all(s == "upstream_failed" for t, (s, _) in tries.items() if t != "prepare"), tries
    assert not (tmp_path / "out2").exists()
