"""Frozen dataclasses that are cheap to build.

Every relayed frame builds three of them (the parsed message, the relayed one, the ``Send``
action), and ``dataclass(frozen=True)`` makes each field cost an ``object.__setattr__`` call
in ``__init__`` (its own ``__setattr__`` refuses): about 0.1 µs a field. Measured on the
bench's mix of offers, answers and candidates, room plus serialisation: 5.2 µs a frame with
the dataclass ``__init__``, 4.2 µs with this one. ``quick_init`` gives such a class an
``__init__`` that stores the fields straight into the instance ``__dict__``: the very
instance the dataclass's ``__init__`` builds, so equality, hashing, ``repr`` and the refusal
of later assignment are the dataclass's own.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from typing import Any, TypeVar

_T = TypeVar("_T")


def quick_init(cls: type[_T]) -> type[_T]:
    """Replace the ``__init__`` of frozen dataclass ``cls`` by one that fills ``__dict__``.

    Only for classes whose generated ``__init__`` does nothing else: frozen, no slots, no
    ``__post_init__``, no ``InitVar``, no ``default_factory``, no keyword-only field; the
    parameters (names, order, defaults) stay the same. Anything else raises ``TypeError``
    at import time rather than build a different object.
    """
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or not params.init:
        raise TypeError(f"{cls.__name__} is not a frozen dataclass with a generated __init__")
    if "__slots__" in cls.__dict__ or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__}: slots or __post_init__ need the dataclass __init__")
    if cls.__init__.__code__.co_filename != "<string>":
        # dataclasses generates its __init__ from source text; one written in the class body
        # (which @dataclass keeps) may do more than store the fields.
        raise TypeError(f"{cls.__name__}: its own __init__ would be replaced")
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    original = list(inspect.signature(cls.__init__).parameters.values())[1:]
    if [p.name for p in original] != [f.name for f in fields]:  # an InitVar, kw-only...
        raise TypeError(f"{cls.__name__}: __init__ parameters are not exactly its fields")
    defaults: dict[str, Any] = {}
    arguments = []
    lines = []
    for f, parameter in zip(fields, original, strict=True):
        if (
            f.default_factory is not dataclasses.MISSING
            or parameter.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD
            or f.name == "self"
            or f.name.startswith("_quick_")  # the generated code's own names
        ):
            raise TypeError(f"{cls.__name__}.{f.name}: unsupported field")
        if f.default is dataclasses.MISSING:
            arguments.append(f.name)
        else:
            defaults[f"_quick_default_{f.name}"] = f.default
            arguments.append(f"{f.name}=_quick_default_{f.name}")
        lines.append(f"        _quick_d[{f.name!r}] = {f.name}")
    body = ["        _quick_d = self.__dict__", *lines] if fields else ["        pass"]
    # As dataclasses does: a factory taking the defaults, run with the class's module as
    # globals, so the __init__ resolves its annotations (typing.get_type_hints) like the
    # original. Built from the class's own field names (identifiers), never outside input.
    source = "\n".join(
        [
            f"def _quick_factory({', '.join(defaults)}):",
            f"    def __init__(self, {', '.join(arguments)}):",
            *body,
            "    return __init__",
        ]
    )
    namespace: dict[str, Any] = {}
    exec(source, sys.modules[cls.__module__].__dict__, namespace)  # noqa: S102
    init = namespace["_quick_factory"](**defaults)
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = cls.__init__.__doc__
    init.__annotations__ = dict(cls.__init__.__annotations__)  # the same signature, typed
    setattr(cls, "__init__", init)  # noqa: B010 - mypy refuses a direct method assignment
    return cls
