"""torch.export and ONNX export of the three models, checked against PyTorch eager with onnxruntime.

The default run (``-m 'not slow'``) exports exactly one tiny model (MedMamba, 64 px, dynamic batch, shared by three
tests) and checks it on random and real images; the other models, the torch.export programs, a fixed batch, a dynamic
image size and the CLI are marked slow. The export scan backend itself is checked against the reference scan in
tests/test_selective_scan.py.
"""

import copy

import onnx
import PIL.Image
import pytest
import torch

from hf_medmamba import (
    MedMambaConfig,
    MedMambaForImageClassification,
    MedMambaImageProcessor,
    VMambaConfig,
    VMambaForImageClassification,
    VMUNetConfig,
    VMUNetForSegmentation,
    VMUNetImageProcessor,
)
from hf_medmamba.tools.export import (
    ExportError,
    example_input,
    export_onnx,
    export_program,
    onnx_session,
    verify_onnx,
)

from ..conftest import busi_cls_images, data_path, example


pytestmark = pytest.mark.export

TINY = {"depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128]}
SIZE = 64


def tiny_medmamba():
    torch.manual_seed(0)
    return MedMambaForImageClassification(MedMambaConfig(**TINY, num_labels=3)).eval()


def tiny_vmunet(**overrides):
    torch.manual_seed(0)
    return VMUNetForSegmentation(VMUNetConfig(**TINY, depths_decoder=[1, 1, 1, 1], **overrides)).eval()


def tiny_vmamba():
    torch.manual_seed(0)
    return VMambaForImageClassification(VMambaConfig(**TINY, num_labels=5)).eval()


def scan_backends(model):
    return {model.config.scan_backend}


def op_types(path):
    """Operator counts of an ONNX file, Scan bodies included."""
    counts = {}

    def visit(graph):
        for node in graph.node:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    visit(attribute.g)

    visit(onnx.load(str(path)).graph)
    return counts


# ---------------------------------------------------------------------------------------------------------------------
# Clear errors (raised before any tracing)
# ---------------------------------------------------------------------------------------------------------------------


def test_mamba_ssm_backend_cannot_be_exported():
    model = tiny_medmamba().set_scan_backend("mamba_ssm")
    with pytest.raises(ExportError, match=r"CUDA kernel.*cannot trace.*'export'.*set_scan_backend\('auto'\)"):
        export_program(model, SIZE)
    with pytest.raises(ExportError, match="mamba_ssm"):
        export_onnx(model, "unused.onnx", SIZE)
    assert scan_backends(model) == {"mamba_ssm"}


def test_dynamic_spatial_size_must_be_a_multiple():
    model = tiny_vmunet()  # VM-UNet pads any size in eager mode; a dynamic size is exported as multiples of 32
    with pytest.raises(ExportError, match=r"multiples of 32.*fixed size 80 x 64"):
        export_program(model, (80, 64), dynamic_spatial=True)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"image_size": 48}, ValueError, "divisible by 32"),  # the model's own check, before tracing
        ({"image_size": (64,)}, ValueError, "image_size"),
        ({"image_size": 64, "batch_size": 0}, ValueError, "batch_size"),
    ],
)
def test_bad_export_arguments(kwargs, error, message):
    model = tiny_medmamba()
    with pytest.raises(error, match=message):
        export_program(model, **kwargs)
    assert scan_backends(model) == {"auto"}


def test_bad_opset(tmp_path):
    with pytest.raises(ValueError, match="opset"):
        export_onnx(tiny_medmamba(), tmp_path / "m.onnx", SIZE, opset=13)


def test_backend_and_mode_restored_when_the_trace_fails(monkeypatch):
    model = tiny_medmamba().set_scan_backend("chunked").train()
    seen = []

    def failing_export(module, *args, **kwargs):
        seen.append(scan_backends(model))
        raise RuntimeError("trace failed")

    monkeypatch.setattr(torch.export, "export", failing_export)
    with pytest.raises(RuntimeError, match="trace failed"):
        export_program(model, SIZE)
    assert seen == [{"export"}]
    assert scan_backends(model) == {"chunked"} and model.training


# ---------------------------------------------------------------------------------------------------------------------
# The one tiny model exported in the default run: MedMamba, ONNX, dynamic batch
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def medmamba_onnx(tmp_path_factory):
    model = tiny_medmamba()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "medmamba.onnx", SIZE)
    return model, path


def test_onnx_matches_pytorch_at_two_batch_sizes(medmamba_onnx):
    model, path = medmamba_onnx
    assert scan_backends(model) == {"auto"}  # restored after the export
    graph_input = onnx_session(path).get_inputs()[0]
    assert graph_input.name == "pixel_values" and isinstance(graph_input.shape[0], str)
    assert graph_input.shape[1:] == [3, SIZE, SIZE]
    assert op_types(path)["Scan"] == 4  # one per SS2D, whatever the sequence length
    for batch in (1, 3):
        check = verify_onnx(path, model, example_input(model, SIZE, batch, seed=batch))
        assert check.onnx_logits.shape == (batch, 3)
        assert check.max_abs_diff <= 1e-4 and check.disagreements == 0 and check.ok, check.summary()


def test_onnx_matches_pytorch_on_real_images(medmamba_onnx):
    model, path = medmamba_onnx
    images, _ = busi_cls_images("test", per_class=3)
    pixel_values = MedMambaImageProcessor(size={"height": SIZE, "width": SIZE})(images, return_tensors="pt")
    check = verify_onnx(path, model, pixel_values["pixel_values"], batch_size=4)  # batches of 4, 4 and 1
    assert check.num_images == 9 and check.ok, check.summary()
    assert "OK: 9 images" in check.summary()


