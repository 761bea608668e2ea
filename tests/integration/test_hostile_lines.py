"""Property test: whatever bytes a batch file holds, a real job explains every line exactly once.

Each example is a small JSONL file drawn from valid items and every kind of hostile line the
worker promises to survive (see workers/runtime/items.py): not JSON, not UTF-8, nested past the
recursion limit, NaN and Infinity, custom_ids that are huge, fractional, too long or not valid
Unicode, wrong feature counts and types, lines over the byte limit. It runs through the real API,
PostgreSQL, Redis and a CPU worker against a registered scikit-learn classifier (4 features).

For every example the job must succeed, and its output and error files together must hold
exactly one line per item (non-blank input line), in input order, as strict UTF-8 JSON.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.factories import train_sklearn_classifier
from tests.helpers import register_ready, submit, upload, wait_done

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: The farm's default `max_line_bytes` (app/config.py): a longer line is an item and an error.
MAX_LINE_BYTES = 1024 * 1024
MAX_SAFE_INT = 2**53 - 1

Expect = Literal["ok", "error", "any"]


@dataclass(frozen=True)
class Farm:
    client: httpx.Client
    model: str


@pytest.fixture(scope="module")
def farm(
    api_url: str,
    services: dict[str, str],
    cpu_worker: object,
    sweeper: object,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Farm]:
    """One tenant and one registered 4-feature classifier for every example of the module
    (`client` is function-scoped, and Hypothesis runs many examples per test call)."""
    from app.services.tenants import create_api_key, get_or_create_tenant
    from app.unit_of_work import session_scope

    with session_scope() as session:
        tenant = get_or_create_tenant(session, f"hostile-{secrets.token_hex(6)}")
        key = create_api_key(session, tenant)
    path: Path = tmp_path_factory.mktemp("hostile") / "clf.skops"
    train_sklearn_classifier(path)
    with httpx.Client(
        base_url=api_url, headers={"Authorization": f"Bearer {key}"}, timeout=60
    ) as client:
        model_file = upload(client, path.read_bytes(), purpose="model", name=path.name)
        body = {"name": "hostile-clf", "framework": "sklearn", "file_id": model_file["id"]}
        yield Farm(client, register_ready(client, body)["model"])


# -- strategies: each draws (line bytes without b"\n", what the line must become) ---------------

Line = tuple[bytes, Expect]

finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)
feature = st.one_of(finite, st.integers(min_value=-1000, max_value=1000))
good_features = st.lists(feature, min_size=4, max_size=4)
good_custom_id = st.one_of(
    st.none(),
    st.text(max_size=20),  # NUL and any other (non-surrogate) code point included
    st.text(alphabet="xé€😀", min_size=505, max_size=512),  # at the 512-character limit
    st.integers(min_value=-MAX_SAFE_INT, max_value=MAX_SAFE_INT),
    st.sampled_from([MAX_SAFE_INT, -MAX_SAFE_INT, 0]),
)


def _dumps(obj: Any, ascii_only: bool) -> bytes:
    return json.dumps(obj, ensure_ascii=ascii_only).encode()


@st.composite
def valid_items(draw: st.DrawFn) -> Line:
    custom_id = draw(good_custom_id)
    item: dict[str, Any] = {"input": draw(good_features)}
    if custom_id is not None or draw(st.booleans()):
        item = {"custom_id": custom_id, **item}
    raw = _dumps(item, draw(st.booleans()))
    # Surrounding whitespace and Windows line ends are still the same JSON document.
    raw = draw(st.sampled_from([b"", b" ", b"\t"])) + raw + draw(st.sampled_from([b"", b"\r"]))
    return raw, "ok"


def _with_id(custom_id: Any, value: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "input": value}


wrong_features = st.one_of(
    st.lists(finite, max_size=10).filter(lambda v: len(v) != 4),  # wrong count
    st.lists(  # the right count with at least one value that is not a number
        st.one_of(finite, st.text(max_size=5), st.booleans(), st.none(), st.just([1.0])),
        min_size=4,
        max_size=4,
    ).filter(lambda v: any(isinstance(x, str | bool | list) or x is None for x in v)),
    st.text(max_size=30),  # text, for a model of numbers
    finite,
    st.booleans(),
    st.none(),
    st.fixed_dictionaries({"a": finite, "b": finite, "c": finite, "d": finite}),  # no names
)


@st.composite
def wrong_inputs(draw: st.DrawFn) -> Line:
    item = _with_id(draw(good_custom_id), draw(wrong_features))
    return _dumps(item, draw(st.booleans())), "error"


@st.composite
def missing_inputs(draw: st.DrawFn) -> Line:
    return _dumps({"custom_id": draw(good_custom_id), "inputs": [1, 2, 3, 4]}, True), "error"


@st.composite
def random_text(draw: st.DrawFn) -> Line:
    # Anything at all, even (in theory) a valid item, or whitespace only (then not an item).
    text = draw(st.text(max_size=200)).replace("\n", "")
    return text.encode("utf-8", "surrogatepass"), "any"


@st.composite
def random_bytes(draw: st.DrawFn) -> Line:
    # Starting with NUL bytes, json.loads takes bytes for UTF-16/32: "any" covers that too.
    return draw(st.binary(max_size=200)).replace(b"\n", b""), "any"


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), finite, st.text(max_size=20))
json_non_objects = st.one_of(
    json_scalars,
    st.recursive(
        st.lists(json_scalars, max_size=4),
        lambda children: st.lists(
            st.one_of(children, st.dictionaries(st.text(max_size=5), children, max_size=3)),
            max_size=4,
        ),
        max_leaves=10,
    ),
)


@st.composite
def not_objects(draw: st.DrawFn) -> Line:
    return _dumps(draw(json_non_objects), draw(st.booleans())), "error"


@st.composite
def deeply_nested(draw: st.DrawFn) -> Line:
    depth = draw(st.sampled_from([50_000, 5_000, 1_500, 990, 900, 500]))
    nest = b"[" * depth + b"1" + b"]" * depth
    shape = draw(st.sampled_from(["bare", "input", "feature", "custom_id", "unclosed", "object"]))
    if shape == "bare":
        return nest, "error"
    if shape == "unclosed":
        return b"[" * depth, "error"
    if shape == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth, "error"
    if shape == "input":
        return b'{"custom_id": 1, "input": ' + nest + b"}", "error"
    if shape == "feature":
        return b'{"custom_id": "f", "input": [' + nest + b", 1, 2, 3]}", "error"
    return b'{"custom_id": ' + nest + b', "input": [1, 2, 3, 4]}', "error"


@st.composite
def non_finite(draw: st.DrawFn) -> Line:
    literal = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999"]))
    where = draw(st.integers(min_value=0, max_value=4))
    if where == 4:
        return b'{"custom_id": ' + literal + b', "input": [1, 2, 3, 4]}', "error"
    features = [b"1.5"] * 4
    features[where] = literal
    return b'{"custom_id": "nf", "input": [' + b", ".join(features) + b"]}", "error"


@st.composite
def bad_custom_ids(draw: st.DrawFn) -> Line:
    kind = draw(
        st.sampled_from(
            ["huge", "unsafe", "float", "inf", "surrogate", "long", "bool", "list", "object"]
        )
    )
    raw_id: bytes
    if kind == "huge":  # past Python's 4300-digit int limit: the parser itself refuses it
        raw_id = draw(st.sampled_from([b"-", b""])) + b"9" * draw(st.sampled_from([4301, 5000]))
    elif kind == "unsafe":  # a real int, just past what a double holds exactly
        raw_id = str(draw(st.sampled_from([2**53, -(2**53), 10**100]))).encode()
    elif kind == "float":
        raw_id = draw(st.sampled_from([b"1.5", b"1e5", b"-0.0", b"1e308"]))
    elif kind == "inf":
        raw_id = draw(st.sampled_from([b"1e999", b"-1e999"]))
    elif kind == "surrogate":
        raw_id = draw(st.sampled_from([rb'"\ud800"', rb'"a\udfffb"', rb'"\udc00\ud800"']))
    elif kind == "long":
        raw_id = json.dumps("x" * draw(st.sampled_from([513, 600, 5000]))).encode()
    elif kind == "bool":
        raw_id = b"true"
    elif kind == "list":
        raw_id = b'["a"]'
    else:
        raw_id = b'{"id": 1}'
    return b'{"custom_id": ' + raw_id + b', "input": [1, 2, 3, 4]}', "error"


@st.composite
def invalid_utf8(draw: st.DrawFn) -> Line:
    bad = draw(
        st.sampled_from(
            [
                b"\xff",
                b"\xfe\xff",
                b"\xc0\x80",  # overlong NUL
                b"\xe2\x82",  # truncated sequence
                b"\x80",  # lone continuation byte
                b"\xf5\x80\x80\x80",  # past U+10FFFF
                b"\xed\xa0\x80",  # an encoded surrogate (json.loads on bytes lets it through)
            ]
        )
    )
    where = draw(st.sampled_from(["custom_id", "feature", "outside", "bare"]))
    if where == "custom_id":
        return b'{"custom_id": "a' + bad + b'", "input": [1, 2, 3, 4]}', "error"
    if where == "feature":
        return b'{"custom_id": "u", "input": [1, 2, 3, "' + bad + b'"]}', "error"
    if where == "outside":  # not inside any string: never JSON
        return b'{"custom_id": "u", ' + bad + b' "input": [1, 2, 3, 4]}', "error"
    # Even in a field nobody reads: the line is not UTF-8, so it is not a JSON text.
    return b'{"custom_id": "u", "note": "' + bad + b'", "input": [1, 2, 3, 4]}', "error"


@st.composite
def long_values(draw: st.DrawFn) -> Line:
    kind = draw(st.sampled_from(["feature", "input", "over_line_limit"]))
    if kind == "feature":
        feature_text = "y" * draw(st.sampled_from([600, 20_001, 200_000]))
        return _dumps(_with_id("lf", [1, 2, 3, feature_text]), True), "error"
    if kind == "input":
        return _dumps(_with_id("li", "z" * draw(st.sampled_from([513, 50_000]))), True), "error"
    # Over max_line_bytes: an item of its own, refused without being read whole.
    padding = "p" * (MAX_LINE_BYTES + draw(st.sampled_from([0, 1, 1000])))
    return _dumps({"custom_id": "big", "pad": padding, "input": [1, 2, 3, 4]}, True), "error"


@st.composite
def extreme_features(draw: st.DrawFn) -> Line:
    # Finite, but the model may overflow on them: a good output or an invalid_output error.
    extreme = st.sampled_from([1e308, -1e308, 5e-324, 1.7976931348623157e308, 10**300])
    values = draw(st.lists(st.one_of(finite, extreme), min_size=4, max_size=4))
    return _dumps(_with_id("x", values), True), "any"


@st.composite
def blank(draw: st.DrawFn) -> Line:
    # Whitespace only: not an item, so it gets no result line (and is not counted).
    return draw(st.sampled_from([b"", b" ", b"\t", b"\r", b" \t\r ", b"\x0b\x0c"])), "any"


hostile_line = st.one_of(
    valid_items(),
    wrong_inputs(),
    missing_inputs(),
    random_text(),
    random_bytes(),
    not_objects(),
    deeply_nested(),
    non_finite(),
    bad_custom_ids(),
    invalid_utf8(),
    long_values(),
    extreme_features(),
    blank(),
)


def _is_item(raw: bytes) -> bool:
    """What the worker counts as an item (workers/runtime/items.py, iter_lines)."""
    return len(raw) > MAX_LINE_BYTES or bool(raw.strip())


hostile_files = st.tuples(
    st.lists(hostile_line, min_size=1, max_size=30).filter(
        lambda lines: any(_is_item(raw) for raw, _ in lines)
    ),
    st.booleans(),  # whether the file ends with a newline
)


# -- checks ------------------------------------------------------------------------------------


def _refuse_constant(name: str) -> Any:
    raise AssertionError(f"{name} in a result file is not JSON")


def _assert_encodable(value: Any) -> None:
    """No string anywhere holds a lone surrogate (an escaped one is still not Unicode)."""
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, dict):
        for key, inner in value.items():
            _assert_encodable(key)
            _assert_encodable(inner)
    elif isinstance(value, list):
        for inner in value:
            _assert_encodable(inner)


def _strict_lines(client: httpx.Client, file_id: str | None) -> list[dict[str, Any]]:
    """A result file's lines, each checked as strict JSON, the whole file as strict UTF-8."""
    if file_id is None:
        return []
    response = client.get(f"/v1/files/{file_id}/content")
    assert response.status_code == 200, response.text
    data = response.content
    data.decode("utf-8")  # strict: raises on any invalid byte
    if not data:
        return []  # a job with nothing to put there still has the (empty) file
    assert data.endswith(b"\n"), data[-200:]
    parsed = []
    for line in data[:-1].split(b"\n"):
        assert line.strip(), "a blank line in a result file"
        obj = json.loads(line, parse_constant=_refuse_constant)
        assert isinstance(obj, dict), line[:200]
        _assert_encodable(obj)
        parsed.append(obj)
    return parsed


