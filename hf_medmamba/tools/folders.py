"""Writing a converted model as a Hub-ready folder atomically: compared with the reference output, saved into a
staging folder beside the target, verified in a fresh process, then moved into place (nothing left on failure)."""

import os
import shutil
import tempfile
from pathlib import Path

from .errors import ConversionError
from .verification import VerificationError, check_reference, verify_folder


def write_folder(
    model,
    processor,
    output_dir,
    card=None,
    overwrite=False,
    verify=True,
    reference_input=None,
    reference_output=None,
    reference_is="logits",
):
    """Compare ``model`` with the reference output when given (before writing anything), save it (config.json with
    its auto_map, model.safetensors, the remote-code files), ``processor`` and the model card (README.md) into a
    temporary folder next to ``output_dir``, verify that folder in a fresh process (`verify_folder`, unless ``verify``
    is False) and move it into place. Nothing is left behind on failure. Returns the measured differences."""
    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())) and not overwrite:
        raise ConversionError(f"{output_dir} exists and is not empty; pass --overwrite to replace it.")
    result = {}
    if reference_input is not None or reference_output is not None:
        if reference_input is None or reference_output is None:
            raise VerificationError("give both --reference-input and --reference-output.")
        result["reference_max_abs_diff"] = check_reference(model, reference_input, reference_output, reference_is)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{output_dir.name}-partial-", dir=output_dir.parent))
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        if card is not None:
            card.save(staging / "README.md")
        if verify:
            result.update(verify_folder(staging, model, reference_input, reference_output, reference_is))
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp's folder is private (0700); give it a normal folder's mode
        if output_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{output_dir.name}-old-", dir=output_dir.parent))
            os.replace(output_dir, old / output_dir.name)
            os.replace(staging, output_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, output_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return result
