"""The ``cache`` stack (opt-in: ``--stacks cache``): throughput and p99 with a response cache against
without one, at cache-hit rates 0, 0.5 and 0.95, on a workload with repeats.

Two caches, each against the same stack without it, side by side in one run:

- Triton's response cache (Triton direct, Locust's ``TritonUser``, one item per request): one
  tritonserver with ``--cache-config local,size=...``, the model loaded with ``response_cache`` off or
  on before each row (a load with the config overridden: the repository is not touched);
- the Bento's Redis cache (the Bento, Locust's ``BentoUser``): a real ``redis-server`` and two Bentos,
  one without and one with ``cache.enabled``; Triton's own cache is off meanwhile, so only Redis
  answers repeats.

At each hit rate the row without the cache and the row with it run one after the other, so a change of
the machine's load during the run (other work shares its cores) falls on both. The workload
(``workloads.repeats``, ``MODELPACK_HIT_RATE``): each request is one of the workload's items with
probability ``hit rate``, else an item never sent before. The items are sent once before each row, so
the cache holds them; the measured hit rate (Triton's statistics ``cache_hit``/``cache_miss``, or the
Bento's ``modelpack_cache_items_total``) is reported beside the asked one. Text workloads only (a new
image per request would cost the load generator more than the model).
"""

from __future__ import annotations

import json
import logging
import re
import urllib.request

from benchmarks.loadgen import run_locust
from core.errors import CheckFailed

log = logging.getLogger(__name__)

HIT_RATES = (0.0, 0.5, 0.95)
CACHE_SIZE = 256 << 20  # Triton's local cache: far more than the items of a run
USERS = 8  # Locust users (fewer when the plan measures fewer)


def locust_s(plan) -> float:
    """Seconds per row: Locust needs ~2 s of its window to load the workload and spawn its users, so a
    row runs at least 8 s (twice the plan's Locust time when that is longer)."""
    return max(8.0, 2 * plan.locust_s)


def need_s(plan) -> float:
    """What the stack takes: 4 series x 3 hit rates of Locust, warm-ups and 3 server starts."""
    return 4 * len(HIT_RATES) * (locust_s(plan) + 6) + 60


def users_for(plan) -> int:
    return min(USERS, max(plan.locust_users))


def _post(url: str, body: str, headers: dict | None = None) -> None:
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json", **(headers or {})}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read().decode()