def _input_custom_id(raw: bytes) -> Any:
    """The custom_id the worker read from a line it accepted."""
    item = json.loads(raw)
    assert isinstance(item, dict)
    return item.get("custom_id")


def _describe(lines: list[Line]) -> str:
    return "\n".join(
        f"{n}: {expect} {raw[:120]!r}{'...' if len(raw) > 120 else ''} ({len(raw)} bytes)"
        for n, (raw, expect) in enumerate(lines, start=1)
    )


@settings(
    max_examples=8,
    deadline=None,
    database=None,  # nothing written under the checkout; a failure prints its example
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
    ],
)
@given(example=hostile_files)
def test_every_hostile_line_gets_exactly_one_result_line(
    farm: Farm, example: tuple[list[Line], bool]
) -> None:
    lines, trailing_newline = example
    content = b"\n".join(raw for raw, _ in lines) + (b"\n" if trailing_newline else b"")
    items = [n for n, (raw, _) in enumerate(lines, start=1) if _is_item(raw)]
    context = _describe(lines)

    file = upload(farm.client, content, name="hostile.jsonl")
    job = submit(farm.client, {"model": farm.model, "input": {"file_id": file["id"]}})
    job = wait_done(farm.client, job["id"])
    assert job["status"] == "succeeded", f"{job}\n{context}"

    outputs = _strict_lines(farm.client, job["output_file_id"])
    errors = _strict_lines(farm.client, job["error_file_id"])
    counts = job["counts"]
    assert counts["total"] == len(items), f"{counts}\n{context}"
    assert counts["succeeded"] + counts["failed"] == len(items), f"{counts}\n{context}"
    assert (counts["succeeded"], counts["failed"]) == (len(outputs), len(errors)), counts

    for error in errors:
        assert set(error) == {"custom_id", "error", "line"}, error
        assert set(error["error"]) == {"code", "message"}, error
        assert isinstance(error["error"]["code"], str) and error["error"]["code"], error
        assert isinstance(error["error"]["message"], str) and error["error"]["message"], error
    error_lines = [e["line"] for e in errors]
    assert error_lines == sorted(set(error_lines)), f"{error_lines}\n{context}"
    assert set(error_lines) <= set(items), f"error lines {error_lines} vs items {items}"

    # Every item not in the error file is in the output file, in input order.
    succeeded = [n for n in items if n not in set(error_lines)]
    assert len(outputs) == len(succeeded), f"{len(outputs)} outputs for {succeeded}\n{context}"
    for n, output in zip(succeeded, outputs, strict=True):
        assert set(output) == {"custom_id", "output"}, output
        assert output["custom_id"] == _input_custom_id(lines[n - 1][0]), f"line {n}\n{context}"
        assert output["output"]["label"] in {"low", "mid", "high"}, output
    # An error line that names a custom_id names its own line's.
    for error in errors:
        if error["custom_id"] is not None:
            expected = _input_custom_id(lines[error["line"] - 1][0])
            assert error["custom_id"] == expected, f"{error}\n{context}"

    # And what each kind of line had to become.
    for n, (_, expect) in enumerate(lines, start=1):
        if expect == "ok":
            assert n in succeeded, f"line {n} should have succeeded: {errors}\n{context}"
        elif expect == "error":
            assert n in error_lines, f"line {n} should be an error line\n{context}"
