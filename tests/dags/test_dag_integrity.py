"""DAG integrity: the dags folder imports cleanly and dogs_cats is wired as designed."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk.exceptions import ParamValidationError

from core.settings import RunConfig
from harness.data import REPO_ROOT
from pipeline.pods import ImageBuildPodOperator, TrainingPodOperator

DAGS = REPO_ROOT / "dags"


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return DagBag(dag_folder=str(DAGS))


def test_dags_import_without_errors(dagbag: DagBag) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {"dogs_cats"}


def test_dag_is_manual_with_owner_and_docs(dagbag: DagBag) -> None:
    dag = dagbag.dags["dogs_cats"]
    assert dag.schedule is None
    assert dag.catchup is False
    assert "data_bucket" in str(dag.doc_md)
    assert "platform:local" in dag.tags
    assert all(task.owner == "dogs-cats-triton" for task in dag.tasks)
    assert all(task.retries == 1 for task in dag.tasks), "every task is idempotent, so retried once"


PLAN_DOWNSTREAM = sorted(
    {"classify_shard", "list_shards", "merge_predictions", "package", "quality_gate", "stage_data", "train"}
)


def test_task_graph_flows_one_way(dagbag: DagBag) -> None:
    dag = dagbag.dags["dogs_cats"]
    downstream = {task.task_id: sorted(task.downstream_task_ids) for task in dag.tasks}
    assert downstream == {
        "plan": PLAN_DOWNSTREAM,
        "stage_data": ["merge_predictions", "train"],
        "train": ["quality_gate"],
        "quality_gate": ["package"],
        "package": ["deploy"],
        "deploy": ["classify_shard", "list_shards", "merge_predictions"],
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
    assert params.get_param("epochs").value == 5
    assert params.get_param("platform").schema["enum"] == ["local"]


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({}, "data_bucket"),
        ({"data_bucket": 5}, "5 is not of type 'string'"),
        ({"data_bucket": "/b", "epochs": 0}, "0 is less than the minimum of 1"),
        (
            {"data_bucket": "/b", "model": "resnet"},
            "'resnet' is not one of ['efficientnet_lite0', 'small', 'xception']",
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


def test_kubernetes_platform_trains_in_a_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOGS_CATS_PLATFORM", "kubernetes")
    dag = DagBag(dag_folder=str(DAGS)).dags["dogs_cats"]
    assert isinstance(dag.get_task("train"), TrainingPodOperator)
    assert isinstance(dag.get_task("build_image"), ImageBuildPodOperator)
    # package -> build_context -> build_image -> deploy (rollout) -> list_shards -> classify_shard[]
    assert dag.get_task("build_context").upstream_task_ids == {"package", "plan"}
    assert dag.get_task("build_image").upstream_task_ids == {"build_context"}
    assert dag.get_task("deploy").upstream_task_ids == {"build_image", "build_context", "package", "plan"}
    assert "deploy" in dag.get_task("list_shards").upstream_task_ids
    assert "platform:kubernetes" in dag.tags
    assert dag.params.get_param("platform").schema["enum"] == ["kubernetes"]


def test_dag_file_is_wiring_only() -> None:
    """Stage logic lives in the packages: the DAG file defines no helpers of its own."""
    source = Path(DAGS / "dogs_cats.py").read_text()
    assert "import tensorflow" not in source
    assert "subprocess" not in source
