"""bigsmall.errors: one exception class per status code, raised by the C++ core."""
from __future__ import annotations

import pickle

import pytest

import bigsmall
from bigsmall import _core, errors

# code -> (class name, the built-in it also is, or None)
EXPECTED = {
    1: ("CancelledError", None),
    2: ("UnknownError", None),
    3: ("InvalidArgumentError", ValueError),
    4: ("DeadlineExceededError", TimeoutError),
    5: ("NotFoundError", FileNotFoundError),
    6: ("AlreadyExistsError", FileExistsError),
    7: ("PermissionDeniedError", PermissionError),
    8: ("ResourceExhaustedError", None),
    9: ("FailedPreconditionError", None),
    10: ("AbortedError", None),
    11: ("OutOfRangeError", None),
    12: ("UnimplementedError", None),
    13: ("InternalError", None),
    14: ("UnavailableError", None),
    15: ("DataLossError", None),
    16: ("UnauthenticatedError", None),
}


def test_status_codes_match_the_extensions():
    assert _core.STATUS_CODES == errors.CODES


@pytest.mark.parametrize("code", sorted(EXPECTED))
def test_the_extension_raises_the_class_of_each_code(code):
    name, builtin = EXPECTED[code]
    cls = getattr(bigsmall, name)
    assert cls is getattr(errors, name)
    with pytest.raises(cls) as info:
        _core._raise_status(code, f"message of {code}")
    e = info.value
    assert type(e) is cls
    assert isinstance(e, bigsmall.BigSmallError)
    if builtin is not None:
        assert isinstance(e, builtin)
    assert e.code == [k for k, v in _core.STATUS_CODES.items() if v == code][0]
    assert e.code_value == code
    assert e.message == f"message of {code}"
    assert str(e) == f"{e.code}: message of {code}"
    assert errors.error_class(code) is cls
    assert errors.error_class(e.code) is cls


def test_os_error_classes_carry_errno():
    import errno
    with pytest.raises(FileNotFoundError) as info:
        _core._raise_status(5, "no such model: /x.bs")
    assert info.value.errno == errno.ENOENT
    assert info.value.strerror == "no such model: /x.bs"
    with pytest.raises(PermissionError) as info:
        _core._raise_status(7, "denied")
    assert info.value.errno == errno.EACCES


def test_builtin_handlers_catch_them():
    try:
        _core._raise_status(3, "bad mode")
    except ValueError as e:
        assert isinstance(e, bigsmall.InvalidArgumentError)
    else:
        pytest.fail("no exception")


@pytest.mark.parametrize("code", sorted(EXPECTED))
def test_pickles(code):
    e = errors.from_status(code, "", "what happened")
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is type(e)
    assert (back.code, back.code_value, back.message) == (e.code, e.code_value, e.message)


def test_from_status_of_a_code_it_does_not_know():
    e = errors.from_status(42, "SOMETHING_NEW", "m")
    assert type(e) is errors.BigSmallError
    assert (e.code, e.code_value, e.message) == ("SOMETHING_NEW", 42, "m")
    assert errors.error_class("NO_SUCH_CODE") is errors.BigSmallError


def test_an_empty_message():
    e = errors.from_status(15, "DATA_LOSS", "")
    assert str(e) == "DATA_LOSS"


def test_real_errors_of_the_core_are_these_classes(tmp_path):
    with pytest.raises(bigsmall.NotFoundError) as info:
        bigsmall.info(tmp_path / "missing.bs")
    assert "missing.bs" in info.value.message
    assert isinstance(info.value, FileNotFoundError)
