"""Servings by name: one module, one decorator, clear errors; entry points; checks when built."""

import importlib
import sys
import textwrap

import pytest

import mlservices
from mlservices import InvalidInput, Prepared, Serving, ServingNotFound


@pytest.fixture
def reverse():
    @mlservices.register("reverse")
    def factory(suffix: str = "") -> Serving:
        return Serving(
            name="reverse",
            load=lambda device: None,
            preprocess=lambda model, text: Prepared(text),
            inference=lambda model, items: [t[::-1] + suffix for t in items],
            postprocess=lambda model, output, context: output,
        )

    yield factory
    mlservices.registry.unregister("reverse")


def test_discover_finds_the_shipped_servings():
    assert "sentiment" in mlservices.discover()


def test_build_passes_options_and_serving_level_overrides(reverse):
    serving = mlservices.build("reverse", suffix="!", batch_size=4)
    assert serving.batch_size == 4
    assert serving.setup("cpu").run("abc") == "cba!"


def test_unknown_serving_lists_the_known_ones(reverse):
    with pytest.raises(ServingNotFound, match="no serving named 'revrse'; known servings: .*reverse"):
        mlservices.build("revrse")


def test_unknown_option_lists_the_known_ones(reverse):
    with pytest.raises(InvalidInput, match="unknown option.*sufix.*known options: suffix, batch_size"):
        mlservices.build("reverse", sufix="!")


def test_bad_batch_size_names_the_value_and_the_fix(reverse):
    with pytest.raises(InvalidInput, match="batch_size=0; use an integer of at least 1"):
        mlservices.build("reverse", batch_size=0)


def test_building_does_no_io():
    """A serving is a value: building the default sentiment serving touches no file or network."""
    serving = mlservices.build("sentiment", model="/nonexistent/folder")
    assert serving.name == "sentiment" and serving.batch_size == 16


def test_preprocess_must_return_prepared():
    serving = Serving(
        name="sloppy",
        load=lambda device: None,
        preprocess=lambda model, x: x,
        inference=lambda model, items: items,
        postprocess=lambda model, output, context: output,
    )
    with pytest.raises(mlservices.ServingFailed, match="must return mlservices.Prepared"):
        serving.setup("cpu").run(1)


# --- one name, one factory -------------------------------------------------------------


def write_module(root, dotted: str, source: str) -> None:
    """``root/<dotted as a path>.py`` holding ``source``; the packages on the way get an ``__init__.py``."""
    *packages, leaf = dotted.split(".")
    folder = root
    for package in packages:
        folder = folder / package
        folder.mkdir(exist_ok=True)
        (folder / "__init__.py").touch()
    (folder / f"{leaf}.py").write_text(textwrap.dedent(source))


def write_distribution(root, name: str, entry_points: dict[str, str], version: str = "1.0") -> None:
    """What ``pip install`` leaves in site-packages: ``<name>-<version>.dist-info`` with METADATA
    and entry_points.txt (the module files are written by the caller)."""
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = [f"{key} = {value}" for key, value in entry_points.items()]
    (info / "entry_points.txt").write_text("[mlservices.servings]\n" + "\n".join(lines) + "\n")


ECHO_MODULE = """
    from mlservices import Prepared, Serving, register


    def make() -> Serving:
        return Serving(
            name="{name}",
            load=lambda device: None,
            preprocess=lambda model, input: Prepared(input),
            inference=lambda model, items: [{{"echo": item}} for item in items],
            postprocess=lambda model, output, context: output,
        )

    {decorate}
"""


@pytest.fixture
def forget():
    """Names and modules a test registered or imported, dropped afterwards."""
    names, modules = [], []
    yield names, modules
    for name in names:
        mlservices.registry.unregister(name)
    for module in list(sys.modules):
        if any(module == m or module.startswith(m + ".") for m in modules):
            del sys.modules[module]


def test_a_second_factory_under_a_taken_name_names_both_modules(tmp_path, monkeypatch, forget):
    names, modules = forget
    names.append("dup")
    modules.extend(["clash_a", "clash_b"])
    for package in ("clash_a", "clash_b"):
        write_module(tmp_path, f"{package}.servings", ECHO_MODULE.format(name="dup", decorate='make = register("dup")(make)'))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("clash_a.servings")
    with pytest.raises(
        mlservices.registry.NameClash,
        match=r"serving name 'dup' is registered twice: by clash_a\.servings\.make and by clash_b\.servings\.make; "
        r"rename one of them",
    ):
        importlib.import_module("clash_b.servings")
    assert mlservices.registry.factory("dup").__module__ == "clash_a.servings"  # the first one stands


def test_importing_the_same_module_again_is_no_clash(tmp_path, monkeypatch, forget):
    names, modules = forget
    names.append("again")
    modules.append("again_pkg")
    write_module(tmp_path, "again_pkg.mod", ECHO_MODULE.format(name="again", decorate='make = register("again")(make)'))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("again_pkg.mod")
    importlib.reload(module)  # a new function object, the same qualified name
    assert mlservices.build("again").setup("cpu").run("x") == {"echo": "x"}


def test_a_clash_with_a_shipped_serving_is_refused():
    mlservices.discover()
    with pytest.raises(mlservices.registry.NameClash, match=r"'sentiment' is registered twice: by "
                       r"mlservices\.servings\.sentiment\.sentiment and by tests\.test_registry\."):
        mlservices.register("sentiment")(lambda: None)
    assert mlservices.registry.factory("sentiment").__module__ == "mlservices.servings.sentiment"


