"""Hints a small model's repair needs (issue 28): a name that is no call id, where text
was meant, is an undefined reference whose message shows the text in quotes."""

from __future__ import annotations

import pytest

from prefect_llmorch.plan.errors import PlanError
from prefect_llmorch.plan.parser import parse


@pytest.mark.parametrize("plan, hint", [
    ('s1: detect(frame_001.png, size=2000)', '"frame_001.png"'),      # the real model's KITTI plan
    ('s1: f()\ns2: reserve(type=Standard)', '"Standard"'),            # NESTFUL sgd_0's
])
def test_an_unquoted_text_is_an_undefined_reference_with_the_text_quoted_as_hint(plan, hint):
    with pytest.raises(PlanError) as info:
        parse(plan)
    assert str(info.value).endswith(f"if it is text, write it in double quotes: {hint}")


@pytest.mark.parametrize("plan", ['s1: f()\ns2: f(sl)', 's1: f(s3)', 's1: f()\ns2: f($4)'])
def test_a_mistyped_or_missing_id_gets_no_quote_hint(plan):
    with pytest.raises(PlanError) as info:
        parse(plan)
    assert "double quotes" not in str(info.value)


def test_a_name_in_braces_inside_a_string_gets_no_quote_hint():
    with pytest.raises(PlanError) as info:
        parse('s1: f(1)\ns2: g(["Fill in {name}"])')
    assert str(info.value).endswith("defined so far: s1")
