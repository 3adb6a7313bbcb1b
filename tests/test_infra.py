"""infra/ and prefect.yaml: what can be checked without Docker or a cluster."""

from __future__ import annotations

import json
import re

import yaml

from flows.deploy import NIGHTLY, RETRAIN, WATCH
from tasks.core.config import load_params


def _prefect_yaml(repo) -> dict:
    return yaml.safe_load((repo / "prefect.yaml").read_text())


def test_prefect_yaml_declares_the_served_deployments_for_both_pools(repo):
    deployments = {d["name"]: d for d in _prefect_yaml(repo)["deployments"]}
    for name in (RETRAIN, NIGHTLY, WATCH):
        assert deployments[name]["work_pool"]["name"] == "ratchet-process"
        assert deployments[f"{name}-k8s"]["work_pool"]["name"] == "ratchet-k8s"
    assert deployments[f"{RETRAIN}-k8s"]["work_pool"]["job_variables"]["gpu_count"] == 1
    assert deployments[f"{NIGHTLY}-k8s"]["parameters"]["retrain_deployment"] == f"{RETRAIN}-k8s"


def test_prefect_yaml_entrypoints_are_flows_and_the_cron_matches_params(repo):
    from prefect.flows import load_flow_from_entrypoint

    ops = load_params(repo / "params.yaml").ops
    for deployment in _prefect_yaml(repo)["deployments"]:
        path, _, name = deployment["entrypoint"].partition(":")
        assert load_flow_from_entrypoint(f"{repo / path}:{name}").name in {"retrain", "sweep-landing"}
        for schedule in deployment.get("schedules") or []:
            if "cron" in schedule:
                assert (schedule["cron"], schedule["timezone"]) == (ops.schedule_cron, ops.timezone)
            else:
                assert schedule["interval"] == ops.watch_interval_seconds


def test_k8s_job_template_has_gpu_node_selector_tolerations_and_defaults(repo):
    template = json.loads((repo / "infra" / "k8s" / "base-job-template.json").read_text())
    variables = template["variables"]["properties"]
    used = set(re.findall(r"{{\s*(\w+)\s*}}", json.dumps(template["job_configuration"])))
    assert used <= set(variables), used - set(variables)  # every placeholder is a declared variable
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert pod["nodeSelector"] == "{{ node_selector }}" and pod["tolerations"] == "{{ tolerations }}"
    assert variables["tolerations"]["default"][0]["key"] == "nvidia.com/gpu"


def test_k8s_manifests_are_resources(repo):
    docs = [d for d in yaml.safe_load_all((repo / "infra" / "k8s" / "worker.yaml").read_text()) if d]
    assert all(d["apiVersion"] and d["kind"] and d["metadata"]["name"] for d in docs)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "PersistentVolumeClaim", "Role", "RoleBinding", "ServiceAccount"} <= kinds


def test_compose_has_server_on_postgres_minio_worker_and_gpu_profile(repo):
    compose = yaml.safe_load((repo / "infra" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "prefect-server", "minio", "worker", "gpu-worker"} <= set(services)
    assert "postgresql+asyncpg://" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert services["gpu-worker"]["profiles"] == ["gpu"]
    assert services["gpu-worker"]["build"]["args"]["VARIANT"] == "cuda"
    assert services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_dockerfile_builds_cpu_and_cuda_from_one_arg(repo):
    text = (repo / "infra" / "Dockerfile").read_text()
    assert "ARG VARIANT=cpu" in text and "AS base-cpu" in text and "AS base-cuda" in text
    assert "FROM base-${VARIANT}" in text


def test_compose_guards_the_prefect_api_and_the_model_server(repo):
    compose = yaml.safe_load((repo / "infra" / "docker-compose.yml").read_text())
    services = compose["services"]
    server_auth = services["prefect-server"]["environment"]["PREFECT_SERVER_API_AUTH_STRING"]
    assert server_auth.startswith("${PREFECT_AUTH_STRING:?")  # no default password: unset refuses to start
    assert services["worker"]["environment"]["PREFECT_API_AUTH_STRING"] == server_auth
    model = services["model-server"]
    assert model["entrypoint"][:2] == ["ratchet", "serve-model"] and "0.0.0.0" in model["entrypoint"]
    assert model["environment"]["RATCHET_SERVE_TOKEN"].startswith("${RATCHET_SERVE_TOKEN:?")


def test_prefect_yaml_retrain_deployments_carry_the_landed_trigger_the_code_builds(repo, tmp_path):
    """prefect.yaml's triggers parse as Prefect's own DeploymentEventTrigger and ask what
    flows/deploy.py landed_trigger asks (the resource by its path label, not its hash)."""
    from prefect.events import DeploymentEventTrigger

    from flows import events
    from flows.deploy import landed_trigger

    code = landed_trigger(tmp_path)
    deployments = {d["name"]: d for d in _prefect_yaml(repo)["deployments"]}
    for name, path in ((RETRAIN, "{{ $RATCHET_WORKSPACE }}"), (f"{RETRAIN}-k8s", "/workspace")):
        (raw,) = deployments[name]["triggers"]
        assert raw.pop("type") == "event"
        trigger = DeploymentEventTrigger(**raw)
        assert trigger.expect == code.expect == {events.LANDED}
        assert trigger.parameters == code.parameters == {"batch": "{{ event.payload.file }}"}
        match, ours = trigger.match.root, code.match.root
        assert match[events.START_RUN] == ours[events.START_RUN] == "true"
        assert match["prefect.resource.id"] == "ratchet.workspace.*" and match["ratchet.workspace.path"] == path
        assert events.workspace_resource(tmp_path)["prefect.resource.id"].startswith("ratchet.workspace.")
    for name in (NIGHTLY, WATCH):
        assert "triggers" not in deployments[name]


def test_the_kubernetes_retrain_trains_one_process_per_gpu(repo):
    retrain = {d["name"]: d for d in _prefect_yaml(repo)["deployments"]}[f"{RETRAIN}-k8s"]
    assert retrain["parameters"]["overrides"]["train.processes"] == retrain["work_pool"]["job_variables"]["gpu_count"]
    assert retrain["parameters"]["workspace"] == "/workspace"
