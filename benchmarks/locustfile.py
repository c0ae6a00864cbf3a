"""Locust users for the Bento service and for Triton direct, one item per request.

Both kinds of user send the same fixed local inputs (``benchmarks.workloads``: real sentences cut to
an exact token count, or seeded images), so a run of each at equal concurrency compares the stacks:

- ``BentoUser``: the service's JSON endpoint for the entry's task (``/embed`` for feature-extraction,
  ``/classify`` for text-classification, ``/predict`` with a base64 PNG for images). ``--host`` is the
  Bento URL, e.g. http://127.0.0.1:3000.
- ``InfinityUser``: the Infinity peer's OpenAI-style ``POST /embeddings`` (``{"model": NAME, "input":
  [TEXT]}``), the same texts (``benchmarks/peers``). The LitServe peer answers ``BentoUser``'s route.
- ``TritonUser``: Triton's KServe v2 HTTP ``/v2/models/<name>/infer`` with the tensors as JSON (token
  ids tokenized once, before the run: the client-side cost Bento takes on is not in this baseline).
  ``--host`` is Triton's HTTP URL, e.g. http://127.0.0.1:8000.

Every response is checked (status, and the shape of what came back); a wrong one counts as a failure.

Locust's ``-t`` clock: Locust schedules the end of the run with ``gevent.spawn_later(run_time)``, on
gevent's loop clock, which only moves when the loop runs. Everything Locust and this file do before the
loop first runs (imports, reading the workload, loading the tokenizer: 1-3 s on a busy machine) leaves
that clock behind the real time, and a ``-t 2s`` run ended after a fraction of a second, often before
its first request ("Locust recorded no request at 2 users"). So the inputs are loaded when Locust
initialises (its ``init`` event, before the run is scheduled), and the loop's clock is brought up to
date right after: the run then lasts what ``-t`` says, and the users start with their inputs ready.

Environment:
    MODELPACK_WORKLOAD    a workload of benchmarks.workloads (default ``minilm-short``)
    MODELPACK_REPOSITORY  the model repository holding the entry (default ``model_repository/``)
    MODELPACK_VERSION     pin a version (default: Bento's configured split / Triton's latest)
    MODELPACK_HIT_RATE    a workload with repeats, for the caches (text workloads): each request is one
                          of the workload's items with this probability, else an item never sent before
                          (its words, or token ids, shuffled and redrawn); unset: the items in turn

    locust -f benchmarks/locustfile.py --headless -u 8 -r 8 -t 30s --host http://127.0.0.1:3000 BentoUser
"""

import functools
import itertools
import json
import os
import random
import sys
from pathlib import Path

from locust import FastHttpUser, constant, events, task

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # locust puts only this file's folder on sys.path
    sys.path.insert(0, str(ROOT))


@functools.cache
def workload_data() -> dict:
    """The workload's items in both request forms, loaded once per Locust process."""
    from benchmarks.workloads import WORKLOADS, load_inputs
    from core.errors import InvalidArgument
    from core.repository import Repository
    from core.tasks import TASK_SPECS

    name = os.environ.get("MODELPACK_WORKLOAD", "minilm-short")
    if name not in WORKLOADS:
        raise InvalidArgument(
            f"MODELPACK_WORKLOAD={name!r} is not a workload; choose from {', '.join(WORKLOADS)}",
            field="workload",
        )
    workload = WORKLOADS[name]
    repository = Repository(os.environ.get("MODELPACK_REPOSITORY") or None)
    version = int(os.environ["MODELPACK_VERSION"]) if os.environ.get("MODELPACK_VERSION") else None
    manifest = repository.manifest(workload.model, version)
    inputs = load_inputs(workload, repository)
    output = manifest["outputs"][0]
    bento_route = TASK_SPECS[manifest["task"]].routes[0].path  # the task's one-item route
    bodies = inputs.http_bodies()
    if version is not None:
        bodies = [{**body, "version": version} for body in bodies]
    triton_bodies = [
        json.dumps(
            {
                "inputs": [
                    {
                        "name": key,
                        "shape": [1, *value.shape],
                        "datatype": "INT64" if value.dtype.kind == "i" else "FP32",
                        "data": value.reshape(-1).tolist(),
                    }
                    for key, value in item.items()
                ],
                "outputs": [{"name": output["name"]}],
            }
        )
        for item in inputs.tensors
    ]
    return {
        "model": workload.model,
        "version": version,
        "route": bento_route,
        "bodies": [json.dumps(b) for b in bodies],
        "infinity_bodies": [json.dumps({"model": workload.model, "input": [t]}) for t in inputs.texts or []],
        "triton_bodies": triton_bodies,
        "output": output["name"],
        "width": int(output["shape"][-1]),
        "kind": workload.kind,
        "texts": inputs.texts or [],
        "token_ids": [item["input_ids"].tolist() for item in inputs.tensors]
        if workload.kind == "text"
        else [],
    }


def body_stream(data: dict, triton: bool):
    """The items in turn, or with ``$MODELPACK_HIT_RATE`` a stream with repeats (benchmarks/workloads.py)."""
    from benchmarks.workloads import hit_rate, repeats

    rate = hit_rate(os.environ.get("MODELPACK_HIT_RATE"))
    if rate is None:
        return itertools.cycle(data["triton_bodies"] if triton else data["bodies"])
    return repeats(data, rate, triton, random.Random())


@events.init.add_listener
def load_workload(environment, **_kwargs) -> None:
    """Load the inputs now, before the run is scheduled, then bring gevent's loop clock up to date
    (see the module's docstring)."""
    import gevent

    workload_data()
    gevent.get_hub().loop.update_now()


class BentoUser(FastHttpUser):
    """POSTs one item per request to the service's endpoint for the entry's task."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.data = workload_data()
        self.bodies = body_stream(self.data, triton=False)

    @task
    def infer(self) -> None:
        route = self.data["route"]
        with self.client.post(
            route,
            data=next(self.bodies),
            headers={"Content-Type": "application/json"},
            name=route,
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            body = response.json()
            values = body.get("embedding") or body.get("predictions")
            if not values or (route == "/embed" and len(values) != self.data["width"]):
                response.failure(f"unexpected body: {response.text[:200]}")


class InfinityUser(FastHttpUser):
    """POSTs one text per request to Infinity's ``/embeddings`` (the peer serving the same model)."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.data = workload_data()
        self.bodies = itertools.cycle(self.data["infinity_bodies"])

    @task
    def infer(self) -> None:
        with self.client.post(
            "/embeddings",
            data=next(self.bodies),
            headers={"Content-Type": "application/json"},
            name="/embeddings",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            data = response.json().get("data") or [{}]
            if len(data) != 1 or len(data[0].get("embedding") or []) != self.data["width"]:
                response.failure(f"unexpected body: {response.text[:200]}")


class TritonUser(FastHttpUser):
    """POSTs one item per request to Triton's KServe v2 HTTP inference endpoint."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.data = workload_data()
        self.bodies = body_stream(self.data, triton=True)
        version = self.data["version"]
        pinned = f"/versions/{version}" if version else ""
        self.path = f"/v2/models/{self.data['model']}{pinned}/infer"

    @task
    def infer(self) -> None:
        with self.client.post(
            self.path,
            data=next(self.bodies),
            headers={"Content-Type": "application/json"},
            name="triton " + self.path,
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            outputs = response.json().get("outputs") or []
            if not outputs or outputs[0].get("shape", [0, 0])[-1] != self.data["width"]:
                response.failure(f"unexpected body: {response.text[:200]}")
