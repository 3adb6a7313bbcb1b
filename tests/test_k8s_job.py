"""The Kubernetes path as far as this machine goes (no cluster): prefect-kubernetes's own
worker code renders infra/k8s/base-job-template.json with the `ratchet-retrain-k8s`
deployment's job variables into the Job a flow run would get, for 1 and for N GPUs, and
that Job is a valid `batch/v1` Job for the official client's models (kubernetes_asyncio):
every field known (a misspelt one would be dropped on the round trip), the required ones
present, the GPUs requested and limited, the workspace PVC and /dev/shm mounted."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
import yaml

pytest.importorskip("prefect_kubernetes", reason="the scale extra is not installed (pip install -e '.[scale]')")

from kubernetes_asyncio.client import ApiClient  # noqa: E402
from prefect.client.schemas.objects import FlowRun  # noqa: E402
from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration  # noqa: E402


class _Response:
    def __init__(self, body: dict):
        self.data = json.dumps(body)


def rendered_job(repo, gpus: int) -> dict:
    template = json.loads((repo / "infra" / "k8s" / "base-job-template.json").read_text())
    deployment = {d["name"]: d for d in yaml.safe_load((repo / "prefect.yaml").read_text())["deployments"]}
    values = {**deployment["ratchet-retrain-k8s"]["work_pool"]["job_variables"], "gpu_count": gpus,
              "image": "registry.example/ratchet:cuda"}
    config = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(template, values))
    config.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), name="brave-otter"))
    return config.job_manifest


def as_client_sees_it(manifest: dict) -> dict:
    async def round_trip() -> dict:
        async with ApiClient() as client:  # aiohttp: only inside an event loop
            job = client.deserialize(_Response(manifest), "V1Job")  # required fields are checked here
            return client.sanitize_for_serialization(job)
    return asyncio.run(round_trip())


def strings(value):
    """Quantities as the API keeps them (an int GPU count is the string "2")."""
    if isinstance(value, dict):
        return {k: strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strings(v) for v in value]
    return value if isinstance(value, (str, bool)) or value is None else str(value)


@pytest.mark.parametrize("gpus", [1, 4])
def test_the_retrain_job_renders_into_a_valid_kubernetes_job(repo, prefect_server, gpus):
    manifest = rendered_job(repo, gpus)
    expected = json.loads(json.dumps(manifest))
    # prefect-kubernetes's worker requires these two in the pod spec (its own default template
    # has them there); they are not PodSpec fields, and the API server drops them
    for key in ("parallelism", "completions"):
        assert expected["spec"]["template"]["spec"].pop(key) == 1
    assert strings(as_client_sees_it(manifest)) == strings(expected)  # no other field the API would drop
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    resources = container["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == gpus
    assert {v["name"] for v in pod["volumes"]} == {"workspace", "dshm"} and pod["restartPolicy"] == "Never"
    assert container["image"] == "registry.example/ratchet:cuda" and container["args"][:3] == ["prefect", "flow-run",
                                                                                                 "execute"]
    assert manifest["apiVersion"] == "batch/v1" and manifest["kind"] == "Job"
