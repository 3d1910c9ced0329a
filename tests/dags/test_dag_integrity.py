"""DAG integrity: the dags folder imports cleanly and both DAGs are wired as designed."""

from __future__ import annotations

import ast
import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk.exceptions import ParamValidationError

from core.settings import BatchRunConfig, RunConfig
from harness.data import REPO_ROOT
from pipeline import assets
from pipeline.pods import ImageBuildPodOperator, TrainingPodOperator
from pipeline.rollout_operator import RolloutOperator
from pipeline.serving_wake import WakeOperator

DAGS = REPO_ROOT / "dags"


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return DagBag(dag_folder=str(DAGS))


def test_dags_import_without_errors(dagbag: DagBag) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {"dogs_cats", "dogs_cats_batch"}


@pytest.mark.parametrize("dag_file", ["dogs_cats.py", "dogs_cats_batch.py"])
def test_a_local_dag_parses_without_the_kubernetes_or_gcs_libraries(dag_file: str) -> None:
    """Every task parses its DAG file before it runs: the cncf.kubernetes provider and
    google-cloud-storage took 0.8 of the 1.0 s each batch task paid for that (benchmarks/README.md)."""
    heavy = ["airflow.providers.cncf.kubernetes.operators.pod", "kubernetes.client", "google.cloud.storage"]
    code = (
        f"import runpy, sys; runpy.run_path({str(DAGS / dag_file)!r}); "
        f"print([name for name in {heavy!r} if name in sys.modules])"
    )
    parsed = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True, text=True, check=True, cwd=REPO_ROOT,
        env={**os.environ, "DOGS_CATS_PLATFORM": "local"},
    )  # fmt: skip
    assert parsed.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(
    ("dag_id", "documented"), [("dogs_cats", "data_bucket"), ("dogs_cats_batch", "input")]
)
def test_dags_have_owner_docs_and_retries(dagbag: DagBag, dag_id: str, documented: str) -> None:
    dag = dagbag.dags[dag_id]
    assert dag.catchup is False
    assert documented in str(dag.doc_md)
    assert "platform:local" in dag.tags
    assert all(task.owner == "dogs-cats-triton" for task in dag.tasks)
    assert all(task.retries == 1 for task in dag.tasks), "every task is idempotent, so retried once"


def test_the_main_dag_is_manual_and_the_batch_dag_follows_deployments(dagbag: DagBag) -> None:
    assert dagbag.dags["dogs_cats"].schedule is None
    batch = dagbag.dags["dogs_cats_batch"]
    assert batch.timetable.asset_condition == assets.SERVED_MODEL


def test_each_stage_declares_the_asset_it_writes(dagbag: DagBag) -> None:
    dag = dagbag.dags["dogs_cats"]
    outlets = {task.task_id: task.outlets for task in dag.tasks if task.outlets}
    assert outlets == {
        "stage_data": [assets.DATASET],
        "train": [assets.MODEL],
        "package": [assets.REPOSITORY_VERSION],
        "deploy": [assets.SERVED_MODEL],
        "merge_predictions": [assets.PREDICTIONS],
    }
    assert dagbag.dags["dogs_cats_batch"].get_task("merge_predictions").outlets == [assets.PREDICTIONS]


def _callable(task: Any) -> Any:
    """The function a TaskFlow task runs (mapped or not; the operator types do not declare it)."""
    return task.python_callable


def test_both_dags_run_the_same_batch_tasks(dagbag: DagBag) -> None:
    shared = ("list_shards", "classify_shard", "merge_predictions")
    for task_id in shared:
        main, batch = (dagbag.dags[dag_id].get_task(task_id) for dag_id in ("dogs_cats", "dogs_cats_batch"))
        assert _callable(main) is _callable(batch), task_id
    batch_downstream = {
        t.task_id: sorted(t.downstream_task_ids) for t in dagbag.dags["dogs_cats_batch"].tasks
    }
    assert batch_downstream == {
        "plan_batch": sorted(shared),
        "list_shards": ["classify_shard"],
        "classify_shard": ["merge_predictions"],
        "merge_predictions": [],
    }