def _counter(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


def _load_with_cache(server, model: str, config, enable: bool) -> None:
    """(Re)load ``model`` with its config's response cache on or off (a config override: the repository
    is not touched)."""
    from google.protobuf import json_format

    changed = type(config)()
    changed.CopyFrom(config)
    if enable:
        changed.response_cache.enable = True
    else:
        changed.ClearField("response_cache")
    server.load(model, config=json_format.MessageToDict(changed, preserving_proto_field_name=True))


def triton_bodies(inputs, output: str) -> list[str]:
    """KServe v2 JSON bodies of the workload's items (Triton's cache keys on the tensors, so these hit
    what Locust's ``TritonUser`` sends for the same items)."""
    return [
        json.dumps(
            {
                "inputs": [
                    {
                        "name": name,
                        "shape": [1, *value.shape],
                        "datatype": "INT64" if value.dtype.kind == "i" else "FP32",
                        "data": value.reshape(-1).tolist(),
                    }
                    for name, value in item.items()
                ],
                "outputs": [{"name": output}],
            }
        )
        for item in inputs.tensors
    ]


class CacheBench:
    """Runs the stack inside a benchmark ``Run`` (its folder, plan, budget, errors, Locust settings)."""

    def __init__(self, run) -> None:
        self.run = run
        self.out = run.out / "cache"
        self.rows: list[dict] = []

    def locust(self, host: str, user: str, workload: str, repo, rate: float, label: str) -> dict:
        from benchmarks.run import LOCUSTFILE

        plan = self.run.plan
        users = users_for(plan)
        prefix = self.out / f"{label}_h{int(rate * 100):02d}_u{users}"
        env = {
            "MODELPACK_WORKLOAD": workload,
            "MODELPACK_REPOSITORY": str(repo.root),
            "MODELPACK_HIT_RATE": str(rate),
        }
        result = run_locust(LOCUSTFILE, host, users, locust_s(plan), prefix, user_classes=[user], env=env)
        point = result.point
        if point.failures:
            self.run.errors.append(
                f"cache {label} at hit rate {rate}: {point.failures} of {point.requests} requests failed"
            )
        return {
            "users": users,
            "throughput": point.throughput,
            "p50_ms": point.p50,
            "p99_ms": point.p99,
            "requests": point.requests,
            "failures": point.failures,
            "files": [self.run._rel(f) for f in result.files],
        }

    def measure(self, procs, repo, workload: str) -> dict:
        self.procs = procs
        from benchmarks.run import ROUTES
        from benchmarks.workloads import WORKLOADS
        from core.triton_config import read_config
        from local_triton.server import TritonServer
        from serving.launcher import RedisServer

        model = WORKLOADS[workload].model
        inputs = self.run.inputs[workload]
        if inputs.workload.kind != "text":
            raise CheckFailed(f"cache: {workload} is not a text workload; the cache stack needs one")
        self.out.mkdir(parents=True, exist_ok=True)
        config = read_config(repo.root / model / "config.pbtxt")
        logs = self.run.out / "logs"
        triton = procs.enter(
            TritonServer(
                repo.root,
                models=[model],
                log_path=logs / "triton-cache.log",
                cache_size=CACHE_SIZE,
                die_with_parent=True,
            ),
            name="tritonserver (cache)",
        )
        redis = procs.enter(RedisServer(self.out / "redis", die_with_parent=True), name="redis-server")
        triton_url = f"http://{triton.http_url}"
        output = repo.manifest(model)["outputs"][0]["name"]
        bodies = {
            "triton": triton_bodies(inputs, output),
            "bento": [json.dumps(b) for b in inputs.http_bodies()],
        }

        infer = f"{triton_url}/v2/models/{model}/infer"

        def cache_counts() -> tuple[float, float]:
            stats = triton.statistics(model)["model_stats"][0]["inference_stats"]
            return tuple(float((stats.get(k) or {}).get("count", 0)) for k in ("cache_hit", "cache_miss"))

        # Triton direct: the rows with and without its cache alternate, so a change of the machine's load
        # during the run falls on both.
        for rate in HIT_RATES:
            for label, enable in (("none", False), ("triton", True)):
                if self.run._skip(f"cache {label} at hit rate {rate}", locust_s(self.run.plan) + 8):
                    continue
                _load_with_cache(triton, model, config, enable)
                for body in bodies["triton"]:
                    _post(infer, body)
                hits0, misses0 = cache_counts()
                row = self.locust(triton_url, "TritonUser", workload, repo, rate, label)
                hits, misses = (
                    now - before for now, before in zip(cache_counts(), (hits0, misses0), strict=True)
                )
                measured = hits / (hits + misses) if hits + misses else 0.0
                head = {"stack": "triton", "cache": label, "hit_rate": rate, "measured_hit_rate": measured}
                self.rows.append({**head, **row})

        # The Bento without and with Redis, both up (Triton's own cache off), rows alternating.
        _load_with_cache(triton, model, config, enable=False)
        bentos = {
            label: self._bento(triton, repo, model, label, redis.url if cached else None)
            for label, cached in (("bento-none", False), ("redis", True))
        }
        route = ROUTES[inputs.workload.kind]
        for rate in HIT_RATES:
            for label, bento in bentos.items():
                if self.run._skip(f"cache {label} at hit rate {rate}", locust_s(self.run.plan) + 6):
                    continue
                for body in bodies["bento"]:
                    _post(bento.url + route, body)
                before = _get(bento.url + "/metrics")
                row = self.locust(bento.url, "BentoUser", workload, repo, rate, label)
                after = _get(bento.url + "/metrics")
                counts = {
                    r: _counter(after, "modelpack_cache_items_total", model=model, result=r)
                    - _counter(before, "modelpack_cache_items_total", model=model, result=r)
                    for r in ("hit", "miss", "bypassed")
                }
                seen = sum(counts.values())
                measured = counts["hit"] / seen if seen else 0.0
                head = {"stack": "bento", "cache": label, "hit_rate": rate, "measured_hit_rate": measured}
                self.rows.append({**head, **row})
        return self.result(workload)

    def _bento(self, triton, repo, model: str, label: str, redis_url: str | None):
        """A Bento of its own for ``label`` (with the Redis cache when ``redis_url``), stopped with the run's
        processes."""
        import yaml

        from serving.launcher import BentoServer

        path = self.run.bento_config(triton, repo, [model], name=f"service-{label}.yaml")
        if redis_url:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            data["cache"] = {"enabled": True, "redis_url": redis_url}
            path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        logs = self.run.out / "logs"
        bento = BentoServer(
            path, self.run.out / f"bentoml_home_{label}", logs / f"bento-{label}.log", die_with_parent=True
        )
        return self.procs.enter(bento, name=f"bento ({label})")

    def _row(self, stack: str, cache: str, rate: float) -> dict | None:
        return next(
            (r for r in self.rows if r["stack"] == stack and r["cache"] == cache and r["hit_rate"] == rate),
            None,
        )

    def result(self, workload: str) -> dict:
        """The rows, and per stack and hit rate the cached figures over the uncached ones."""
        ratios = []
        for stack, cached, plain in (("triton", "triton", "none"), ("bento", "redis", "bento-none")):
            for rate in HIT_RATES:
                on = self._row(stack, cached, rate)
                off = self._row(stack, plain, rate)
                if on and off and off["throughput"] and on["p99_ms"]:
                    ratios.append(
                        {
                            "stack": stack,
                            "cache": cached,
                            "hit_rate": rate,
                            "measured_hit_rate": on["measured_hit_rate"],
                            "throughput_ratio": on["throughput"] / off["throughput"],
                            "p99_ratio": on["p99_ms"] / off["p99_ms"],
                        }
                    )
        return {
            "workload": workload,
            "hit_rates": list(HIT_RATES),
            "users": users_for(self.run.plan),
            "locust_s": locust_s(self.run.plan),
            "rows": self.rows,
            "ratios": ratios,
        }
