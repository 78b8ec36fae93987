import json
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


# ---------------------------------------------------------------------------------------------------------------------
# Selective-scan inputs shared by the scan tests
# ---------------------------------------------------------------------------------------------------------------------


def make_inputs(b, d, L, n, g, dtype=torch.float32, dt_scale=1.0, a_scale=1.0, grouped=True, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    inputs = {
        "u": rand(b, d, L),
        "delta": rand(b, d, L) * dt_scale,
        "A": -torch.exp(rand(d, n)) * a_scale,
        "B": rand(b, g, n, L) if grouped else rand(b, n, L),
        "C": rand(b, g, n, L) if grouped else rand(b, n, L),
        "D": rand(d),
        "z": rand(b, d, L),
        "delta_bias": rand(d) * 0.5,
    }
    return {k: v.to(dtype) for k, v in inputs.items()}


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


OPTIONS = [
    {"D": True, "z": False, "delta_bias": True, "delta_softplus": True},  # how SS2D calls it
    {"D": False, "z": True, "delta_bias": False, "delta_softplus": False},
    {"D": True, "z": True, "delta_bias": True, "delta_softplus": True},
]


def call(fn, inp, opts, **kw):
    """``fn`` (`selective_scan` or a function with its signature) on the inputs of `make_inputs` with the options
    ``opts``. Without softplus the step sizes are made positive, as Mamba's callers do (negative ones explode)."""
    delta = inp["delta"] if opts["delta_softplus"] else torch.nn.functional.softplus(inp["delta"])
    return fn(
        inp["u"],
        delta,
        inp["A"],
        inp["B"],
        inp["C"],
        D=inp["D"] if opts["D"] else None,
        z=inp["z"] if opts["z"] else None,
        delta_bias=inp["delta_bias"] if opts["delta_bias"] else None,
        delta_softplus=opts["delta_softplus"],
        **kw,
    )


def pixel_orders(H, W):
    """The four scan orders written out as lists of (h, w), straight from the definition."""
    row_major = [(h, w) for h in range(H) for w in range(W)]
    col_major = [(h, w) for w in range(W) for h in range(H)]
    return [row_major, col_major, row_major[::-1], col_major[::-1]]
