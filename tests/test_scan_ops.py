"""The custom-op scheme (`hf_medmamba.scan_ops`): an operator is defined once per process, reused by a second copy of
the package with the same schema, and refused with a clear error when the schema differs."""

import pytest
import torch

from hf_medmamba.scan_ops import custom_op, existing_op


SCHEMA = "(Tensor x, int factor) -> Tensor"


def _twice(x, factor):
    return x * factor


def _twice_fake(x, factor):
    return torch.empty_like(x)


def test_defined_once_reused_with_the_same_schema_refused_with_another():
    op = custom_op("test_scale", SCHEMA, fake=_twice_fake)(_twice)
    assert existing_op("test_scale") is op
    assert torch.equal(op(torch.ones(2), 3), torch.full((2,), 3.0))

    def _twice_again(x, factor):  # a second copy of the same definition
        raise AssertionError("the existing operator must be reused, not redefined")

    assert custom_op("test_scale", SCHEMA, fake=_twice_fake)(_twice_again) is op
    assert torch.equal(op(torch.ones(2), 2), torch.full((2,), 2.0))

    def _other_version(x, factor, extra):
        return x

    other = "(Tensor x, float factor, bool extra) -> Tensor"
    with pytest.raises(RuntimeError, match=r"already defined as(.|\n)*Two different versions of hf_medmamba"):
        custom_op("test_scale", other, fake=_twice_fake)(_other_version)


def test_an_undefined_operator_is_none():
    assert existing_op("no_such_operator") is None