PLAN_DOWNSTREAM = sorted(
    {"challenge_champion", "package", "plan_batch", "quality_gate", "stage_data", "train"}
)


def test_task_graph_flows_one_way(dagbag: DagBag) -> None:
    dag = dagbag.dags["dogs_cats"]
    downstream = {task.task_id: sorted(task.downstream_task_ids) for task in dag.tasks}
    assert downstream == {
        "plan": PLAN_DOWNSTREAM,
        "stage_data": ["plan_batch", "train"],
        "train": ["quality_gate"],
        "quality_gate": ["package"],
        "package": ["challenge_champion"],
        "challenge_champion": ["deploy"],
        "deploy": ["plan_batch"],
        "plan_batch": ["classify_shard", "list_shards", "merge_predictions"],
        "list_shards": ["classify_shard"],
        "classify_shard": ["merge_predictions"],
        "merge_predictions": [],
    }


def test_batch_inference_is_mapped_over_shards(dagbag: DagBag) -> None:
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    dag = dagbag.dags["dogs_cats"]
    assert isinstance(dag.get_task("classify_shard"), MappedOperator)
    assert dag.get_task("classify_shard").max_active_tis_per_dagrun == 4


def test_params_are_the_run_config(dagbag: DagBag) -> None:
    params = dagbag.dags["dogs_cats"].params
    assert set(params.keys()) == set(RunConfig.model_fields)
    assert params.get_param("data_bucket").schema["type"] == "string"
    assert params.get_param("epochs").value == 0  # sized from the training set
    # Its default follows the model: empty in the form, filled in by RunConfig.
    assert params.get_param("fine_tune_epochs").value is None
    assert params.get_param("fine_tune_epochs").schema["type"] == ["null", "integer"]
    assert params.get_param("platform").schema["enum"] == ["local"]


def test_batch_params_default_to_the_standing_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOGS_CATS_BATCH_INPUT", "/standing/input")
    params = DagBag(dag_folder=str(DAGS)).dags["dogs_cats_batch"].params
    assert set(params.keys()) == set(BatchRunConfig.model_fields)
    assert params.get_param("input").value == "/standing/input"
    assert params.get_param("output").value is None  # no standing output: the run is skipped
    assert params.get_param("inference_protocol").schema["enum"] == ["http", "grpc"]


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({}, "data_bucket"),
        ({"data_bucket": 5}, "5 is not of type 'string'"),
        ({"data_bucket": "/b", "epochs": -1}, "-1 is less than the minimum of 0"),
        ({"data_bucket": "/b", "fine_tune_epochs": "one"}, "'one' is not of type 'null', 'integer'"),
        (
            {"data_bucket": "/b", "model": "resnet"},
            "'resnet' is not one of ['efficientnet_lite0', 'efficientnet_lite1', 'efficientnet_lite2', "
            "'small', 'xception']",
        ),
        ({"data_bucket": "/b", "platform": "kubernetes"}, "'kubernetes' is not one of ['local']"),
        ({"data_bucket": "/b", "dataset_name": "../up"}, "does not match"),
    ],
)
def test_bad_conf_is_refused_with_the_params_message(dagbag: DagBag, conf: dict, message: str) -> None:
    params = copy.deepcopy(dagbag.dags["dogs_cats"].params)

    def trigger_with(conf: dict) -> None:  # what the API does with a trigger's conf
        params.update(conf)
        params.validate()

    with pytest.raises(ParamValidationError, match="Invalid input for param") as raised:
        trigger_with(conf)
    assert message in str(raised.value)


def _deferrable(task: Any) -> bool:
    return bool(task.deferrable)  # the pod and rollout operators' own attribute


