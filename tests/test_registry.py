import pytest

from synfer.errors import ConfigError
from synfer.registry import Registry


def test_entries_register_once_and_unknown_names_get_one_line_naming_the_accepted():
    colours = Registry("colour")
    colours.register("red", 1)

    @colours.register("green")
    def green():
        return 2

    assert colours["red"] == 1 and colours.get("green")() == 2
    assert list(colours) == ["red", "green"] and "red" in colours and len(colours) == 2
    assert colours.choices() == "red or green"
    with pytest.raises(ConfigError, match=r"^unknown colour 'blue' \(accepted: red, green\)$"):
        colours["blue"]
    with pytest.raises(ConfigError, match="already registered"):
        colours.register("red", 3)


def test_kind_path_specs_are_parsed_and_checked():
    kinds = Registry("labeler kind")
    kinds.register("classifier", object())
    assert kinds.parse("classifier:runs/a:b") == ("classifier", "runs/a:b")
    with pytest.raises(ConfigError, match="KIND:PATH"):
        kinds.parse("runs/a")
    with pytest.raises(ConfigError, match="unknown labeler kind 'feranno'"):
        kinds.parse("feranno:x")