# --- entry points: `pip install some-servings` is the whole change ----------------------


def test_discover_loads_entry_points_naming_a_module_or_a_factory(tmp_path, monkeypatch, forget):
    names, modules = forget
    names.extend(["acme_echo", "acme_plain"])
    modules.append("acme_servings")
    write_module(tmp_path, "acme_servings.echo",
                 ECHO_MODULE.format(name="acme_echo", decorate='make = register("acme_echo")(make)'))
    write_module(tmp_path, "acme_servings.plain", ECHO_MODULE.format(name="acme_plain", decorate=""))
    write_distribution(tmp_path, "acme-servings", {
        "acme_echo": "acme_servings.echo",  # a module: importing it registers
        "acme_plain": "acme_servings.plain:make",  # a bare factory: registered under the entry point's name
    })
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "acme_echo" not in mlservices.names()

    found = mlservices.discover()

    assert {"acme_echo", "acme_plain", "sentiment", "embeddings"} <= set(found)
    assert mlservices.build("acme_echo").setup("cpu").run(1) == {"echo": 1}
    assert mlservices.build("acme_plain").setup("cpu").run(2) == {"echo": 2}
    assert mlservices.discover() == found  # again: the same modules, no clash


def test_a_broken_entry_point_names_the_distribution_and_the_entry_point(tmp_path, monkeypatch, forget):
    write_distribution(tmp_path, "broken-servings", {"oops": "broken_servings_missing.mod"}, version="2.3")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        mlservices.registry.BrokenEntryPoint,
        match=r"entry point oops = 'broken_servings_missing\.mod' \(group mlservices\.servings\) of "
        r"broken-servings 2\.3 failed to load: ModuleNotFoundError: .*Fix that distribution or uninstall it",
    ):
        mlservices.discover()


def test_an_entry_point_naming_neither_a_module_nor_a_factory_is_refused(tmp_path, monkeypatch, forget):
    _, modules = forget
    modules.append("odd_servings")
    write_module(tmp_path, "odd_servings.values", "NOT_A_FACTORY = 42\n")
    write_distribution(tmp_path, "odd-servings", {"odd": "odd_servings.values:NOT_A_FACTORY"})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(mlservices.registry.BrokenEntryPoint, match="of odd-servings 1.0 .*names a int, not a module"):
        mlservices.discover()


def test_extra_packages_come_from_the_environment(tmp_path, monkeypatch, forget):
    names, modules = forget
    names.append("env_echo")
    modules.append("env_servings")
    write_module(tmp_path, "env_servings.echo",
                 ECHO_MODULE.format(name="env_echo", decorate='make = register("env_echo")(make)'))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("MLSERVICES_EXTRA_SERVINGS", "env_servings")
    assert "env_echo" in mlservices.discover()


# --- a malformed serving fails when built ------------------------------------------------


def toy_factory(name: str, **fields):
    def factory() -> Serving:
        return Serving(
            name=name,
            load=lambda device: None,
            preprocess=lambda model, input: Prepared(input),
            inference=lambda model, items: items,
            postprocess=lambda model, output, context: output,
            **fields,
        )

    return factory


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"spec": mlservices.InputSpec(options=(mlservices.Option("n", int, 9, maximum=5),))},
         r"the default of option 'n' is invalid \(malformed: option n=9: use 5 or less\); change the default"),
        ({"spec": mlservices.InputSpec(options=(mlservices.Option("mode", str, "fast", choices=("slow",)),))},
         r"the default of option 'mode' is invalid \(malformed: option mode='fast': choose one of 'slow'\)"),
        ({"spec": mlservices.InputSpec(options=(mlservices.Option("flag", bool, "yes please"),))},
         r"the default of option 'flag' is invalid .*send a boolean"),
        ({"spec": mlservices.InputSpec(options=(mlservices.Option("k", int, 2, minimum=5, maximum=1),))},
         r"option 'k' has minimum 5 above its maximum 1; swap them"),
        ({"spec": mlservices.InputSpec(options=(mlservices.Option("size", int, 1, choices=(1, "2")),))},
         r"option 'size' of type int offers the choice '2'; make every choice of type int"),
        ({"spec": mlservices.InputSpec(kind="text", max_chars=0)}, r"input spec max_chars=0; use a number above 0"),
        ({"check_result": "not a function"}, r"check_result is 'not a function'; give it a function or None"),
        ({"smoke": "one input"}, r"smoke='one input'; give a tuple of inputs"),
    ],
)
def test_a_malformed_serving_is_refused_when_built(fields, message):
    mlservices.register("malformed")(toy_factory("malformed", **fields))
    try:
        with pytest.raises(InvalidInput, match=message):
            mlservices.build("malformed")
    finally:
        mlservices.registry.unregister("malformed")


def test_an_unknown_spec_kind_is_refused_when_built():
    def factory() -> Serving:
        return toy_factory("video", spec=mlservices.InputSpec(kind="video"))()

    mlservices.register("video")(factory)
    try:
        with pytest.raises(InvalidInput, match=r"input spec kind='video'; use one of text, image, audio, json"):
            mlservices.build("video")
    finally:
        mlservices.registry.unregister("video")


def test_a_factory_that_returns_no_serving_is_refused():
    mlservices.register("nothing")(lambda: {"name": "nothing"})
    try:
        with pytest.raises(InvalidInput, match=r"returned a dict; return an mlservices.Serving"):
            mlservices.build("nothing")
    finally:
        mlservices.registry.unregister("nothing")
