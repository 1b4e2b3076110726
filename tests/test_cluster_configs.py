"""cluster/: the launcher configs pass the schema that ships with Ray, the KubeRay manifests are
what they claim, no file holds a secret, and the local multi-node script starts and stops a real
cluster."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import jsonschema
import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(REPO, "cluster")
LAUNCHER_CONFIGS = ("aws.yaml", "gcp.yaml")


def _load(name: str):
    with open(os.path.join(CLUSTER, name)) as f:
        return yaml.safe_load(f)


def _ray_schema() -> dict:
    import ray

    with open(os.path.join(os.path.dirname(ray.__file__), "autoscaler", "ray-schema.json")) as f:
        return json.load(f)


def _pinned(package: str) -> str:
    with open(os.path.join(REPO, "constraints.txt")) as f:
        return re.search(rf"^{package}==(\S+)$", f.read(), re.MULTILINE | re.IGNORECASE).group(1)


# --- cluster launcher configs (ray up) ---

@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_passes_rays_schema_and_checks(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _load(name)
    jsonschema.validate(config, _ray_schema())
    validate_config(prepare_config(config))  # what `ray up` runs before it calls the cloud


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_has_a_cpu_head_and_spot_gpu_workers(name):
    config = _load(name)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert "GPU" not in head["resources"] and head["resources"].get("CPU") == 0
    workers = [t for n, t in types.items() if n != config["head_node_type"]]
    assert workers and all(t["resources"].get("GPU", 0) >= 1 and t.get("min_workers", 0) == 0
                           for t in workers)
    for worker in workers:
        node = worker["node_config"]
        if config["provider"]["type"] == "aws":
            assert node["InstanceMarketOptions"]["MarketType"] == "spot"
        else:
            assert {"preemptible": True} in node["scheduling"] \
                or {"provisioningModel": "SPOT"} in node["scheduling"]
            assert node["guestAccelerators"][0]["acceleratorCount"] >= 1


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_installs_the_project_and_starts_ray(name):
    config = _load(name)
    assert config["file_mounts"]["~/sweep"] == "."
    assert any("pip install" in c and "-c constraints.txt -e" in c
               for c in config["setup_commands"])
    head_start = " ".join(config["head_start_ray_commands"])
    assert "ray start --head" in head_start and "--dashboard-host=127.0.0.1" in head_start
    assert "ray start --address=$RAY_HEAD_IP:6379" in " ".join(config["worker_start_ray_commands"])
    assert all("RAY_AUTH_MODE=token" in c for c in
               config["head_start_ray_commands"][1:] + config["worker_start_ray_commands"][1:])
    # The nodes' Ray is the one the project pins (a driver and its cluster must agree).
    for image in (config["docker"]["head_image"], config["docker"]["worker_image"]):
        assert image.startswith(f"rayproject/ray:{_pinned('ray')}-py311-")


# --- KubeRay ---

def _kuberay():
    with open(os.path.join(CLUSTER, "kuberay.yaml")) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    assert all(d["apiVersion"] == "ray.io/v1" for d in docs)
    assert sorted(d["kind"] for d in docs) == ["RayCluster", "RayJob"]
    return {d["kind"]: d for d in docs}


def _containers(cluster: dict) -> list[dict]:
    spec = cluster["spec"]
    groups = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_kuberay_job_runs_sweep_on_the_cluster():
    docs = _kuberay()
    job = docs["RayJob"]["spec"]
    assert re.search(r"\bsweep run sweeps/\S+\.yaml --address auto\b", job["entrypoint"])
    config = re.search(r"sweeps/\S+\.yaml", job["entrypoint"]).group(0)
    assert os.path.exists(os.path.join(REPO, config))
    assert job["clusterSelector"]["ray.io/cluster"] == docs["RayCluster"]["metadata"]["name"]


def test_kuberay_gpu_workers_and_head_without_trials():
    spec = _kuberay()["RayCluster"]["spec"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if any(c["resources"]["limits"].get("nvidia.com/gpu", 0) >= 1
                         for c in g["template"]["spec"]["containers"])]
    assert gpu_groups and all(g["minReplicas"] == 0 for g in gpu_groups)


def test_kuberay_credentials_only_through_secrets():
    cluster = _kuberay()["RayCluster"]
    head_env = {e["name"]: e for e in cluster["spec"]["headGroupSpec"]["template"]["spec"]
                ["containers"][0]["env"]}
    assert head_env["SWEEP_DB_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"]
    for container in _containers(cluster):
        for env in container.get("env", []):
            if re.search(r"PASSWORD|SECRET|TOKEN|KEY", env["name"]):
                assert "value" not in env and "secretKeyRef" in env["valueFrom"], env["name"]


# --- secrets ---

SECRET_PATTERNS = {
    "AWS access key id": r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",
    "private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----|\"private_key\"\s*:",
    "password in a URL": r"\b[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@$]+@",
    "literal credential": r"(?i)(password|passwd|secret|token|access[_-]?key)[\w-]*\s*[:=]\s*"
                          r"[\"']?(?![\"'$]|\{|valueFrom)[A-Za-z0-9/+_.-]{8,}",
}


def test_no_file_in_cluster_holds_a_secret():
    names = sorted(os.listdir(CLUSTER))
    assert {"aws.yaml", "gcp.yaml", "kuberay.yaml", "local.sh"} <= set(names)
    for name in names:
        with open(os.path.join(CLUSTER, name)) as f:
            text = f.read()
        for what, pattern in SECRET_PATTERNS.items():
            found = re.search(pattern, text)
            assert not found, f"cluster/{name}: looks like a {what}: {found.group(0)!r}"


def test_secret_patterns_catch_secrets():
    samples = ["aws_access_key_id = AKIAABCDEFGHIJKLMNOP", "password: hunter2hunter2",
               "postgresql://sweep:hunter2@db:5432/sweep", "SWEEP_DB_PASSWORD=s3cr3tvalue",
               "-----BEGIN RSA PRIVATE KEY-----"]
    for sample in samples:
        assert any(re.search(p, sample) for p in SECRET_PATTERNS.values()), sample


# --- the local multi-node cluster script ---

def _script(*args: str, env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", os.path.join(CLUSTER, "local.sh"), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


CHECK = """
import json, sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR")
nodes = [n for n in ray.nodes() if n["Alive"]]
@ray.remote(num_gpus=1)
def where():
    import os, time
    time.sleep(1)  # hold the GPU so that the two tasks run on the two workers
    return ray.get_runtime_context().get_node_id(), os.environ.get("CUDA_VISIBLE_DEVICES")
