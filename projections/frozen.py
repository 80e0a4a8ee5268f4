"""A faster ``__init__`` for frozen, slotted dataclasses: the fold builds one or two per event.

``dataclass(frozen=True)`` makes ``__init__`` set each field with ``object.__setattr__`` (its own
``__setattr__`` refuses), a generic lookup per field. ``fast_init`` gives the class an
``__init__`` with the same signature, defaults, default factories and ``__post_init__`` call that
sets each slot through its descriptor instead, about twice as fast. Everything else (equality,
hashing, immutability, ``dataclasses.replace``, pickling) is the dataclass's own.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")

_FACTORY = object()  # stands for a field's default factory in the signature


def fast_init(cls: type[T]) -> type[T]:
    """Replace the generated ``__init__`` of the frozen, slotted dataclass ``cls``."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} is not a frozen dataclass with slots")
    namespace: dict[str, Any] = {"_FACTORY": _FACTORY}
    signature: list[str] = []
    body: list[str] = []
    for i, f in enumerate(dataclasses.fields(cls)):  # type: ignore[arg-type]
        if not f.init or f.kw_only:
            raise TypeError(f"{cls.__name__}.{f.name}: only positional init fields are supported")
        namespace[f"_set{i}"] = cls.__dict__[f.name].__set__  # the slot's member descriptor
        if f.default is not dataclasses.MISSING:
            namespace[f"_default{i}"] = f.default
            signature.append(f"{f.name}=_default{i}")
        elif f.default_factory is not dataclasses.MISSING:
            namespace[f"_factory{i}"] = f.default_factory
            signature.append(f"{f.name}=_FACTORY")
            body.append(f"if {f.name} is _FACTORY: {f.name} = _factory{i}()")
        else:
            signature.append(f.name)
        body.append(f"_set{i}(self, {f.name})")
    if hasattr(cls, "__post_init__"):
        body.append("self.__post_init__()")
    source = f"def __init__(self, {', '.join(signature)}) -> None:\n"
    source += "".join(f"    {line}\n" for line in body or ["pass"])
    exec(source, namespace)  # generated from the field names, as dataclasses does
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls
