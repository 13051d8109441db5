"""Servings by name: one module, one decorator, clear errors."""

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