print(json.dumps({"nodes": len(nodes), "gpus": sum(n["Resources"].get("GPU", 0) for n in nodes),
                  "head_cpus": [n["Resources"].get("CPU", 0) for n in nodes
                                if "node:__internal_head__" in n["Resources"]],
                  "tasks": ray.get([where.remote() for _ in range(2)])}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the script reads Linux ps")
def test_local_cluster_script_starts_three_nodes_and_stops_only_its_own():
    """Runs everything in subprocesses: this pytest process's own Ray (if any) is not touched.

    A second, bystander cluster runs meanwhile; stopping the first must leave it alive.
    """
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    # A driver joins a multi-node cluster with cluster mode on (the suite turns it off for its
    # single-host Ray), and by the address it is given.
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    env.pop("RAY_ADDRESS", None)
    if os.path.exists(ray_bin):
        env["RAY"] = ray_bin
    # Short paths: Ray's Unix sockets live under the cluster dir (107-character limit).
    cluster, bystander = (tempfile.mkdtemp(prefix="sc-", dir="/tmp") for _ in range(2))
    try:
        started = _script("start", "-w", "2", "-d", cluster, env=env)
        assert started.returncode == 0, started.stdout + started.stderr
        assert _script("start", "-w", "0", "-d", bystander, env=env).returncode == 0
        address = _script("address", "-d", cluster, env=env).stdout.strip()
        assert re.fullmatch(r"127\.0\.0\.1:\d+", address)
        assert _script("start", "-d", cluster, env=env).returncode == 1  # already running

        check = subprocess.run([sys.executable, "-c", CHECK, address], env=env,
                               capture_output=True, text=True, timeout=180)
        assert check.returncode == 0, check.stderr
        seen = json.loads(check.stdout.strip().splitlines()[-1])
        assert seen["nodes"] == 3 and seen["gpus"] == 2 and seen["head_cpus"] == [0]
        (node_a, gpu_a), (node_b, gpu_b) = seen["tasks"]
        assert node_a != node_b and gpu_a == gpu_b == "0"

        stopped = _script("stop", "-d", cluster, env=env, timeout=120)
        assert stopped.returncode == 0, stopped.stderr
        assert _script("address", "-d", cluster, env=env).returncode == 1
        left = subprocess.run(["ps", "-ww", "-eo", "args="], capture_output=True, text=True).stdout
        assert cluster + "/" not in left
        assert _script("address", "-d", bystander, env=env).returncode == 0
    finally:
        for d in (cluster, bystander):
            _script("stop", "-d", d, env=env, timeout=120)
            shutil.rmtree(d, ignore_errors=True)