def test_kubernetes_platform_trains_in_a_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOGS_CATS_PLATFORM", "kubernetes")
    dag = DagBag(dag_folder=str(DAGS)).dags["dogs_cats"]
    assert isinstance(dag.get_task("train"), TrainingPodOperator)
    assert isinstance(dag.get_task("build_image"), ImageBuildPodOperator)
    assert isinstance(dag.get_task("deploy"), RolloutOperator)
    # The long waits run in the triggerer, not in worker slots.
    assert all(_deferrable(dag.get_task(task)) for task in ("train", "build_image", "deploy"))
    # package -> challenge_champion -> build_context -> build_image -> deploy (rollout) -> list_shards
    assert dag.get_task("build_context").upstream_task_ids == {"challenge_champion", "plan"}
    assert dag.get_task("build_image").upstream_task_ids == {"build_context"}
    assert dag.get_task("deploy").upstream_task_ids == {
        "build_image",
        "build_context",
        "challenge_champion",
        "plan",
    }
    assert "deploy" in dag.get_task("plan_batch").upstream_task_ids
    assert "platform:kubernetes" in dag.tags
    assert dag.params.get_param("platform").schema["enum"] == ["kubernetes"]


@pytest.mark.parametrize(("dag_id", "after"), [("dogs_cats", {"deploy"}), ("dogs_cats_batch", set())])
def test_on_kubernetes_the_batch_stage_wakes_the_model_and_lets_it_go(
    monkeypatch: pytest.MonkeyPatch, dag_id: str, after: set[str]
) -> None:
    """A setup task before the stage's first task, a teardown after its last (which runs whatever
    the stage's outcome); locally the tritonserver just serves (test_task_graph_flows_one_way)."""
    monkeypatch.setenv("DOGS_CATS_PLATFORM", "kubernetes")
    dag = DagBag(dag_folder=str(DAGS)).dags[dag_id]
    wake, release = dag.get_task("wake_serving"), dag.get_task("release_serving")
    assert isinstance(wake, WakeOperator)
    assert (wake.is_setup, release.is_teardown) == (True, True)
    assert wake.upstream_task_ids == after
    assert "plan_batch" in wake.downstream_task_ids
    assert release.upstream_task_ids == {"merge_predictions", "wake_serving"}


# What a DAG file may import: Airflow's authoring API, the settings and the orchestration layer.
WIRING_IMPORTS = ("__future__", "typing", "airflow.sdk", "core.settings", "pipeline.")
CONTROL_FLOW = (ast.If, ast.For, ast.While, ast.With, ast.Try, ast.Lambda, ast.ClassDef)


def wiring_problems(source: str) -> list[str]:
    """What in a DAG file is more than wiring: a function other than the one @dag, a task
    defined in place, control flow, or an import from a stage package."""
    problems = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.ImportFrom | ast.Import):
            modules = (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            )
            problems += [f"imports {m}" for m in modules if not m.startswith(WIRING_IMPORTS)]
        elif isinstance(node, ast.FunctionDef):
            names = [ast.unparse(d.func if isinstance(d, ast.Call) else d) for d in node.decorator_list]
            if names != ["dag"]:
                problems.append(f"def {node.name} decorated {names}: task bodies go in pipeline/tasks.py")
            problems += [
                f"{type(inner).__name__} in {node.name}"
                for inner in ast.walk(node)
                if inner is not node and isinstance(inner, (ast.FunctionDef, *CONTROL_FLOW))
            ]
        elif not isinstance(node, ast.Expr | ast.Assign | ast.AnnAssign):
            problems.append(f"{type(node).__name__} at line {node.lineno}")
    return problems


@pytest.mark.parametrize("dag_file", sorted(DAGS.glob("*.py")), ids=lambda path: path.name)
def test_dag_files_are_wiring_only(dag_file: Path) -> None:
    assert wiring_problems(dag_file.read_text()) == []


def test_task_logic_in_a_dag_file_is_found() -> None:
    source = (
        "from airflow.sdk import dag, task\nimport subprocess\nfrom training.train import train\n"
        "@task\ndef helper():\n    subprocess.run(['true'])\n"
        "@dag()\ndef d():\n    if True:\n        helper()\n"
        "for i in range(2):\n    pass\n"
    )
    assert wiring_problems(source) == [
        "imports subprocess",
        "imports training.train",
        "def helper decorated ['task']: task bodies go in pipeline/tasks.py",
        "If in d",
        "For at line 11",
    ]
