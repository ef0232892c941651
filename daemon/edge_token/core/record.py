"""Immutable value classes that cost nothing to define: `class Token(Record)` behaves as `@dataclass(frozen=True)`.

Why not the dataclass decorator: on Python 3.11 it writes the source of five or six methods for every class and
compiles them when the module is imported, about 0.7 ms a class. The 19 value classes on the path of
`edge-token once` cost 14 ms of a cold start the libraries themselves make ~290 ms long (issue 15: once at most
1.05x a bare aiohttp+joserfc script). A Record gets the same behaviour from methods written once, here:

- built like the dataclass: fields in annotation order, positional or by keyword, defaults and
  `field(default_factory=...)`; a missing, repeated or unknown argument is a TypeError;
- immutable: assigning or deleting an attribute raises FrozenInstanceError, as on a frozen dataclass;
- `==` and `hash()` over the fields (`field(compare=False)` leaves one out), only between instances of the
  same class;
- `repr()` names each field but those declared `field(repr=False)` (where a secret may live); a class may
  define its own `__repr__`, `__eq__`...: those win, as with the decorator's `repr=False`;
- `replace(record, **changes)` and `fields(record)`, as in `dataclasses`.

Type checkers see a frozen dataclass (`typing.dataclass_transform`), so mypy checks every construction, field
order and assignment as before. A Record subclass cannot itself be subclassed (no field inheritance): none of
ours needs it, and refusing it keeps this module short.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import FrozenInstanceError
from itertools import repeat
from typing import Any, ClassVar, TypeVar, dataclass_transform, get_origin

R = TypeVar("R", bound="Record")
_MISSING: Any = object()
_SET = object.__setattr__
_consume: Callable[[Iterable[Any]], None] = deque(maxlen=0).extend  # runs an iterator to its end, keeping nothing


class _Field:
    """What `field(...)` declared for one attribute; read once, when the class is created."""

    __slots__ = ("compare", "default", "factory", "repr")

    def __init__(self, default: Any, factory: Callable[[], Any] | None, repr: bool, compare: bool) -> None:
        self.default, self.factory, self.repr, self.compare = default, factory, repr, compare


def field(
    *,
    default: Any = _MISSING,
    default_factory: Callable[[], Any] | None = None,
    repr: bool = True,
    compare: bool = True,
) -> Any:
    """A field with options, as `dataclasses.field`: a default or a default factory, left out of repr or of ==."""
    return _Field(default, default_factory, repr, compare)


class _Layout:
    """A Record class's fields, computed once when the class is created."""

    __slots__ = ("compared", "defaults", "factories", "name_set", "names", "shown")

    def __init__(self, cls: type) -> None:
        names: list[str] = []
        self.defaults: dict[str, Any] = {}
        self.factories: dict[str, Callable[[], Any]] = {}
        hidden: set[str] = set()
        uncompared: set[str] = set()
        for name, annotation in inspect.get_annotations(cls).items():
            if _is_class_var(annotation):
                continue
            names.append(name)
            value = cls.__dict__.get(name, _MISSING)
            if isinstance(value, _Field):
                if not value.repr:
                    hidden.add(name)
                if not value.compare:
                    uncompared.add(name)
                if value.factory is not None:
                    self.factories[name] = value.factory
                value = value.default
                if value is _MISSING:
                    delattr(cls, name)  # as the decorator does: no class attribute for a field without a default
                else:
                    setattr(cls, name, value)
            if value is not _MISSING:
                self.defaults[name] = value
        self.names, self.name_set = tuple(names), frozenset(names)
        self.shown = tuple(name for name in names if name not in hidden)
        self.compared = tuple(name for name in names if name not in uncompared)


def _is_class_var(annotation: object) -> bool:
    """`ClassVar[...]` annotations are not fields (a string under `from __future__ import annotations`)."""
    if isinstance(annotation, str):
        return annotation.startswith(("ClassVar", "typing.ClassVar"))
    return annotation is ClassVar or get_origin(annotation) is ClassVar


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
class Record:
    """Base of the immutable value classes (see the module docstring)."""

    _layout: ClassVar[_Layout]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__bases__ != (Record,):
            raise TypeError(f"{cls.__qualname__}: a Record subclass derives from Record alone (no field inheritance)")
        cls._layout = _Layout(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        layout = self._layout
        if args:
            if len(args) > len(layout.names) or not kwargs.keys().isdisjoint(layout.names[: len(args)]):
                raise TypeError(f"{type(self).__qualname__}(): too many positional arguments, or one given twice")
            kwargs.update(zip(layout.names, args, strict=False))
        if kwargs.keys() != layout.name_set:  # some left to their defaults (or a wrong name)
            kwargs = self._complete(kwargs)
        # one attribute at a time, in declaration order: the instances of a class then share one key table (a
        # dict filled whole does not; it cost 10,000 profiles 14 MiB). In C (`map`): a loop here in Python was 11
        # bytecodes a field, 4 records and 540 bytecodes a renewal
        names = layout.names
        _consume(map(_SET, repeat(self, len(names)), names, map(kwargs.__getitem__, names)))

    def _complete(self, given: dict[str, Any]) -> dict[str, Any]:
        """`given` with the defaults of the fields it lacks; a TypeError for an unknown or a missing one."""
        layout = self._layout
        values = layout.defaults | given
        for name, factory in layout.factories.items():
            if name not in given:
                values[name] = factory()
        if values.keys() != layout.name_set:
            unknown = sorted(values.keys() - layout.name_set)
            if unknown:
                raise TypeError(f"{type(self).__qualname__}(): unexpected argument {unknown[0]!r}")
            missing = [name for name in layout.names if name not in values]
            raise TypeError(f"{type(self).__qualname__}(): missing argument {missing[0]!r}")
        return values

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __repr__(self) -> str:
        values = self.__dict__
        shown = ", ".join(f"{name}={values[name]!r}" for name in self._layout.shown)
        return f"{type(self).__qualname__}({shown})"

    def _key(self) -> tuple[Any, ...]:
        """The compared fields' values, as the decorator's __eq__ and __hash__ tuple them."""
        values = self.__dict__
        return tuple(values[name] for name in self._layout.compared)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


def fields(record: Record | type[Record]) -> tuple[str, ...]:
    """The field names of a Record (class or instance), in declaration order."""
    return record._layout.names


def replace(record: R, **changes: Any) -> R:
    """A copy of `record` with some fields changed, as `dataclasses.replace` makes one."""
    values: Mapping[str, Any] = record.__dict__
    return type(record)(**{name: values[name] for name in record._layout.names} | changes)
