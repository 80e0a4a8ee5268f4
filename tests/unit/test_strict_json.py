"""``strict_json.loads``: exactly ``json.loads`` on JSON, and an error on what is not JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enforcement.api import strict_json

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(JSON_VALUES)
def test_json_reads_as_the_standard_library_reads_it(value: Any) -> None:
    for text in (json.dumps(value), json.dumps(value, ensure_ascii=False, indent=1)):
        assert strict_json.loads(text.encode()) == json.loads(text)


@given(JSON_VALUES, st.text(), st.data())
def test_a_member_named_twice_anywhere_is_refused(value: Any, name: str, data: Any) -> None:
    member = f"{json.dumps(name)}: {json.dumps(value)}"
    twice = f"{{{member}, {member}}}"
    # Nested a few levels down, inside arrays and objects alike.
    for _ in range(data.draw(st.integers(0, 3))):
        twice = data.draw(st.sampled_from([f"[{twice}]", f'{{"x": {twice}}}']))
    with pytest.raises(json.JSONDecodeError, match="same member twice") as caught:
        strict_json.loads(twice.encode())
    assert caught.value.pos is None


@pytest.mark.parametrize(
    ("number", "shown"),
    [
        ("1e999", "1e999"),
        ("-1e999", "-1e999"),
        ("1.5e400", "1.5e400"),
        ("1" + "0" * 400 + ".5", "1" + "0" * 19),  # the reason shows its first 20 characters
    ],
)
def test_a_number_beyond_a_double_is_refused_not_read_as_infinity(number: str, shown: str) -> None:
    """Python reads ``1e999`` as infinity, which JSON cannot write back: an item echoing it
    made the batch's answer a 500."""
    assert json.loads(number) in (float("inf"), float("-inf"))
    with pytest.raises(json.JSONDecodeError) as caught:
        strict_json.loads(f'{{"account_id": [{number}, 18446744073709551616]}}'.encode())
    assert caught.value.msg == f"the number {shown} is out of range"
    assert strict_json.loads(b"[1e308, -2.5e-300, 0.1]") == [1e308, -2.5e-300, 0.1]


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_the_constants_python_adds_to_json_are_refused(constant: str) -> None:
    with pytest.raises(json.JSONDecodeError, match=f"{constant} is not a JSON value"):
        strict_json.loads(f'{{"factor": {constant}}}'.encode())


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
def test_only_utf_8_is_read(encoding: str) -> None:
    body = '{"description": "ünïcode"}'.encode(encoding)
    assert json.loads(body) == {"description": "ünïcode"}  # Python's parser takes it
    with pytest.raises(json.JSONDecodeError, match="not UTF-8"):
        strict_json.loads(body)


def test_the_position_of_a_bad_byte_counts_characters_before_it() -> None:
    with pytest.raises(json.JSONDecodeError) as caught:
        strict_json.loads('{"d": "é'.encode() + b"\xff" + b'"}')
    assert caught.value.pos == len('{"d": "é')


def test_after_a_byte_order_mark_a_bad_byte_is_found_where_it_is() -> None:
    body = '{"d": "éé'.encode() + b"\xff" + b'"}'
    for prefix in (b"", b"\xef\xbb\xbf"):
        with pytest.raises(json.JSONDecodeError) as caught:
            strict_json.loads(prefix + body)
        assert caught.value.pos == len('{"d": "éé')


def test_whatever_else_the_parser_refuses_is_a_decode_error() -> None:
    """Python converts integers of up to 4,300 digits; a longer one is a ``ValueError`` that
    FastAPI would answer 400 ``bad_request`` before asking who the caller is."""
    with pytest.raises(json.JSONDecodeError) as caught:
        strict_json.loads(b'{"tokens": ' + b"9" * 5000 + b"}")
    assert caught.value.msg == "a number has more digits than the parser takes"  # not Python's


def test_a_byte_order_mark_is_ignored_and_deep_nesting_is_an_error() -> None:
    assert strict_json.loads(b'\xef\xbb\xbf{"a": 1}') == {"a": 1}
    with pytest.raises(json.JSONDecodeError, match="nested too deeply"):
        strict_json.loads(b"[" * 100_000 + b"]" * 100_000)
