import importlib
import importlib.util
import json
import os
import shutil
import sys
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
EXAMPLES = REPO / "examples"
DATA = EXAMPLES / "data"  # the bundled datasets (see examples/data/README.md)
SCRIPTS = REPO / "conversion"
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


# ---------------------------------------------------------------------------------------------------------------------
# The remote-code files each model's saved folder carries (the remote-code tests and the Hub tests)
# ---------------------------------------------------------------------------------------------------------------------

SHARED_FILES = {
    "configuration_ssm.py",
    "modeling_common.py",
    "ss2d.py",
    "selective_scan.py",
    "scan_backends.py",
    "scan_common.py",
    "scan_directions.py",
    "scan_reference.py",
    "scan_chunked.py",
    "scan_export.py",
    "scan_kernels.py",
    "scan_ops.py",
    "scan_triton.py",
    "scan_triton_kernels.py",
    "vss_layers.py",
    "validation.py",
}
PROCESSING = {"image_processing_common.py"}
REMOTE_FILES = {
    "medmamba": SHARED_FILES
    | PROCESSING
    | {"configuration_medmamba.py", "modeling_medmamba.py", "image_processing_medmamba.py"},
    "vmamba": SHARED_FILES
    | PROCESSING
    | {"configuration_vmamba.py", "modeling_vmamba.py", "image_processing_vmamba.py"},
    "vmunet": SHARED_FILES
    | PROCESSING
    | {"configuration_vmunet.py", "modeling_vmunet.py", "losses.py", "image_processing_vmunet.py"},
}


# ---------------------------------------------------------------------------------------------------------------------
# Conversion: the scripts in conversion/ and fake upstream checkpoints (the conversion and verification tests)
# ---------------------------------------------------------------------------------------------------------------------

