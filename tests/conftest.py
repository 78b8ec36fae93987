import json
import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings


# The Triton scan tests run in Triton's CPU interpreter where there is no GPU. Triton reads this switch when it is
# imported (by hf_medmamba or by torch), so it is set here, before any test module imports either.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Property-based tests: a CI-friendly number of examples by default, many more with HYPOTHESIS_PROFILE=slow.
settings.register_profile("ci", max_examples=20, deadline=None)
settings.register_profile("slow", max_examples=400, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data"  # the bundled datasets (see examples/data/README.md)
FIXTURES = REPO / "tests" / "fixtures"  # upstream reference cases and key lists (see tests/fixtures/README.md)
SHARED = Path(os.environ.get("HF_MEDMAMBA_SHARED", REPO.parent / "shared"))

# Upstream reference cases: the two micro cases ship in tests/fixtures; the larger ones stay in ../shared.
SHIPPED_CASES = ("medmamba_micro", "vmunet_micro")


def data_path(*parts):
    """A file of the bundled datasets in examples/data (part of the repository: missing means a broken checkout)."""
    path = DATA.joinpath(*parts)
    assert path.exists(), f"{path} is missing from the checkout"
    return path


def key_list(name):
    """An upstream state-dict key list shipped in tests/fixtures/upstream/keys: {key: (shape, dtype name)}."""
    entries = {}
    for line in (FIXTURES / "upstream" / "keys" / name).read_text().splitlines():
        if not line.startswith("#"):
            key, shape, dtype = line.split("\t")
            entries[key] = (tuple(int(s) for s in shape.strip("(),").split(",") if s.strip()), dtype)
    return entries


def shared_path(*parts):
    """A path under ../shared, for tests marked ``shared`` only (opt-in: ``python -m pytest -m shared``).

    Skips with the missing folder named when it is absent: a clone of this repository alone has no ../shared."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is missing: this opt-in test reads ../shared beside the checkout (or $HF_MEDMAMBA_SHARED)")
    return path


def upstream_case(name):
    """Folder of an upstream reference case (state_dict.pth, input.pt, output.pt, intermediates.pt, meta.json)."""
    if name in SHIPPED_CASES:
        return FIXTURES / "upstream" / name
    return shared_path("spec", "reference", name)


def upstream_case_kwargs(root):
    """The upstream constructor arguments of a reference case (from its meta.json)."""
    return json.loads((root / "meta.json").read_text())["kwargs"]


# Cases of the upstream-parity tests: the shipped micro case always, the tiny case from ../shared with -m shared.
MEDMAMBA_CASES = ["medmamba_micro", pytest.param("medmamba_tiny", marks=pytest.mark.shared)]
VMUNET_CASES = ["vmunet_micro", pytest.param("vmunet_tiny", marks=pytest.mark.shared)]


@pytest.fixture(autouse=True)
def _seed_and_clean_env(monkeypatch):
    torch.manual_seed(0)
    monkeypatch.delenv("HF_MEDMAMBA_SCAN_BACKEND", raising=False)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine); run on a GPU host with -m gpu")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def busi_cls_images(split="train", per_class=2):
    """A few real BUSI ultrasound images per class (PIL, gray) with their class index, in class order."""
    import PIL.Image

    root = data_path("busi_cls", split)
    images, labels = [], []
    for index, name in enumerate(sorted(p.name for p in root.iterdir())):
        for path in sorted((root / name).glob("*.png"))[:per_class]:
            with PIL.Image.open(path) as image:
                images.append(image.copy())
            labels.append(index)
    return images, labels
