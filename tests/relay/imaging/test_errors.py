"""Imaging errors: HTTP answers, French messages, and pickling across a process pool."""

from __future__ import annotations

import pickle

import pytest

from relay.errors import RelayError
from relay.imaging import errors

ALL = [getattr(errors, name) for name in errors.__all__]


@pytest.mark.parametrize("error_class", ALL)
def test_each_error_carries_its_answer_and_survives_pickling(
    error_class: type[errors.ImagingError],
) -> None:
    error = error_class()
    assert isinstance(error, RelayError)
    assert 400 <= error.http_status < 600
    assert error.code and error.code.islower()
    assert error.message == error_class.default_message
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes, as a pool does
    assert type(copy) is error_class
    assert (copy.message, copy.code, copy.http_status) == (
        error.message,
        error.code,
        error.http_status,
    )
    custom = pickle.loads(pickle.dumps(error_class("Message précis.")))  # noqa: S301
    assert custom.message == "Message précis." and str(custom) == "Message précis."


def test_errors_are_frozen() -> None:
    error = errors.CorruptImage()
    with pytest.raises(AttributeError):
        error.code = "other"
    with pytest.raises(AttributeError):
        error.message = "autre"
    error.add_note("the interpreter may still annotate it")
    try:
        raise error
    except errors.CorruptImage as caught:
        assert caught.__traceback__ is not None


def test_codes_are_unique() -> None:
    codes = [error_class.code for error_class in ALL]
    assert len(codes) == len(set(codes))


def test_statuses() -> None:
    assert errors.UnsupportedImageFormat.http_status == 415
    assert errors.ImageTooLarge.http_status == 413
    assert errors.CorruptImage.http_status == 422
    assert errors.DicomTooLarge.http_status == 413
    assert errors.PacsUnavailable.http_status == 502
