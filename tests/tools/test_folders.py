"""Writing folders (`hf_medmamba.tools.folders.write_folder`): nothing is left behind when a check fails, an existing
folder is replaced only with ``overwrite``."""

import pytest
import torch

from hf_medmamba import MedMambaImageProcessor
from hf_medmamba.tools.errors import ConversionError
from hf_medmamba.tools.folders import write_folder
from hf_medmamba.tools.verification import VerificationError

from ..conftest import logits, perturbed_medmamba


def test_failed_verification_leaves_nothing_behind(tmp_path):
    model = perturbed_medmamba()
    x = torch.randn(1, 3, 64, 64)
    torch.save(x, tmp_path / "input.pt")
    torch.save(logits(model, x) + 1e-3, tmp_path / "wrong.pt")
    out = tmp_path / "out"
    with pytest.raises(VerificationError, match="differs from the reference output"):
        write_folder(
            model,
            MedMambaImageProcessor.for_model(model.config),
            out,
            verify=False,
            reference_input=tmp_path / "input.pt",
            reference_output=tmp_path / "wrong.pt",
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.pt", "wrong.pt"]
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ConversionError, match="--overwrite"):
        write_folder(model, MedMambaImageProcessor.for_model(model.config), out, verify=False)
    write_folder(model, MedMambaImageProcessor.for_model(model.config), out, verify=False, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.pt", "out", "wrong.pt"]
