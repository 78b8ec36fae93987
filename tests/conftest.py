import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings


# Property-based tests: a CI-friendly number of examples by default, many more with HYPOTHESIS_PROFILE=slow.
settings.register_profile("ci", max_examples=20, deadline=None)
settings.register_profile("slow", max_examples=400, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def shared_path(*parts):
    """A path under ../shared (CI has it beside the checkout); fail loudly rather than skip when it is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"{path} is missing: the tests read ../shared beside the checkout (see README, 'Tests').")
    return path


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

    root = shared_path("data", "busi_cls", split)
    images, labels = [], []
    for index, name in enumerate(sorted(p.name for p in root.iterdir())):
        for path in sorted((root / name).glob("*.png"))[:per_class]:
            with PIL.Image.open(path) as image:
                images.append(image.copy())
            labels.append(index)
    return images, labels
