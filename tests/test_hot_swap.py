"""Model versions in one runtime: routes by weight, swaps without dropping a request.

A toy serving whose ``model`` option names its weights; each version has its
own gate (``mlservices.testing.Toy``), so a test holds a batch of the old
version in inference while it deploys the new one.
"""

from __future__ import annotations

import threading
import types

import pytest

from mlservices import InvalidInput, Prepared, Serving, observers, registry
from mlservices.runtime import Route, Runtime
from mlservices.testing import Toy

NAME = "hotswap"


class Versions:
    """One gated toy per model name, and how often each was loaded."""

    def __init__(self):
        self.toys: dict[str, Toy] = {}
        self.loads: dict[str, int] = {}

    def toy(self, model: str) -> Toy:
        return self.toys.setdefault(model, Toy())

    def factory(self, model: str = "base", broken: bool = False) -> Serving:
        toy = self.toy(model)

        def load(device):
            if broken:
                raise RuntimeError(f"weights of {model} are corrupt")
            self.loads[model] = self.loads.get(model, 0) + 1
            return types.SimpleNamespace(version=f"{model}@sha256:0123", toy=toy)

        return Serving(
            name=NAME,
            load=load,
            preprocess=lambda m, x: Prepared(x),
            inference=lambda m, items: m.toy.inference(m, items),
            postprocess=lambda m, output, context: {"output": output, "model": m.version},
            batch_timeout_ms=0.0,
        )


@pytest.fixture
def versions():
    made = Versions()
    registry.register(NAME)(made.factory)
    yield made
    registry.unregister(NAME)


@pytest.fixture
def runtime():
    rt = Runtime({NAME: {}}, device="cpu")
    yield rt
    rt.close()


@pytest.fixture
def events():
    seen: list = []
    observers.subscribe(seen.append)
    yield seen
    observers.unsubscribe(seen.append)


def route(version: str, weight: float = 100.0) -> Route:
    return Route(version, {"model": f"/store/{version}"}, weight)


def served_by(runtime: Runtime, n: int) -> list[str]:
    return [runtime.batched_run(NAME, 1)["model"].split("@")[0] for _ in range(n)]


def test_nothing_deployed_serves_the_settings_model(runtime, versions):
    assert runtime.batched_run(NAME, 21) == {"output": 42, "model": "base@sha256:0123"}
    assert runtime.routes(NAME) == [Route()]


def test_90_10_sends_exactly_1_request_in_10_to_the_canary(runtime, versions):
    runtime.deploy(NAME, [route("v1", 90), route("v2", 10)])
    picks = served_by(runtime, 20)
    assert picks.count("/store/v2") == 2 and picks.count("/store/v1") == 18
    assert runtime.serving(NAME).version == "v1@/store/v1@sha256:0123"  # the main route: the heaviest


def test_a_version_name_prefixes_the_version_the_model_reports(runtime, versions):
    runtime.deploy(NAME, [route("v7")])
    final = list(runtime.stream(NAME, 1))[-1]
    assert final.version == "v7@/store/v7@sha256:0123"


def test_in_flight_request_finishes_on_its_version_while_new_ones_go_to_the_new(runtime, versions, events):
    runtime.deploy(NAME, [route("v1")])
    old = versions.toy("/store/v1")
    old.gate.clear()
    results, errors = [], []

    def held():
        try:
            results.append(runtime.batched_run(NAME, 5))
        except BaseException as exc:  # reaches the test below
            errors.append(exc)

    thread = threading.Thread(target=held)
    thread.start()
    assert old.started.get(timeout=10) == [5]  # v1 is inside inference now
    runtime.deploy(NAME, [route("v2")])
    assert served_by(runtime, 1) == ["/store/v2"]  # new requests: v2, at once
    assert not runtime.wait_drained(timeout=0.2)  # v1 cannot be freed while its request runs
    old.gate.set()
    thread.join(10)
    assert errors == [] and results == [{"output": 10, "model": "/store/v1@sha256:0123"}]
    assert runtime.wait_drained(timeout=10)
    unloaded = [e for e in events if isinstance(e, observers.Unloaded)]
    assert [(e.serving, e.version) for e in unloaded] == [(NAME, "v1@/store/v1@sha256:0123")]


def test_a_version_that_fails_to_load_switches_nothing(runtime, versions):
    runtime.deploy(NAME, [route("v1")])
    with pytest.raises(RuntimeError, match="weights of /store/v2 are corrupt"):
        runtime.deploy(NAME, [Route("v2", {"model": "/store/v2", "broken": True})])
    assert [r.version for r in runtime.routes(NAME)] == ["v1"]
    assert served_by(runtime, 2) == ["/store/v1", "/store/v1"]


def test_same_routes_again_reload_nothing_and_a_new_weight_keeps_the_loaded_model(runtime, versions, events):
    runtime.deploy(NAME, [route("v1")])
    runtime.deploy(NAME, [route("v1")])
    runtime.deploy(NAME, [route("v1", 50), route("v2", 50)])
    runtime.deploy(NAME, [route("v1", 90), route("v2", 10)])
    assert versions.loads == {"/store/v1": 1, "/store/v2": 1}
    assert [(r.version, r.weight) for r in runtime.routes(NAME)] == [("v1", 90), ("v2", 10)]
    loaded = [(e.serving, e.version) for e in events if isinstance(e, observers.Loaded)]
    assert loaded == [(NAME, "v1@/store/v1@sha256:0123"), (NAME, "v2@/store/v2@sha256:0123")]


def test_rollback_is_a_deploy_of_the_old_routes(runtime, versions):
    runtime.deploy(NAME, [route("v1")])
    runtime.deploy(NAME, [route("v1", 90), route("v2", 10)])
    runtime.deploy(NAME, [route("v1")])
    assert runtime.wait_drained(timeout=10)
    assert served_by(runtime, 3) == ["/store/v1"] * 3


def test_a_request_may_name_its_version(runtime, versions):
    runtime.deploy(NAME, [route("v1", 99), route("v2", 1)])
    final = list(runtime.stream(NAME, 1, version="v2"))[-1]
    assert final.version.startswith("v2@")
    with pytest.raises(InvalidInput, match="no deployed version 'v3'; deployed: 'v1', 'v2'"):
        list(runtime.stream(NAME, 1, version="v3"))


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ([], "no routes"),
        ([Route("v1", weight=0)], "weight 0; use a number above 0"),
        ([Route("v1"), Route("v1")], "a version is routed twice"),
        ([Route("v1@x")], "holds '@' or '/'"),
    ],
)
def test_bad_routes_are_refused_with_the_fix(runtime, versions, routes, message):
    with pytest.raises(InvalidInput, match=message):
        runtime.deploy(NAME, routes)


def test_first_use_deploys_first_routes_and_never_replaces_an_explicit_deploy(runtime, versions):
    runtime.first_routes = lambda name: [route("v9")]
    assert served_by(runtime, 1) == ["/store/v9"]
    runtime.deploy(NAME, [route("v1")])
    runtime.deploy(NAME, [Route()], first=True)  # a first use that lost the race: no effect
    assert served_by(runtime, 1) == ["/store/v1"]
