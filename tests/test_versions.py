"""Model versions: the rules, validation runs, the sync's routes, and ``manage.py models`` end to end.

The versions are tiny randomly initialised BERT sentiment classifiers, each
with its own seed (so each version answers with its own scores), stored in a
private model repository (``MLSERVICES_MODEL_REPOSITORY``). The management
commands run as real ``python manage.py`` processes on a private migrated
database (``live_database``).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import TINY_VOCAB
from tests.live_server import ROOT, base_env, live_database

LABELLED = [  # sentence<TAB>label in the tiny vocabulary
    ("i love this movie", 1), ("a great film", 1), ("the acting was good", 1), ("we loved it", 1),
    ("i hate this movie", 0), ("an awful film", 0), ("the plot was bad", 0), ("terrible acting", 0),
]


def build_tiny_version(folder: Path, seed: int) -> Path:
    """A tiny random BERT classifier whose answers depend on ``seed`` (safetensors + fast tokenizer)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(TINY_VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64, num_labels=2,
        id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1},
    )
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.normal_(0, 3.0)  # scores far from 0.5, and different for every seed
    model.save_pretrained(folder, safe_serialization=True)
    BertTokenizerFast(vocab={w: i for i, w in enumerate(TINY_VOCAB)}, model_max_length=64).save_pretrained(folder)
    return folder


