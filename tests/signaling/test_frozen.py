"""``quick_init``: a frozen dataclass built by filling ``__dict__`` is the dataclass's own
instance (same attributes, equality, hash, repr, refusal of assignment), for every message
and action class that uses it; classes it cannot serve are refused at import time."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import InitVar, dataclass, field
from typing import Any, ClassVar

import pytest

from signaling.frozen import quick_init
from signaling.messages import (
    CLIENT_MESSAGE_TYPES,
    SERVER_MESSAGE_TYPES,
    ConsentRecord,
    ParticipantInfo,
    RelayedCandidate,
)
from signaling.room import Close, Send


@dataclass(frozen=True)
class _Reference:
    TYPE: ClassVar[str] = "sample"
    to: str
    count: int
    note: str | None = None
    flag: bool = True


@quick_init
@dataclass(frozen=True)
class _Quick:
    TYPE: ClassVar[str] = "sample"
    to: str
    count: int
    note: str | None = None
    flag: bool = True


_CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    (("b", 1), {}),
    (("b", 1, "x"), {}),
    (("b", 1, None, False), {}),
    ((), {"to": "b", "count": 2}),
    (("b",), {"count": 3, "flag": False}),
]


@pytest.mark.parametrize(("args", "kwargs"), _CALLS)
def test_the_same_instance_as_the_dataclass_init(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    quick, reference = _Quick(*args, **kwargs), _Reference(*args, **kwargs)
    assert vars(quick) == vars(reference)
    assert dataclasses.astuple(quick) == dataclasses.astuple(reference)
    assert repr(quick).replace("_Quick", "_Reference") == repr(reference)
    twin = _Quick(*args, **kwargs)
    assert quick == twin and hash(quick) == hash(twin)
    assert quick != _Quick("other", 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        quick.to = "c"  # type: ignore[misc]


def test_same_signature_and_same_argument_errors() -> None:
    assert str(inspect.signature(_Quick)) == str(inspect.signature(_Reference))
    for bad in ((), ("b",), ("b", 1, None, True, "extra")):
        with pytest.raises(TypeError):
            _Reference(*bad)
        with pytest.raises(TypeError):
            _Quick(*bad)
    with pytest.raises(TypeError):
        _Quick("b", 1, unknown=1)  # type: ignore[call-arg]


def test_every_message_and_action_class_uses_it() -> None:
    classes = [
        ConsentRecord,
        ParticipantInfo,
        Send,
        Close,
        *CLIENT_MESSAGE_TYPES.values(),
        *SERVER_MESSAGE_TYPES.values(),
    ]
    for cls in classes:
        assert cls.__init__.__qualname__ == f"{cls.__qualname__}.__init__"
        assert cls.__init__.__code__.co_filename == "<string>"
        names = [f.name for f in dataclasses.fields(cls)]
        assert list(inspect.signature(cls).parameters) == names, cls


def test_a_relayed_candidate_keeps_its_defaults() -> None:
    relayed = RelayedCandidate("doc-1", "candidate:1")
    assert vars(relayed) == {
        "sender": "doc-1",
        "candidate": "candidate:1",
        "sdp_mid": None,
        "sdp_mline_index": None,
        "username_fragment": None,
    }
    assert relayed == RelayedCandidate(sender="doc-1", candidate="candidate:1", sdp_mid=None)


def _not_frozen() -> type[Any]:
    @dataclass
    class Plain:
        a: int

    return Plain


def _post_init() -> type[Any]:
    @dataclass(frozen=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            if self.a < 0:
                raise ValueError("negative")

    return Checked


def _factory() -> type[Any]:
    @dataclass(frozen=True)
    class WithFactory:
        a: dict[str, int] = field(default_factory=dict)

    return WithFactory


def _keyword_only() -> type[Any]:
    @dataclass(frozen=True, kw_only=True)
    class KeywordOnly:
        a: int

    return KeywordOnly


def _init_var() -> type[Any]:
    @dataclass(frozen=True)
    class WithInitVar:
        a: int
        b: InitVar[int]

    return WithInitVar


def _slots() -> type[Any]:
    @dataclass(frozen=True, slots=True)
    class Slotted:
        a: int

    return Slotted


def _not_in_init() -> type[Any]:
    @dataclass(frozen=True)
    class Computed:
        a: int
        b: int = field(default=0, init=False)

    return Computed


def _own_init() -> type[Any]:
    @dataclass(frozen=True)
    class OwnInit:
        a: int

        def __init__(self, a: int) -> None:  # kept by @dataclass: it does more than store
            object.__setattr__(self, "a", abs(a))

    return OwnInit


def _reserved_name() -> type[Any]:
    @dataclass(frozen=True)
    class Reserved:
        _quick_d: int

    return Reserved


def _no_init() -> type[Any]:
    @dataclass(frozen=True, init=False)
    class NoInit:
        a: int = 0

    return NoInit


@pytest.mark.parametrize(
    "make",
    [
        _not_frozen,
        _post_init,
        _factory,
        _keyword_only,
        _init_var,
        _slots,
        _not_in_init,
        _own_init,
        _reserved_name,
        _no_init,
    ],
    ids=lambda make: make.__name__,
)
def test_classes_whose_init_does_more_are_refused(make: Any) -> None:
    cls = make()
    with pytest.raises(TypeError):
        quick_init(cls)


@quick_init
@dataclass(frozen=True)
class _Named:
    a: int
    d: str = "default"  # a field named like a local of a naive generated __init__
    self_: tuple[int, ...] = ()


def test_any_field_name_is_stored_and_hints_resolve_in_the_module() -> None:
    named = _Named(1, "x", (2,))
    assert (named.a, named.d, named.self_) == (1, "x", (2,))
    assert _Named(1) == _Named(1, "default", ())
    # The generated __init__ reads its annotations with the module's names, as the
    # dataclass's own did.
    hints = typing.get_type_hints(_Named.__init__)
    assert hints["a"] is int and hints["d"] is str
    assert inspect.signature(_Named, eval_str=True).parameters["a"].annotation is int
