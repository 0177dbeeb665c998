"""Hypothesis strategies for client frames: mostly wrong, sometimes right."""

from __future__ import annotations

import json

from hypothesis import strategies as st

KEYS = ["type", "id", "to", "content", "contentType", "seq", "from"]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)

field_values = st.one_of(
    json_values,
    st.sampled_from([0, 1, 2, 10, 11, 12, 13, 14, 99, -1, 2**64, 2**64 - 1, "0", "1-1", ""]),
    st.sampled_from(["17", "18446744073709551615", "18446744073709551616", "-1", "1e3"]),
    st.text(st.characters(codec=None), max_size=30),  # lone surrogates included
    st.from_regex(r"\A[0-9]{1,20}(-[0-9]{1,20})?\Z"),
)

objects = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), field_values, max_size=7)

frames = st.one_of(
    objects.map(json.dumps),
    st.text(max_size=200),
    st.binary(max_size=200),
    json_values.map(json.dumps),
    objects.map(lambda o: json.dumps(o)[: max(1, len(json.dumps(o)) // 2)]),  # truncated
)