def folder_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="session")
def tiny_versions(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("tiny-versions")
    return SimpleNamespace(v1=build_tiny_version(root / "one", 1), v2=build_tiny_version(root / "two", 2))


@pytest.fixture
def labelled_tsv(tmp_path) -> Path:
    path = tmp_path / "labelled.tsv"
    path.write_text("sentence\tlabel\n" + "".join(f"{s}\t{label}\n" for s, label in LABELLED), encoding="utf-8")
    return path


@pytest.fixture
def repository(tmp_path, monkeypatch, labelled_tsv) -> Path:
    root = tmp_path / "repository"
    monkeypatch.setenv("MLSERVICES_MODEL_REPOSITORY", str(root))
    monkeypatch.setenv("SENTIMENT_VALIDATION_SET", str(labelled_tsv))
    return root


def version(serving="sentiment", name="v1", status="validated", **fields):
    from webapp.versions.models import ModelVersion

    return ModelVersion.objects.create(serving=serving, version=name, status=status, **fields)


def statuses(serving="sentiment") -> dict[str, tuple[str, int]]:
    from webapp.versions.models import ModelVersion

    return {r.version: (r.status, r.canary_percent) for r in ModelVersion.objects.filter(serving=serving)}


# --- The rules -----------------------------------------------------------------------


@pytest.mark.django_db
def test_activate_needs_a_validated_version_and_keeps_the_old_active_one_validated():
    from webapp.versions import actions
    from webapp.versions.models import ModelAction

    alice = actions.Who(None, "alice")
    version(name="v1"), version(name="v2"), version(name="new", status="staged")
    with pytest.raises(actions.VersionError, match=r"sentiment new is staged; validate it first \(`python manage.py models validate sentiment new`\)"):
        actions.activate("sentiment", "new", alice)
    with pytest.raises(actions.VersionError, match="no version 'nope'"):
        actions.activate("sentiment", "nope", alice)
    with pytest.raises(actions.VersionError, match="no serving named 'nothing'; known servings: .*sentiment"):
        actions.activate("nothing", "v1", alice)
    actions.activate("sentiment", "v1", alice)
    actions.activate("sentiment", "v2", alice)
    assert statuses() == {"v1": ("validated", 0), "v2": ("active", 0), "new": ("staged", 0)}
    with pytest.raises(actions.VersionError, match="already active"):
        actions.activate("sentiment", "v2", alice)
    log = [(a.username, a.action, a.version, a.detail) for a in ModelAction.objects.order_by("id")]
    assert log == [
        ("alice", "activate", "v1", {"previous": None}),
        ("alice", "activate", "v2", {"previous": "v1"}),
    ]


@pytest.mark.django_db
@pytest.mark.parametrize("percent", [0, 100, -5, True, 12.5])
def test_a_canary_percent_outside_1_to_99_is_refused(percent):
    from webapp.versions import actions

    version(name="v1")
    with pytest.raises(actions.VersionError, match=r"canary percent .*; use a whole number from 1 to 99"):
        actions.activate("sentiment", "v1", actions.Who(None, "bob"), canary=percent)
    assert statuses() == {"v1": ("validated", 0)}


@pytest.mark.django_db
def test_one_canary_at_most_beside_the_active_version_and_rollback_drops_it_first():
    from webapp.versions import actions

    who = actions.Who(None, "carol")
    version(name="v1"), version(name="v2"), version(name="v3")
    actions.activate("sentiment", "v1", who)
    with pytest.raises(actions.VersionError, match="a canary must be another version"):
        actions.activate("sentiment", "v1", who, canary=10)
    actions.activate("sentiment", "v2", who, canary=10)
    actions.activate("sentiment", "v3", who, canary=25)  # replaces the canary
    assert statuses() == {"v1": ("active", 0), "v2": ("validated", 0), "v3": ("canary", 25)}
    assert actions.rollback("sentiment", who).version == "v3"
    assert statuses() == {"v1": ("active", 0), "v2": ("validated", 0), "v3": ("validated", 0)}
    actions.activate("sentiment", "v3", who, canary=50)
    actions.activate("sentiment", "v3", who)  # promoting the canary
    assert statuses() == {"v1": ("validated", 0), "v2": ("validated", 0), "v3": ("active", 0)}


@pytest.mark.django_db
def test_rollback_reactivates_the_previously_active_version_and_says_when_there_is_none():
    from webapp.versions import actions
    from webapp.versions.models import ModelAction

    who = actions.Who(None, "dave")
    version(name="v1"), version(name="v2")
    with pytest.raises(actions.VersionError, match="no canary and no earlier active version .* models activate sentiment VERSION"):
        actions.rollback("sentiment", who)
    actions.activate("sentiment", "v1", who)
    with pytest.raises(actions.VersionError, match="no earlier active version"):
        actions.rollback("sentiment", who)  # v1 is the first: nothing before it
    actions.activate("sentiment", "v2", who)
    assert actions.rollback("sentiment", who).version == "v1"
    assert statuses() == {"v1": ("active", 0), "v2": ("validated", 0)}
    assert actions.rollback("sentiment", who).version == "v2"  # and back again
    actions.retire("sentiment", "v1", who)
    with pytest.raises(actions.VersionError, match="no earlier active version"):
        actions.rollback("sentiment", who)  # v1 is retired: never served again
    assert [(a.action, a.version) for a in ModelAction.objects.order_by("id")][-3:] == [
        ("rollback", "v1"), ("rollback", "v2"), ("retire", "v1"),
    ]


@pytest.mark.django_db
def test_the_active_version_cannot_be_retired_and_a_retired_canary_stops_serving():
    from webapp.versions import actions

    who = actions.Who(None, "erin")
    version(name="v1"), version(name="v2")
    actions.activate("sentiment", "v1", who)
    actions.activate("sentiment", "v2", who, canary=5)
    with pytest.raises(actions.VersionError, match="sentiment v1 is the active version; activate another one or roll back"):
        actions.retire("sentiment", "v1", who)
    actions.retire("sentiment", "v2", who)
    assert statuses() == {"v1": ("active", 0), "v2": ("retired", 0)}
    with pytest.raises(actions.VersionError, match="sentiment v2 is retired; validate it first"):
        actions.activate("sentiment", "v2", who)


@pytest.mark.django_db
def test_the_database_holds_one_active_and_one_canary_version_per_serving_at_most():
    from django.db import IntegrityError, transaction

    version(name="v1", status="active"), version(name="c1", status="canary", canary_percent=5)
    version(serving="transcription", name="v1", status="active")  # another serving: fine
    for name, status in (("v2", "active"), ("c2", "canary")):
        with pytest.raises(IntegrityError), transaction.atomic():
            version(name=name, status=status)
    with pytest.raises(IntegrityError), transaction.atomic():
        version(name="v1", status="staged")  # names are unique per serving


# --- The sync's routes ---------------------------------------------------------------------


@pytest.mark.django_db
def test_the_routes_are_the_active_version_and_its_canary_or_the_settings_model(repository, tiny_versions):
    from mlservices.runtime import Route

    from webapp.versions import actions, sync

    who = actions.Who(None, "frank")
    assert sync.desired_routes("sentiment") == [Route()]
    one = actions.import_path("sentiment", "v1", tiny_versions.v1, who)
    two = actions.import_path("sentiment", "v2", tiny_versions.v2, who)
    assert (one.status, one.sha256, one.source) == ("staged", folder_hashes(tiny_versions.v1), {"kind": "path", "path": str(tiny_versions.v1)})
    options = {"model": str(repository / "sentiment" / "v1"), "revision": None, "sha256": None}
    two.status = one.status = "validated"
    one.save(), two.save()
    actions.activate("sentiment", "v2", who, canary=20)  # a canary beside the settings' model
    assert sync.desired_routes("sentiment") == [
        Route("", {}, 80.0), Route("v2", {**options, "model": str(repository / "sentiment" / "v2")}, 20.0)
    ]
    actions.activate("sentiment", "v1", who)
    assert sync.desired_routes("sentiment") == [
        Route("v1", options, 80.0), Route("v2", {**options, "model": str(repository / "sentiment" / "v2")}, 20.0)
    ]
    actions.rollback("sentiment", who)
    assert sync.desired_routes("sentiment") == [Route("v1", options, 100.0)]


@pytest.mark.django_db
def test_a_sync_serves_the_database_versions_and_refuses_a_tampered_one(repository, tiny_versions):
    import mlservices

    from webapp.versions import actions, sync

    who = actions.Who(None, "gina")
    for name, folder in (("v1", tiny_versions.v1), ("v2", tiny_versions.v2)):
        actions.import_path("sentiment", name, folder, who).__class__.objects.filter(version=name).update(status="validated")
    runtime = mlservices.Runtime({"sentiment": {"model": str(tiny_versions.v2)}}, device="cpu")
    runtime.first_routes = sync.first_routes
    try:
        actions.activate("sentiment", "v1", who)
        assert sync.sync(runtime, ["sentiment"]) == {} and runtime.routes("sentiment") == []  # not used yet: stays lazy
        assert runtime.serving("sentiment").version.startswith("v1@sha256:")  # the first use serves the database's
        actions.activate("sentiment", "v2", who, canary=10)
        assert sync.sync(runtime, ["sentiment"]) == {}
        assert [d.loaded.version[:3] for d in runtime.deployed("sentiment")] == ["v1@", "v2@"]
        actions.rollback("sentiment", who)
        assert sync.sync(runtime, ["sentiment"]) == {}
        assert [d.loaded.version[:3] for d in runtime.deployed("sentiment")] == ["v1@"]
        weights = repository / "sentiment" / "v2" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
        actions.activate("sentiment", "v2", who)
        errors = sync.sync(runtime, ["sentiment"])
        assert "model.safetensors has sha256" in errors["sentiment"]
        assert [d.loaded.version[:3] for d in runtime.deployed("sentiment")] == ["v1@"]  # v1 keeps serving
        fresh = mlservices.Runtime({"sentiment": {"model": str(tiny_versions.v1)}}, device="cpu")
        fresh.first_routes = sync.first_routes
        assert fresh.serving("sentiment").version.startswith("one@")  # a tampered active version: the settings' model
        fresh.close()
    finally:
        runtime.close()


# --- Validation runs ------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_validation_run_records_smoke_outputs_load_time_latency_and_accuracy(repository, tiny_versions):
    from webapp.versions import actions
    from webapp.versions.validation import validate_and_record

    actions.import_path("sentiment", "v1", tiny_versions.v1, actions.Who(None, "hana"))
    row = actions.request_validation("sentiment", "v1", actions.Who(None, "hana"))
    assert row.validation["pending"] is True
    figures = validate_and_record("sentiment", "v1", "hana")
    row.refresh_from_db()
    assert row.status == "validated" and row.validation == figures and row.validated_at
    assert "error" not in figures
    assert figures["model_version"].startswith("v1@sha256:") and figures["device"] == "cpu"
    assert figures["load_time_s"] > 0 and figures["latency_ms"] > 0
    assert [o["input"] for o in figures["smoke"]] == [
        "I loved this movie; the acting was wonderful.", "A dull, painfully boring film.", "{'text': 'not bad at all'}",
    ]
    assert all(o["output"]["label"] in ("NEGATIVE", "POSITIVE") for o in figures["smoke"])
    assert figures["quality"]["examples"] == len(LABELLED) and 0 <= figures["quality"]["accuracy"] <= 1
    assert row.figures().startswith("load ") and "accuracy" in row.figures()


@pytest.mark.django_db
def test_validation_refuses_a_tampered_file_and_garbage_weights_and_the_version_stays_staged(
    repository, tiny_versions, tmp_path
):
    from webapp.versions import actions
    from webapp.versions.models import ModelAction
    from webapp.versions.validation import validate_and_record

    who = actions.Who(None, "ivan")
    actions.import_path("sentiment", "tampered", tiny_versions.v1, who)
    config = repository / "sentiment" / "tampered" / "config.json"
    config.write_text(config.read_text().replace('"hidden_size": 16', '"hidden_size": 32'))
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (garbage / name).write_bytes((tiny_versions.v1 / name).read_bytes())
    header = json.dumps({"bert.embeddings.word_embeddings.weight": {"dtype": "F32", "shape": [50, 16], "data_offsets": [0, 3200]}})
    (garbage / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header.encode() + b"\x00" * 100)  # cut short
    actions.import_path("sentiment", "garbage", garbage, who)

    tampered = validate_and_record("sentiment", "tampered", "ivan")
    assert tampered == {"error": tampered["error"]}  # refused before anything was loaded
    assert "config.json has sha256" in tampered["error"] and "remove version tampered" in tampered["error"]
    broken = validate_and_record("sentiment", "garbage", "ivan")
    assert "load_time_s" not in broken and broken["error"]
    assert statuses() == {"tampered": ("staged", 0), "garbage": ("staged", 0)}
    with pytest.raises(actions.VersionError, match="garbage is staged; validate it first"):
        actions.activate("sentiment", "garbage", who)
    assert [(a.action, a.version) for a in ModelAction.objects.filter(action="refused").order_by("id")] == [
        ("refused", "tampered"), ("refused", "garbage"),
    ]


@pytest.mark.django_db
def test_validation_refuses_results_that_are_not_json_or_fail_the_servings_check(repository, tmp_path):
    import mlservices
    from mlservices import Prepared, Serving, ServingFailed

    from webapp.versions import actions
    from webapp.versions.validation import validate_version

    def check(result):
        if result["echo"] == "bad":
            raise ServingFailed("odd: the echo is 'bad'")

    @mlservices.register("odd")
    def odd(model: str = "", sha256: str | None = None) -> Serving:
        def load(device):
            return SimpleNamespace(answer=json.loads((Path(model) / "answer.json").read_text()), version="odd@1")

        return Serving(
            name="odd", load=load, preprocess=lambda m, text: Prepared(text),
            inference=lambda m, items: [m.answer for _ in items],
            postprocess=lambda m, output, context: {"echo": output} if output != "set" else {"echo": {1, 2}},
            smoke=("hello",), check_result=check,
        )

    try:
        for name, answer in (("fine", "good"), ("bad", "bad"), ("set", "set")):
            folder = tmp_path / name
            folder.mkdir()
            (folder / "answer.json").write_text(json.dumps(answer))
            (folder / "model.onnx").write_bytes(b"\x08\x07")  # the repository wants weights; odd never reads them
            actions.import_path("odd", name, folder, actions.Who(None, "jo"))
        runtime = mlservices.Runtime({"odd": {}}, device="cpu")
        fine = validate_version("odd", "fine", runtime)
        assert fine["smoke"] == [{"input": "hello", "output": {"echo": "good"}}] and "error" not in fine
        assert validate_version("odd", "bad", runtime)["error"] == "odd: the echo is 'bad'"
        assert "a smoke result is not JSON" in validate_version("odd", "set", runtime)["error"]
    finally:
        mlservices.registry.unregister("odd")


@pytest.mark.django_db
def test_a_validation_run_on_cuda_gives_back_the_gpu_memory_it_used(repository, tiny_versions):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here")
    import mlservices

    from webapp.versions import actions
    from webapp.versions.validation import validate_version

    actions.import_path("sentiment", "v1", tiny_versions.v1, actions.Who(None, "kim"))
    runtime = mlservices.Runtime({"sentiment": {}}, device="cuda")
    before = torch.cuda.memory_allocated()
    figures = validate_version("sentiment", "v1", runtime)
    assert figures["device"] == "cuda" and "error" not in figures
    assert torch.cuda.memory_allocated() == before


# --- The admin (its browser flow: tests/test_versions_browser.py) ----------------------------


@pytest.mark.django_db
def test_the_admin_adds_a_version_from_one_source_and_refuses_two_sources_or_pickles(
    admin_client, admin_user, repository, tiny_versions, tmp_path
):
    from webapp.versions.models import ModelAction, ModelVersion

    add = "/admin/versions/modelversion/add/"
    form = {"serving": "sentiment", "version": "v1"}
    both = admin_client.post(add, {**form, "local_path": str(tiny_versions.v1), "hub_id": "org/model"})
    assert both.status_code == 200 and "give exactly one of" in both.content.decode()
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x02")
    refused = admin_client.post(add, {**form, "local_path": str(pickled)})
    assert refused.status_code == 200 and "pickle" in refused.content.decode()
    unpinned = admin_client.post(add, {**form, "hub_id": "org/model", "revision": "main"})
    assert "pin the 40-hex commit" in unpinned.content.decode()
    assert not ModelVersion.objects.exists() and not (repository / "sentiment" / "v1").exists()

    added = admin_client.post(add, {**form, "local_path": str(tiny_versions.v1)})
    assert added.status_code == 302
    row = ModelVersion.objects.get()
    assert (row.version, row.status, row.added_by, row.sha256) == ("v1", "staged", admin_user, folder_hashes(tiny_versions.v1))
    page = admin_client.post(f"/admin/versions/modelversion/{row.pk}/act/", {"do": "activate"}, follow=True).content.decode()
    assert "entiment v1 is staged; validate it first" in page  # the admin capitalises messages
    listing = admin_client.get("/admin/versions/modelversion/").content.decode()
    assert "the settings&#x27; model" in listing and "4 files" in listing
    assert list(ModelAction.objects.values_list("username", "action", "version")) == [("admin", "add", "v1")]
    assert admin_client.get("/admin/versions/modelaction/add/").status_code == 403  # the audit log is read-only


@pytest.mark.django_db
def test_only_staff_reach_the_versions_admin_and_its_actions(client, django_user_model):
    row = version(name="v1")
    client.force_login(django_user_model.objects.create_user("visitor", password="x"))
    for response in (
        client.get("/admin/versions/modelversion/"),
        client.post(f"/admin/versions/modelversion/{row.pk}/act/", {"do": "activate"}),
    ):
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    assert statuses() == {"v1": ("validated", 0)}


# --- manage.py models, end to end ----------------------------------------------------------


def manage(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "models", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def refused(result: subprocess.CompletedProcess) -> str:
    """The one line a refused command prints on stderr (and its exit status is not 0)."""
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_the_models_command_imports_validates_activates_canaries_rolls_back_and_retires(tmp_path, tiny_versions, labelled_tsv):
    with live_database(tmp_path) as url:
        env = base_env(
            DATABASE_URL=url, MLSERVICES_MODEL_REPOSITORY=str(tmp_path / "repository"),
            SENTIMENT_VALIDATION_SET=str(labelled_tsv), MLSERVICES_DEVICE="cpu",
        )
        env.pop("REDIS_URL", None)  # in-process mode: `validate` runs in the command's own process
        listed = json.loads(ok(manage(env, "list", "--json")))
        assert listed["sentiment"] == [] and {"background_removal", "transcription"} <= set(listed)

        assert "sentiment v1: stored" in ok(manage(env, "import", "sentiment", str(tiny_versions.v1), "--version", "v1", "--user", "ops"))
        ok(manage(env, "import", "sentiment", str(tiny_versions.v2), "--version", "v2"))
        assert refused(manage(env, "import", "sentiment", str(tiny_versions.v2), "--version", "v2")) == (
            "CommandError: sentiment already has a version 'v2'; choose another name with --version"
        )
        assert "version name 'bad/name'" in refused(manage(env, "import", "sentiment", str(tiny_versions.v2), "--version", "bad/name"))
        assert refused(manage(env, "activate", "sentiment", "v1")) == (
            "CommandError: sentiment v1 is staged; validate it first (`python manage.py models validate sentiment v1`)"
        )
        validated = ok(manage(env, "validate", "sentiment", "v1"))
        assert validated.startswith("sentiment v1: validated (load ") and "accuracy" in validated
        ok(manage(env, "validate", "sentiment", "v2"))
        assert ok(manage(env, "activate", "sentiment", "v1")) == "sentiment v1: active\n"
        assert ok(manage(env, "activate", "sentiment", "v2", "--canary", "30")) == "sentiment v2: canary, 30 % of requests\n"
        assert "use a whole number from 1 to 99" in refused(manage(env, "activate", "sentiment", "v2", "--canary", "100"))

        listed = json.loads(ok(manage(env, "list", "--json")))
        assert listed["sentiment"] == [
            {"version": "v1", "status": "active", "sha256": folder_hashes(tiny_versions.v1),
             "source": {"kind": "path", "path": str(tiny_versions.v1)}, "canary_percent": 0},
            {"version": "v2", "status": "canary", "sha256": folder_hashes(tiny_versions.v2),
             "source": {"kind": "path", "path": str(tiny_versions.v2)}, "canary_percent": 30},
        ]
        text = ok(manage(env, "list"))
        assert "v2" in text and "canary 30 %" in text and "accuracy" in text

        assert ok(manage(env, "rollback", "sentiment")) == "sentiment: canary v2 dropped\n"
        ok(manage(env, "activate", "sentiment", "v2"))
        assert ok(manage(env, "rollback", "sentiment")) == "sentiment: v1 is active again\n"
        assert "is the active version" in refused(manage(env, "retire", "sentiment", "v1"))
        assert ok(manage(env, "retire", "sentiment", "v2")) == "sentiment v2: retired\n"
        assert [v["status"] for v in json.loads(ok(manage(env, "list", "--json")))["sentiment"]] == ["active", "retired"]

        # `make test` sets SENTIMENT_MODEL to a local folder, which cannot be pulled: the default Hub model is
        offline = refused(manage(env, "pull", "sentiment", "--version", "hub"))
        assert "the Hugging Face Hub is unreachable" in offline and "python manage.py models import sentiment PATH --version NAME" in offline
        assert "no serving named 'nope'" in refused(manage(env, "rollback", "nope"))

        import psycopg

        with psycopg.connect(url.replace("postgres://", "postgresql://", 1)) as conn:
            log = conn.execute("SELECT username, action, version FROM versions_modelaction ORDER BY id").fetchall()
        assert log[0] == ("ops", "add", "v1")
        assert [(a, v) for _, a, v in log[1:]] == [
            ("add", "v2"), ("validate", "v1"), ("validated", "v1"), ("validate", "v2"), ("validated", "v2"),
            ("activate", "v1"), ("canary", "v2"), ("rollback", "v2"), ("activate", "v2"), ("rollback", "v1"),
            ("retire", "v2"),
        ]
