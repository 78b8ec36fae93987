"""Folders saved by an earlier main (before the scan engine and the forward passes were reorganised) load into
today's classes with every parameter in place and give the same logits and hidden states, bit for bit, on each
CPU scan backend (tests/fixtures/saved_before_refactor/README.md)."""

import pytest
import torch
from transformers import AutoModelForImageClassification, AutoModelForSemanticSegmentation

import hf_medmamba  # noqa: F401  (registers the classes)

from .conftest import FIXTURES


SAVED = FIXTURES / "saved_before_refactor"
AUTO_CLASSES = {
    "medmamba": AutoModelForImageClassification,
    "vmamba": AutoModelForImageClassification,
    "vmunet": AutoModelForSemanticSegmentation,
}


@pytest.mark.parametrize("name", sorted(AUTO_CLASSES))
@pytest.mark.parametrize("backend", ["reference", "chunked", "cpu_kernel"])
def test_folder_saved_before_the_refactor_gives_identical_outputs(name, backend):
    model, info = AUTO_CLASSES[name].from_pretrained(SAVED / name, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    model.eval().set_scan_backend(backend)
    expected = torch.load(SAVED / name / "outputs.pt", weights_only=True)[backend]
    with torch.no_grad():
        out = model(torch.load(SAVED / "input.pt", weights_only=True), output_hidden_states=True)
    assert torch.equal(out.logits, expected["logits"])
    assert len(out.hidden_states) == len(expected["hidden_states"])
    for got, want in zip(out.hidden_states, expected["hidden_states"]):
        assert torch.equal(got, want)
