"""cluster/: launcher YAMLs pass Ray's own schema, KubeRay manifests carry what KubeRay needs."""

import importlib.util
import json
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
KUBERAY = ROOT / "cluster" / "kuberay"


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_config_passes_rays_schema_and_autoscales_8_gpu_training_from_zero(name):
    config = _load(ROOT / "cluster" / name)
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(config))  # what `ray up` runs after filling in defaults
    train = config["available_node_types"]["gpu_train_8xa100"]
    assert train["resources"]["GPU"] == 8 and train["min_workers"] == 0 and train["max_workers"] >= 1
    infer = config["available_node_types"]["gpu_infer"]
    assert infer["resources"]["GPU"] >= 1 and infer["min_workers"] == 0
    assert config["head_node_type"] == "head" and config["available_node_types"]["head"]["resources"].get("GPU", 0) == 0
    assert config["idle_timeout_minutes"] > 0 and config["docker"]["image"]


def _check_cluster_spec(spec: dict) -> None:
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] and "rayStartParams" in spec["headGroupSpec"]
    assert spec["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    for group in groups.values():
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1
    assert int(groups["gpu-train-8xa100"]["template"]["spec"]["containers"][0]["resources"]["limits"][
        "nvidia.com/gpu"]) == 8


def test_raycluster_has_head_and_autoscaling_gpu_worker_groups():
    manifest = _load(KUBERAY / "raycluster.yaml")
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayCluster")
    _check_cluster_spec(manifest["spec"])


def test_rayjob_trains_the_xl_preset_on_the_same_cluster():
    manifest = _load(KUBERAY / "rayjob.yaml")
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayJob")
    entrypoint = manifest["spec"]["entrypoint"].split()
    assert entrypoint[:4] == ["python", "jobs/train.py", "--config", "jobs/configs/flan-t5-xl.yaml"]
    # the model it exports is the one the RayService serves
    out = entrypoint[entrypoint.index("--out") + 1]
    assert f"{out}/model" == _load(ROOT / "serve" / "app.gpu.yaml")["applications"][0]["args"]["urg"]["model"]
    assert (ROOT / "jobs" / "configs" / "flan-t5-xl.yaml").is_file()
    assert manifest["spec"]["rayClusterSpec"] == _load(KUBERAY / "raycluster.yaml")["spec"]
    _check_cluster_spec(manifest["spec"]["rayClusterSpec"])


def test_rendered_manifests_do_not_drift_from_their_sources():
    spec = importlib.util.spec_from_file_location("render", KUBERAY / "render.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    for name, make in render.OUTPUTS.items():
        assert (KUBERAY / name).read_text() == make(), f"{name} is stale: run python cluster/kuberay/render.py"