TINY_SIZES = {"depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128]}
TINY = {**TINY_SIZES, "drop_path_rate": 0.0}


def load_script(name):
    """A conversion/ script as a module (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"conversion_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name, argv, capsys):
    """Run a script's main through its CLI wrapper: (exit status, stdout, stderr)."""
    from hf_medmamba.tools.convert import run_cli

    status = run_cli(load_script(name).main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def strip(state_dict, old, new=""):
    return {(new + k[len(old) :] if k.startswith(old) else k): v.clone() for k, v in state_dict.items()}


def upstream_medmamba(model):
    """Our MedMamba's weights under upstream's key names (the inverse of MEDMAMBA_PREFIXES)."""
    return strip(model.state_dict(), "medmamba.")


def upstream_vmamba(model):
    return strip(model.state_dict(), "vmamba.")


def upstream_vmunet(model):
    return strip(model.state_dict(), "final_conv.", "vmunet.final_conv.")


def perturb(model):
    """Non-trivial norms, biases and BatchNorm statistics, so that a wrong mapping cannot match by accident."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and ("norm" in name or "bias" in name or "running" in name or ".0." in name):
                tensor.add_(0.1 * torch.rand(tensor.shape, generator=generator))
    return model.eval()


def logits(model, x):
    with torch.no_grad():
        return model(x).logits


def read_key_list(name):
    """An upstream key list as {key: shape}."""
    return {key: shape for key, (shape, _) in key_list(name).items()}


def perturbed_medmamba(**kwargs):
    """A tiny MedMamba (3 labels) with `perturb`ed weights."""
    from hf_medmamba import MedMambaConfig, MedMambaForImageClassification

    return perturb(MedMambaForImageClassification(MedMambaConfig(**TINY, num_labels=3, **kwargs)))


def perturbed_vmamba(**kwargs):
    """A tiny VMamba (5 labels unless given) with `perturb`ed weights."""
    from hf_medmamba import VMambaConfig, VMambaForImageClassification

    kwargs.setdefault("num_labels", 5)
    return perturb(VMambaForImageClassification(VMambaConfig(**TINY, **kwargs)))


def perturbed_vmunet(**kwargs):
    """A tiny VM-UNet (binary sigmoid head unless labels are given) with `perturb`ed weights."""
    from hf_medmamba import VMUNetConfig, VMUNetForSegmentation

    if "num_labels" not in kwargs:
        kwargs.setdefault("id2label", {0: "background", 1: "lesion"})
        kwargs.setdefault("sigmoid_head", True)
    return perturb(VMUNetForSegmentation(VMUNetConfig(**TINY, depths_decoder=[1, 1, 1, 1], **kwargs)))


# ---------------------------------------------------------------------------------------------------------------------
# Saved folders of tiny random models (the remote-code scan and Hub tests)
# ---------------------------------------------------------------------------------------------------------------------


def tiny_model_and_processor(kind):
    """A tiny random ``"medmamba"``, ``"vmamba"`` or ``"vmunet"`` model and the processor saved with it."""
    from hf_medmamba import (
        MedMambaConfig,
        MedMambaForImageClassification,
        MedMambaImageProcessor,
        VMambaConfig,
        VMambaForImageClassification,
        VMambaImageProcessor,
        VMUNetConfig,
        VMUNetForSegmentation,
        VMUNetImageProcessor,
    )

    if kind == "medmamba":
        config = MedMambaConfig(**TINY_SIZES, id2label={0: "benign", 1: "malignant", 2: "normal"})
        return MedMambaForImageClassification(config), MedMambaImageProcessor.for_model(config, image_size=64)
    if kind == "vmamba":
        config = VMambaConfig(**TINY_SIZES, num_labels=4)
        return VMambaForImageClassification(config), VMambaImageProcessor.for_model(config)
    config = VMUNetConfig(
        **TINY_SIZES, depths_decoder=[1, 1, 1, 1], id2label={0: "background", 1: "lesion"}, sigmoid_head=True
    )
    return VMUNetForSegmentation(config), VMUNetImageProcessor.for_model(config)


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    """Saved folders of the three tiny models, by kind; tests that change one work on a `copy_of` it."""
    root = tmp_path_factory.mktemp("saved")
    out = {}
    for kind in ("medmamba", "vmamba", "vmunet"):
        model, processor = tiny_model_and_processor(kind)
        model.save_pretrained(root / kind)
        processor.save_pretrained(root / kind)
        out[kind] = root / kind
    return out


def copy_of(folder, tmp_path, name="copy"):
    return shutil.copytree(folder, tmp_path / name)


# ---------------------------------------------------------------------------------------------------------------------
# The example scripts (the end-to-end example tests and the training tests)
# ---------------------------------------------------------------------------------------------------------------------

TINY_MEDMAMBA = '{"depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128]}'
TINY_VMUNET = '{"depths": [1, 1, 1, 1], "depths_decoder": [1, 1, 1, 1], "dims": [16, 32, 64, 128]}'


def example(name):
    """Import an example script as a module (examples/ is not a package)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)


def data_dir(name):
    path = DATA / name
    if not path.is_dir():
        pytest.fail(f"{path} is missing: the examples' bundled data (examples/data) must be in the checkout")
    return str(path)


def common_args(output_dir, cache_dir):
    return ["--output_dir", str(output_dir), "--cache_dir", cache_dir, "--disable_tqdm", "True", "--seed", "0"]


@pytest.fixture
def one_thread():
    """Tiny models run as fast on one thread, and OpenMP threads that busy-wait slow down badly on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def ct_model(tmp_path_factory):
    """A tiny VM-UNet trained for 3 steps on the bundled CT slices with the synapse recipe (which stores the CT window
    in its processor): its folder, the model and the processor (shared by the session; do not change them)."""
    from transformers import AutoModelForSemanticSegmentation
    from transformers.models.auto.image_processing_auto import AutoImageProcessor

    root = tmp_path_factory.mktemp("ct_model")
    example("run_semantic_segmentation").main(
        [
            "--data_dir", str(data_path("ct_abdomen_organs", "slices")), "--config_overrides", TINY_VMUNET,
            "--recipe", "synapse", "--image_size", "64", "--max_train_samples", "8", "--do_train",
            "--num_overlays", "0", "--max_steps", "3", "--per_device_train_batch_size", "4",
            *common_args(root / "model", str(root / "cache")),
        ]
    )  # fmt: skip
    folder = root / "model"
    model = AutoModelForSemanticSegmentation.from_pretrained(folder).eval()
    return folder, model, AutoImageProcessor.from_pretrained(folder)
