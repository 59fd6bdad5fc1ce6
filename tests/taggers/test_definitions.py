"""Tag definition files: the managed service's format, YAML, validation errors, states, hash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imageindex.errors import ConfigError
from imageindex.taggers.definitions import (
    MAX_TAGS,
    load_tag_definitions,
    parse_states,
    parse_tag_definitions,
)

GUIDE_PROMPT = (
    "You are a seasoned driver with extensive experience on both highways and urban roads."
)

# The sample tag definition for autonomous driving, copied verbatim from the reference document
# (section 3.4.1, "Create a Smart Tag Definition").
AUTONOMOUS_DRIVING = """{
    "Reflective strips": "Usually yellow, or alternating yellow and black, attached to corners and other permanent protruding obstacles to alert drivers to avoid them. They are strip-shaped, not traffic cones, parking locks, or water-filled barriers.",
    "Parking locks": "Also known as parking space locks, they can be raised to prevent a parking space from being occupied. If a parking lock is present, you must specify whether it is in the raised or lowered state. It is in the raised state if it has a raised frame, otherwise it is in the lowered state.",
    "Lit construction vehicles": "The target is a vehicle with two arrow-shaped lights on the left and right that are lit. Otherwise, it does not exist.",
    "Overturned vehicles": "A vehicle that has overturned on the ground.",
    "Fallen water-filled barriers": "A water-filled barrier is a plastic shell obstacle used to divide road surfaces or form a blockage, typically in the form of a red plastic wall. It is commonly used in road traffic facilities and is often seen on highways, urban roads, and at overpass intersections. It is significantly larger than a traffic cone and has a sheet-like structure. Water-filled barriers are normally upright. If one is lying on the ground, it must be clearly indicated.",
    "Fallen traffic cones": "Also known as conical traffic markers or pylons, commonly called road cones or safety cones, they are cone-shaped temporary road signs. Obstacles that are rod-shaped or sheet-like are not traffic cones because they are not conical. A traffic cone may be knocked over by a car. If a traffic cone is present in the image and you need to determine if it has fallen, observe whether the bottom of the cone (the base of the cone) is in contact with the ground. If it is, it has not fallen. Otherwise, it has.",
    "Charging spaces": "A parking space against a wall with a visible charging gun, charging pile equipment, or marked as a new energy vehicle space is a charging space. It can only appear in a parking lot (indoor or outdoor). Note that parking locks are not related to charging.",
    "Speed bumps": "Usually yellow and black, or just yellow, these are narrow raised strips across the road, perpendicular to the road edge, used to slow down vehicles. They cannot appear within a parking space.",
    "Deceleration lane lines": "Dashed lines in a fishbone pattern on both sides of the lane, inside the solid lines. Both sides must have them to be considered deceleration lane lines.",
    "Ramps": "Can only be identified if there is a clear large curve on a highway. Ramps are usually on the right side of the main highway and are used to enter or exit toll stations.",
    "Ground shadows": "There are clear shadows on the ground.",
    "Cloudy": "Can only be identified if the sky is visible and there are clear clouds in the sky.",
    "Glaring car": "The lights of a car ahead are causing glare (the light changes from a single point to a line of light), usually occurring at night or on rainy days.",
    "Left turn, right turn, U-turn arrows": "Milky white arrow markings painted on the road surface (a few are yellow), not the green and white arrows on highway signs indicating a right curve. When determining the presence of these arrows, only clear arrow markings in the middle of the road lane are the target. Those on the roadside are not. If there are arrows on the ground, the direction is determined as follows: a right-turn arrow rotates clockwise from the base to the tip; a left-turn arrow rotates counter-clockwise from the base to the tip; a U-shaped arrow is a U-turn arrow.",
    "Crosswalks": "Can only exist on the road surface (also possible in parking lots) and at intersections. They must be white lines distributed at repeated intervals parallel to the road edge for pedestrian crossing. They cannot appear on highways, highway ramps, or in tunnels.",
    "Overexposure": "During the day, direct sunlight causes the lens to be overexposed (can only happen during the day).",
    "Motor vehicles": "There are other motor vehicles in the field of view.",
    "Merging in or out": "A place on a highway where multiple lanes merge into one, or one lane divides into multiple lanes.",
    "Intersections": "An intersection where there are no lane lines within the intersection area (refers to the absence of lines within the intersection itself; lines outside the intersection do not matter).",
    "No parking signs": "A sign, either hanging or standing on the ground, with the words 'No Parking' or a symbol of a 'P' in a circle with a diagonal line through it.",
    "Lane lines": "Lane lines on the road, with special attention to blurry lane lines.",
    "Fallen rocks or tires on the road": "Obstacles on the road that affect traffic.",
    "Tunnels": "Pay special attention to distinguishing between entering and exiting a tunnel.",
    "Wet ground on a rainy day": "The ground is slippery due to rain.",
    "Non-motorized vehicles": "Includes non-motorized objects such as bicycles, electric bikes, wheelchairs, unicycles, and shopping carts, which may be parked on the roadside, in parking spaces, or moving on the road."
  }"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_reference_example_loads_as_is(tmp_path):
    plain = load_tag_definitions(write(tmp_path, "ad.json", AUTONOMOUS_DRIVING))
    assert len(plain.tags) == 25  # the reference object has 25 entries
    assert plain.guide_prompt == ""
    assert list(plain.tags)[:2] == ["Reflective strips", "Parking locks"]  # order kept
    assert plain.states["Parking locks"] == ["raised", "lowered"]
    assert plain.states["Tunnels"] == ["entering", "exiting"]
    with_states = {name for name, states in plain.states.items() if states}
    assert with_states == {"Parking locks", "Tunnels"}
    assert plain.states["Reflective strips"] == []
    assert len(plain.hash) == 64

    structured = {"guide_prompt": GUIDE_PROMPT, "tags": json.loads(AUTONOMOUS_DRIVING)}
    full = load_tag_definitions(write(tmp_path, "ad2.json", json.dumps(structured)))
    assert full.guide_prompt == GUIDE_PROMPT
    assert full.tags == plain.tags and full.states == plain.states
    assert full.hash != plain.hash  # the guide prompt is part of the content


