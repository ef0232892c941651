"""core.record.Record behaves as `@dataclass(frozen=True)` for the same declarations: construction (and its
TypeErrors), defaults and factories, repr (hidden fields), ==, hash, replace, fields and immutability."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import SOAK
from edge_token.core.record import Record, field, fields, replace

EXAMPLES = 5000 if SOAK else 300


@dataclasses.dataclass(frozen=True)
class Reference:
    """The same fields as `Subject`, through the decorator."""

    a: int
    b: str = dataclasses.field(repr=False)  # no default, hidden from repr (where our secrets live)
    c: float = 1.5
    d: tuple[int, ...] = ()
    e: list[int] | tuple[int, ...] = dataclasses.field(default_factory=list)  # a new list for each instance
    f: str = dataclasses.field(default="x", compare=False)  # left out of == and hash
    k: ClassVar[int] = 7  # not a field


class Subject(Record):
    """The same fields as `Reference`, as a Record."""

    a: int
    b: str = field(repr=False)
    c: float = 1.5
    d: tuple[int, ...] = ()
    e: list[int] | tuple[int, ...] = field(default_factory=list)
    f: str = field(default="x", compare=False)
    k: ClassVar[int] = 7


NAMES = ("a", "b", "c", "d", "e", "f")
VALUES = {
    "a": st.integers(),
    "b": st.text(max_size=5),
    "c": st.floats(),  # NaN too: == compares tuples, where an identical NaN is equal to itself
    "d": st.lists(st.integers(), max_size=3).map(tuple),
    "e": st.lists(st.integers(), max_size=3) | st.lists(st.integers(), max_size=3).map(tuple),  # (un)hashable
    "f": st.text(max_size=3),
    "zz": st.integers(),  # not a field: both refuse it
}


@st.composite
def calls(draw: st.DrawFn) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Positional arguments (a prefix of the fields, sometimes one too many) and keywords (any names, some
    repeating a positional one, some unknown, some left out)."""
    count = draw(st.integers(0, len(NAMES) + 1))
    args = tuple(draw(VALUES[NAMES[i]] if i < len(NAMES) else st.integers()) for i in range(count))
    keys = draw(st.lists(st.sampled_from([*NAMES, "zz"]), unique=True, max_size=7))
    return args, {key: draw(VALUES[key]) for key in keys}


def build(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        return cls(*args, **kwargs)
    except TypeError:
        return TypeError


def hashed(value: object) -> object:
    try:
        return hash(value)
    except TypeError:
        return TypeError


def same_repr(subject: Subject, reference: Reference) -> bool:
    return repr(subject) == repr(reference).replace("Reference(", "Subject(", 1)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    first=calls(), second=calls(), changes=st.dictionaries(st.sampled_from([*NAMES, "zz"]), st.integers(), max_size=2)
)
def test_a_record_is_what_the_frozen_dataclass_would_be(
    first: tuple[tuple[Any, ...], dict[str, Any]],
    second: tuple[tuple[Any, ...], dict[str, Any]],
    changes: dict[str, Any],
) -> None:
    """For any call: both refuse it (TypeError) or both build an object with the same repr, ==, hash, fields;
    replace() gives the same answers; neither can be changed."""
    built = [(build(Subject, *call), build(Reference, *call)) for call in (first, second)]
    for subject, reference in built:
        assert (subject is TypeError) == (reference is TypeError)
        if subject is TypeError:
            continue
        assert same_repr(subject, reference)
        assert [getattr(subject, name) for name in NAMES] == [getattr(reference, name) for name in NAMES]
        assert hashed(subject) == hashed(reference)  # the same tuple of compared values (or both unhashable)
        with pytest.raises(dataclasses.FrozenInstanceError):
            subject.a = 1
        with pytest.raises(dataclasses.FrozenInstanceError):
            del subject.a
        changed, reference_changed = build_replaced(subject, reference, changes)
        assert (changed is TypeError) == (reference_changed is TypeError)
        if changed is not TypeError:
            assert same_repr(changed, reference_changed)
    (s1, r1), (s2, r2) = built
    if s1 is not TypeError and s2 is not TypeError:
        assert (s1 == s2) == (r1 == r2) and (s1 != s2) == (r1 != r2)
        assert (s1.e is s2.e) == (r1.e is r2.e)  # a factory's value is never shared
        assert s1 != r1  # another class is never equal, whatever its values


def build_replaced(subject: Subject, reference: Reference, changes: dict[str, Any]) -> tuple[Any, Any]:
    try:
        changed: Any = replace(subject, **changes)
    except TypeError:
        changed = TypeError
    try:
        reference_changed: Any = dataclasses.replace(reference, **changes)
    except TypeError:
        reference_changed = TypeError
    return changed, reference_changed


def test_class_level_view_matches_the_decorator() -> None:
    """Fields in order, ClassVars excluded, class attributes only for plain defaults (as the decorator leaves)."""
    assert fields(Subject) == tuple(item.name for item in dataclasses.fields(Reference)) == NAMES
    for name in (*NAMES, "k"):
        assert hasattr(Subject, name) == hasattr(Reference, name), name
        if hasattr(Reference, name):
            assert getattr(Subject, name) == getattr(Reference, name)


def test_a_record_class_cannot_be_subclassed() -> None:
    """Field inheritance is not implemented, so it is refused at class creation rather than half working."""
    with pytest.raises(TypeError, match="derives from Record alone"):

        class Sub(Subject):
            g: int = 0


def test_instances_take_no_more_memory_than_the_dataclass_ones() -> None:
    """Built with defaults or with every field, positionally or by keyword, a Record's attributes take what a
    frozen dataclass instance's take: its instances share one key table (filled whole, each had its own dict, and
    10,000 profiles took 14 MiB more)."""
    cases: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((1, "s"), {}),
        ((1,), {"b": "s", "f": "y"}),
        ((), {"a": 1, "b": "s", "c": 2.0, "d": (1,), "e": [], "f": "z"}),
    ]
    for args, kwargs in cases:
        subjects = [Subject(*args, **kwargs) for _ in range(3)]
        references = [Reference(*args, **kwargs) for _ in range(3)]
        assert sys.getsizeof(vars(subjects[-1])) <= sys.getsizeof(vars(references[-1])), (args, kwargs)