def test_verify_detects_a_different_model(medmamba_onnx):
    model, path = medmamba_onnx
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.head.bias[0] += 10.0  # class 0 wins everywhere in PyTorch, not in the ONNX file
    check = verify_onnx(path, other, example_input(model, SIZE, 4, seed=9))
    assert not check.ok and check.max_abs_diff > 1 and check.disagreements > 0
    assert check.summary().startswith("FAILED")


# ---------------------------------------------------------------------------------------------------------------------
# Slow: the other models and settings
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("factory", [tiny_medmamba, tiny_vmamba, tiny_vmunet])
def test_exported_program_matches_eager(factory):
    model = factory()
    program = export_program(model, SIZE)
    assert scan_backends(model) == {"auto"}
    assert any("scan" in str(node.target) for node in program.graph.nodes)
    with torch.no_grad():
        for batch in (1, 3):
            x = example_input(model, SIZE, batch, seed=batch)
            torch.testing.assert_close(program.module()(x), model(pixel_values=x).logits, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_exported_program_with_a_fixed_batch():
    model = tiny_medmamba()
    program = export_program(model, SIZE, batch_size=2, dynamic_batch=False)
    x = example_input(model, SIZE, 2)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(pixel_values=x).logits, rtol=0, atol=1e-4)
    with pytest.raises(Exception, match="2"):
        program.module()(example_input(model, SIZE, 3))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "factory"),
    [("vmamba", tiny_vmamba), ("vmunet", tiny_vmunet), ("vmunet-1ch", lambda: tiny_vmunet(num_channels=1))],
)
def test_onnx_other_models(tmp_path, name, factory):
    model = factory()
    path = export_onnx(model, tmp_path / f"{name}.onnx", SIZE)
    for batch in (1, 2):
        check = verify_onnx(path, model, example_input(model, SIZE, batch, seed=batch))
        assert check.ok, check.summary()


@pytest.mark.slow
def test_onnx_vmunet_on_real_images(tmp_path):
    model = tiny_vmunet(sigmoid_head=True)  # the presets' one-channel head: sigmoid >= threshold
    processor = VMUNetImageProcessor(size={"height": SIZE, "width": SIZE})
    images = []
    for image_path in sorted(data_path("busi_seg", "test", "images").glob("*.png"))[:5]:
        with PIL.Image.open(image_path) as image:
            images.append(image.copy())
    pixel_values = processor(images, return_tensors="pt")["pixel_values"]  # ISIC min-max: values in [0, 255]
    path = export_onnx(model, tmp_path / "vmunet.onnx", SIZE)
    check = verify_onnx(path, model, pixel_values, image_processor=processor, batch_size=2)
    assert check.task == "segmentation" and check.onnx_logits.shape == (5, 1, SIZE, SIZE)
    assert check.ok, check.summary()


@pytest.mark.slow
def test_onnx_with_a_fixed_batch(tmp_path):
    model = tiny_medmamba()
    path = export_onnx(model, tmp_path / "fixed.onnx", SIZE, batch_size=2, dynamic_batch=False)
    assert onnx_session(path).get_inputs()[0].shape == [2, 3, SIZE, SIZE]
    check = verify_onnx(path, model, example_input(model, SIZE, 5, seed=1))  # run as 2 + 2 + (1 padded to 2)
    assert check.num_images == 5 and check.ok, check.summary()


@pytest.mark.slow
def test_onnx_with_a_dynamic_image_size(tmp_path):
    model = tiny_medmamba()
    path = export_onnx(model, tmp_path / "dynamic.onnx", SIZE, dynamic_spatial=True)
    for batch, size in ((1, 64), (2, (96, 128)), (1, 32)):
        check = verify_onnx(path, model, example_input(model, size, batch, seed=batch))
        assert check.ok, check.summary()


# ---------------------------------------------------------------------------------------------------------------------
# Slow: the CLI on real images
# ---------------------------------------------------------------------------------------------------------------------


def save_folder(tmp_path, model, processor):
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_cli_classification_on_real_images(tmp_path, capsys):
    folder = save_folder(tmp_path, tiny_medmamba(), MedMambaImageProcessor(size={"height": SIZE, "width": SIZE}))
    images = data_path("busi_cls", "test")
    code = example("export_onnx").main(
        ["--model", str(folder), "--output", str(tmp_path / "m.onnx"), "--validate-images", str(images),
         "--max-images", "10", "--batch-size", "4"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "exported" in out and " s, " in out and "MiB" in out
    assert "OK: 10 images" in out and "predicted labels: identical" in out


@pytest.mark.slow
def test_cli_segmentation_on_real_images_with_a_fixed_batch(tmp_path, capsys):
    folder = save_folder(tmp_path, tiny_vmunet(), VMUNetImageProcessor(size={"height": SIZE, "width": SIZE}))
    images = data_path("busi_seg", "test", "images")
    code = example("export_onnx").main(
        ["--model", str(folder), "--output", str(tmp_path / "v.onnx"), "--validate-images", f"{images}/*.png",
         "--max-images", "3", "--no-dynamic-batch", "--batch-size", "2"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "fixed batch of 2" in out and "masks after post-processing: identical" in out


def test_cli_fails_without_images(tmp_path, capsys):
    folder = save_folder(tmp_path, tiny_medmamba(), MedMambaImageProcessor(size={"height": SIZE, "width": SIZE}))
    code = example("export_onnx").main(
        ["--model", str(folder), "--output", str(tmp_path / "m.onnx"), "--validate-images", str(tmp_path / "none")]
    )
    assert code == 2
    assert "no images" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()  # nothing exported
