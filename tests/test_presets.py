"""Presets: parameter budgets (counted on the meta device) and the config JSON round trip.

`pytest -s tests/test_presets.py` prints the table of parameter counts.
"""
import json

import pytest

from streamedit_core.config import PRESETS, ModelConfig, get_preset
from streamedit_core.model import count_parameters

# (lowest, highest) total parameters, STLE + DiT + refiner.
BUDGETS = {
    "tiny": (0, 2_000_000),
    "demo": (10_000_000, 20_000_000),  # ships in the repo: at most 40 MB in fp16 (issue 7)
    "2b": (0.9 * 2.0e9, 1.1 * 2.0e9),
    "10b": (0.9 * 1.0e10, 1.1 * 1.0e10),
}


def test_every_preset_has_a_budget():
    assert sorted(BUDGETS) == sorted(PRESETS)


@pytest.mark.parametrize("name", sorted(BUDGETS))
def test_parameter_budget(name):
    counts = count_parameters(get_preset(name))
    low, high = BUDGETS[name]
    line = (f"{name:>5}: stle {counts['stle']:>14,}  dit {counts['dit']:>14,}  "
            f"total {counts['total']:>14,}  (budget {low:,.0f} .. {high:,.0f})")
    print(line)  # the table `pytest -s` shows
    assert low <= counts["total"] <= high, line


def test_tiny_dit_stays_small():
    # The tiny DiT is what every CPU test runs: keep it around 1M parameters.
    assert count_parameters(get_preset("tiny"))["dit"] <= 1_200_000


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_json_round_trip_is_identity(name):
    config = get_preset(name)
    again = ModelConfig.from_json(config.to_json())
    assert again == config
    assert again.to_json() == config.to_json()


@pytest.mark.parametrize("where", ["top", "dit", "text_member", "stle", "sampler"])
def test_unknown_keys_raise(where):
    d = json.loads(get_preset("tiny").to_json())
    target = {"top": d, "dit": d["dit"], "text_member": d["dit"]["text_members"][0],
              "stle": d["stle"], "sampler": d["sampler"]}[where]
    target["bogus_key"] = 1
    with pytest.raises(ValueError, match="unknown keys \\['bogus_key'\\]"):
        ModelConfig.from_json(json.dumps(d))


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="unknown preset 'huge'.*'tiny'"):
        get_preset("huge")
