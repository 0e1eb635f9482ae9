"""cdlib.registry: one lookup and one error text for models, data sets, schedules and recipes."""

from __future__ import annotations

import pytest

from cdlib import ConfigError, data, models, recipes, schedules
from cdlib.registry import Registry


def test_lookup_register_decorator_and_lock():
    things = Registry("thing")

    @things.register("alpha")
    def alpha():
        return 1

    things.register("beta", 2, locked=True)
    assert things.get("alpha") is alpha and things.get("beta") == 2
    assert things.names() == ["alpha", "beta"] and "alpha" in things and "gamma" not in things
    things.register("alpha", 3)  # an unlocked name can be replaced (a notebook cell run twice)
    assert things.get("alpha") == 3
    with pytest.raises(ConfigError, match="'beta' is a shipped thing and cannot be replaced"):
        things.register("beta", 4)
    with pytest.raises(ConfigError, match="a thing name is a non-empty string"):
        things.register("  ", 5)


@pytest.mark.parametrize("lookup, wrong, kind, suggestion", [
    (schedules.get, "cosin", "schedule", "cosine"),
    (recipes.get, "dem", "recipe", "demo"),
    (models.create, "cifar_resnet5", "model", "cifar_resnet50"),
    (data.load, "digit", "data set", "digits"),
])
def test_every_name_table_speaks_with_one_voice(lookup, wrong, kind, suggestion):
    with pytest.raises(ConfigError) as info:
        lookup(wrong)
    message = str(info.value)
    assert message.startswith(f"unknown {kind} {wrong!r}; known: ")
    assert message.endswith(f"; did you mean {suggestion!r}?")


def test_no_suggestion_when_nothing_is_close_and_non_strings_are_named():
    with pytest.raises(ConfigError, match=r"unknown recipe 'zzzzzz'; known: .*demo.*\.$"):
        recipes.get("zzzzzz")
    # A list is not a misspelt name: the sentence says a name is a string (and still lists the names).
    with pytest.raises(ConfigError, match=r"^a recipe name is a string, got list \"\['demo'\]\"; known: .*demo"):
        recipes.get(["demo"])
