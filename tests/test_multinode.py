"""Multi-node on one machine (ray.cluster_utils.Cluster): lose a node mid-trial, migrate by hand.

Worker nodes declare one GPU each and trials ask for one, so placement is by GPU even on a CPU-only
machine (the trainable then runs on the CPU). The module replaces the session's local Ray with a
cluster and gives it back afterwards, so test order does not matter.
"""

from __future__ import annotations

import json

import pytest

from runner.cli import main
from tests.test_preemption import _data, _outcome

from runner.config import parse_config
from runner.driver import Sweep

TRAINABLE = "examples.digits_torch:train"


@pytest.fixture(scope="module")
def cluster(request):
    import ray
    from ray.cluster_utils import Cluster

    from tests.conftest import REPO, start_local_ray

    had_local = ray.is_initialized()
    if had_local:
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "num_gpus": 0, "include_dashboard": False,
        "_system_config": {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                           "health_check_failure_threshold": 4}})
    nodes = [cluster.add_node(num_cpus=2, num_gpus=1) for _ in range(2)]
    import sys, os

    ray.init(address=cluster.address, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([REPO] + sys.path)}})
    cluster.wait_for_nodes()
    yield cluster, nodes
    ray.shutdown()
    cluster.shutdown()
    if had_local:
        start_local_ray()


def _gpu_run(run_dir, on_event=None):
    config = parse_config(_data(run_dir, TRAINABLE, resources={"cpu": 1, "gpu": 1}), "gpu.yaml")
    Sweep(config, on_event=on_event).run()


def test_trial_survives_losing_its_node_and_finishes_identically(cluster, tmp_path):
    cluster_, nodes = cluster
    _gpu_run(tmp_path / "straight")
    seen = {}

    def lose_node(kind, info):
        if kind == "placed":
            seen.setdefault("placed", []).append(info)
        if kind == "report" and info["step"] >= 50 and "removed" not in seen:
            node_id = seen["placed"][-1]["node_id"]
            victim = next(n for n in nodes if n.node_id == node_id)
            cluster_.remove_node(victim)
            seen["removed"] = node_id

    _gpu_run(tmp_path / "lossy", on_event=lose_node)
    assert _outcome(tmp_path / "lossy")[:3] == _outcome(tmp_path / "straight")[:3]
    first, second = seen["placed"][0], seen["placed"][-1]
    assert second["node_id"] != seen["removed"] == first["node_id"]
    assert all(len(p["accelerators"].get("GPU", [])) == 1 for p in seen["placed"])
    trial = _outcome(tmp_path / "lossy")[3][0]
    (entry,) = json.loads(trial["restart_log"])
    assert entry["from_node"] == seen["removed"] and entry["to_node"] == second["node_id"]
    assert entry["from_step"] == 40  # the last checkpoint before the loss (checkpoint_every: 20)
    cluster_.add_node(num_cpus=2, num_gpus=1)  # give the next test its two GPU nodes back
    cluster_.wait_for_nodes()


def test_migrate_moves_a_running_trial_to_the_named_node(cluster, tmp_path):
    import ray

    run_dir = tmp_path / "migrated"
    seen = {}

    def migrate(kind, info):
        if kind == "placed":
            seen.setdefault("placed", []).append(info)
        if kind == "report" and info["step"] >= 40 and "target" not in seen:
            here = seen["placed"][-1]["node_id"]
            target = next(n["NodeID"] for n in ray.nodes()
                          if n["Alive"] and n["NodeID"] != here and n["Resources"].get("GPU"))
            seen["target"] = target
            assert main(["migrate", str(run_dir), "0", "--to", target]) == 0

    _gpu_run(run_dir, on_event=migrate)
    _gpu_run(tmp_path / "straight")
    assert _outcome(run_dir)[:3] == _outcome(tmp_path / "straight")[:3]
    assert seen["placed"][-1]["node_id"] == seen["target"]
    (entry,) = json.loads(_outcome(run_dir)[3][0]["restart_log"])
    assert entry["kind"] == "migrate" and entry["to_node"] == seen["target"]
