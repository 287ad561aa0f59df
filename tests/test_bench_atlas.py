"""The atlas-text task's data: built offline and the same every time, its countries and
capitals invented (none of the demo's, so the base never read them), and its validation
documents other documents about the same facts."""

from __future__ import annotations

import random

from bench.controller.lora_tasks import atlas_data, atlas_facts
from scu_tui.demo import build


def test_atlas_data_is_fixed_and_its_countries_are_new() -> None:
    data = atlas_data()
    assert data == atlas_data()
    assert (len(data["train"]), len(data["valid"])) == (800, 64)
    train = [row["text"] for row in data["train"]]
    valid = [row["text"] for row in data["valid"]]
    assert all(text.strip() for text in train + valid)
    assert not set(valid) & set(train)  # no document is in both

    invented = atlas_facts(48, random.Random(29))  # the facts atlas_data() draws first
    names = {name for fact in invented for name in (fact.x, fact.y)}
    assert len(names) == 96
    assert not names & {name for pair in build.CAPITALS for name in pair}
    said, held = " ".join(train), " ".join(valid)
    assert all(fact.x in said for fact in invented)  # every new country is taught
    assert sum(fact.x in held for fact in invented) >= 10  # and asked about again