def test_yaml_with_the_same_keys(tmp_path):
    text = (
        f"guide_prompt: {GUIDE_PROMPT}\n"
        "tags:\n"
        "  Parking locks: If present, specify whether it is in the raised or lowered state.\n"
        "  Cloudy: Clear clouds in the sky.\n"
    )
    defs = load_tag_definitions(write(tmp_path, "t.yaml", text))
    assert defs.guide_prompt == GUIDE_PROMPT
    assert list(defs.tags) == ["Parking locks", "Cloudy"]
    assert defs.states["Parking locks"] == ["raised", "lowered"]
    same = parse_tag_definitions({"guide_prompt": GUIDE_PROMPT, "tags": dict(defs.tags)})
    assert same.hash == defs.hash


def test_the_bundled_sample_definitions_load():
    path = Path(__file__).resolve().parents[2] / "config" / "tags" / "samples.json"
    if not path.is_file():
        pytest.skip("config/tags/samples.json is not in this checkout")
    defs = load_tag_definitions(path)
    assert "Animal" in defs.tags and defs.guide_prompt


def test_hash_follows_content_not_order():
    base = parse_tag_definitions({"A": "first", "B": "second"})
    assert parse_tag_definitions({"B": "second", "A": "first"}).hash == base.hash
    assert parse_tag_definitions({"A": "first", "B": "second!"}).hash != base.hash
    assert parse_tag_definitions({"A": "first", "C": "second"}).hash != base.hash
    explicit = parse_tag_definitions(
        {"tags": {"A": "first", "B": "second"}, "states": {"A": ["on", "off"]}}
    )
    assert explicit.states["A"] == ["on", "off"] and explicit.hash != base.hash


@pytest.mark.parametrize(
    ("text", "states"),
    [
        ("You must specify whether it is in the raised or lowered state.", ["raised", "lowered"]),
        ("Specify if the door is open, closed, or ajar.", ["open", "closed", "ajar"]),
        ("Indicate whether the light is lit or not.", ["lit", "not lit"]),
        ("Pay attention to distinguishing between entering and exiting.", ["entering", "exiting"]),
        ("A sign, either hanging or standing on the ground.", []),
        ("Say whether or not it is raised.", []),
        ("Check whether it is present or absent.", []),
        ("Used to enter or exit toll stations.", []),
        ("", []),
    ],
)
def test_parse_states(text, states):
    assert parse_states(text) == states


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.json", '{"A": "x",\n  "B": }', r"invalid JSON at line 2"),
        ("bad.yaml", "tags:\n  A: [unclosed\n", r"invalid YAML at line \d"),
        ("list.json", '["A", "B"]', "expected an object of tag name -> description"),
        ("tags.json", '{"guide_prompt": "g", "tags": ["A"]}', "'tags' must be an object"),
        ("empty_name.json", '{"  ": "x"}', "empty name"),
        ("number.json", '{"A": 3}', "description of tag 'A' must be a string"),
        ("null.json", '{"A": null}', "description of tag 'A' must be a string, got null"),
        ("dup.json", '{"Cat": "a", "cat": "b"}', "duplicate tag name 'cat'"),
        ("exact_dup.json", '{"Cat": "a", "Cat": "b"}', "duplicate key 'Cat'"),
        ("dup.yaml", "Cat: a\nDog: b\nCat: c\n", "duplicate key 'Cat' at line 3"),
        ("none.json", "{}", "no tags defined"),
        ("prompt.json", '{"guide_prompt": 1, "tags": {"A": "x"}}', "'guide_prompt' must be"),
        (
            "extra.json",
            '{"tags": {"A": "x"}, "tagz": {}}',
            r"unknown top-level key\(s\) \['tagz'\]",
        ),
        ("states.json", '{"tags": {"A": "x"}, "states": {"B": ["u", "v"]}}', "not a defined tag"),
        ("yamlkey.yaml", "yes: x\n", "tag name True is not a string"),
    ],
)
def test_bad_files_are_config_errors_naming_the_file(tmp_path, name, text, message):
    path = write(tmp_path, name, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_tag_definitions(path)
    assert str(path) in str(info.value)


def test_missing_file_and_too_many_tags(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match="not found") as info:
        load_tag_definitions(missing)
    assert str(missing) in str(info.value)
    many = {f"tag {i}": "x" for i in range(MAX_TAGS + 1)}
    path = write(tmp_path, "many.json", json.dumps(many))
    with pytest.raises(ConfigError, match=f"more than the limit of {MAX_TAGS}") as info:
        load_tag_definitions(path)
    assert str(path) in str(info.value)
    assert len(parse_tag_definitions(dict(list(many.items())[:MAX_TAGS])).tags) == MAX_TAGS
