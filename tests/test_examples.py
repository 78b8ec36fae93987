"""End-to-end runs of the example scripts on a handful of the bundled images, with tiny models (32-64 px, 1-2 steps).

Each run checks what the README promises: all_results.json, the confusion matrix or the overlays, a saved folder that
`pipeline(...)` loads, and for the volumes script the Synapse JSON.
"""

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from huggingface_hub import ModelCard
from transformers import pipeline

from hf_medmamba import (
    VMambaConfig,
    VMambaForImageClassification,
    VMUNetConfig,
    VMUNetForSegmentation,
    VMUNetImageProcessor,
)


REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
DATA = EXAMPLES / "data"
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


@pytest.fixture(scope="session")
def datasets_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("datasets_cache"))


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run as fast on one thread, and OpenMP threads that busy-wait slow down badly on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TRAIN_EVAL = ["--do_train", "--do_eval"]  # off unless given, as in transformers' scripts


def common_args(output_dir, cache_dir):
    return ["--output_dir", str(output_dir), "--cache_dir", cache_dir, "--disable_tqdm", "True", "--seed", "0"]


def png_size(path):
    with PIL.Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def card_results(folder):
    """The model-index results of a trained folder's README.md, as {metric name: (value, split)}."""
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "transformers" and "not a medical device" in card.text
    return {r.metric_name: (r.metric_value, r.dataset_split) for r in card.data.eval_results}


def test_classification_script_end_to_end(tmp_path, datasets_cache):
    script = example("run_image_classification")
    out = tmp_path / "medmamba"
    results = script.main(
        [
            "--data_dir", data_dir("busi_cls"), "--preset", "medmamba-t", "--config_overrides", TINY_MEDMAMBA,
            "--recipe", "medmamba", "--image_size", "32", "--max_train_samples", "6", "--max_eval_samples", "6",
            "--max_steps", "2", "--per_device_train_batch_size", "3", *TRAIN_EVAL, *common_args(out, datasets_cache),
        ]
    )  # fmt: skip
    assert results["class_names"] == ["benign", "malignant", "normal"]
    all_results = json.loads((out / "all_results.json").read_text())
    for key in ("train_loss", "eval_loss", "eval_accuracy", "eval_precision", "eval_sensitivity"):
        assert np.isfinite(all_results[key]), key
    for key in ("eval_specificity", "eval_f1", "eval_auc"):
        assert key in all_results
    assert 0.0 <= all_results["eval_accuracy"] <= 1.0
    report = json.loads((out / "eval_report.json").read_text())
    cm = np.array(report["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == 6
    assert png_size(out / "confusion_matrix.png")[0] > 100
    assert (out / "model.safetensors").is_file() and (out / "preprocessor_config.json").is_file()
    assert json.loads((out / "preprocessor_config.json").read_text())["size"] == {"height": 32, "width": 32}
    # the card's model-index carries this run's final evaluation, on the split it was made on
    results_in_card = card_results(out)
    assert results_in_card["Accuracy"] == (round(all_results["eval_accuracy"], 4), "test")
    assert results_in_card["One-vs-rest AUC"][0] == round(all_results["eval_auc"], 4)
    assert ModelCard.load(out / "README.md").data.license == "apache-2.0"  # trained from scratch: no upstream weights

    classifier = pipeline("image-classification", model=str(out), trust_remote_code=True)
    with PIL.Image.open(DATA / "busi_cls" / "test" / "normal" / "normal_0004.png") as image:
        predictions = classifier(image.copy())
    assert sorted(p["label"] for p in predictions) == ["benign", "malignant", "normal"]
    assert abs(sum(p["score"] for p in predictions) - 1) < 1e-5

    # the saved folder fine-tunes further (--model_name_or_path), its processor re-sized by --image_size
    again = tmp_path / "again"
    results = script.main(
        [
            "--data_dir", data_dir("busi_cls"), "--model_name_or_path", str(out), "--image_size", "64",
            "--max_train_samples", "3", "--max_steps", "1", "--per_device_train_batch_size", "3", "--do_train",
            *common_args(again, datasets_cache),
        ]
    )  # fmt: skip
    assert type(results["trainer"].model).__name__ == "MedMambaForImageClassification"
    assert json.loads((again / "preprocessor_config.json").read_text())["size"] == {"height": 64, "width": 64}
    assert json.loads((again / "config.json").read_text())["id2label"] == {
        "0": "benign",
        "1": "malignant",
        "2": "normal",
    }


def test_binary_segmentation_script_end_to_end(tmp_path, datasets_cache):
    script = example("run_semantic_segmentation")
    out = tmp_path / "vmunet"
    results = script.main(
        [
            "--data_dir", data_dir("busi_seg"), "--config_overrides", TINY_VMUNET, "--recipe", "isic",
            "--image_size", "64", "--max_train_samples", "4", "--max_eval_samples", "3", "--num_overlays", "2",
            "--max_steps", "2", "--per_device_train_batch_size", "2", *TRAIN_EVAL, *common_args(out, datasets_cache),
        ]
    )  # fmt: skip
    model = results["trainer"].model
    assert type(model).__name__ == "VMUNetForSegmentation" and model.config.sigmoid_head  # the isic recipe's preset
    all_results = json.loads((out / "all_results.json").read_text())
    for key in ("miou", "dsc", "accuracy", "specificity", "sensitivity", "mean_image_dice"):
        assert 0.0 <= all_results[f"eval_{key}"] <= 1.0, key
    assert np.isfinite(all_results["train_loss"])
    results_in_card = card_results(out)
    assert results_in_card["DSC (pooled over all pixels)"] == (round(all_results["eval_dsc"], 4), "test")
    assert results_in_card["Mean per-image Dice"][0] == round(all_results["eval_mean_image_dice"], 4)
    overlays = sorted((out / "overlays").glob("*.png"))
    assert len(overlays) == 2 and all(png_size(p)[0] > 300 for p in overlays)

    segmenter = pipeline("image-segmentation", model=str(out), trust_remote_code=True)
    with PIL.Image.open(DATA / "busi_seg" / "test" / "images" / "malignant_0003.png") as image:
        segments = segmenter(image.copy())
        size = image.size
    assert segments and {s["label"] for s in segments} <= {"background", "lesion"}
    assert all(s["mask"].size == size for s in segments)


def test_multiclass_segmentation_on_ct_slices(tmp_path, datasets_cache):
    script = example("run_semantic_segmentation")
    out = tmp_path / "synapse"
    script.main(
        [
            "--data_dir", data_dir("ct_abdomen_organs/slices"), "--config_overrides", TINY_VMUNET,
            "--recipe", "synapse", "--image_size", "64", "--max_train_samples", "4", "--max_eval_samples", "3",
            "--train_val_split", "0.2", "--num_overlays", "1", "--max_steps", "1", "--per_device_train_batch_size", "4",
            *TRAIN_EVAL, *common_args(out, datasets_cache),
        ]
    )  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert config["num_channels"] == 1 and len(config["id2label"]) == 9 and not config["sigmoid_head"]
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["mask_mode"] == "index" and processor["normalization_mode"] == "standard"
    all_results = json.loads((out / "all_results.json").read_text())
    organs = ["spleen", "right_kidney", "left_kidney", "gallbladder", "liver", "stomach", "aorta", "pancreas"]
    assert all(f"eval_dice_{organ}" in all_results for organ in organs)
    assert 0.0 <= all_results["eval_mean_dice"] <= 1.0
    assert len(list((out / "overlays").glob("*.png"))) == 1


@pytest.mark.parametrize(
    ("script_name", "model_type", "overrides", "data", "expected"),
    [
        (
            "run_image_classification",
            "convnext",
            '{"depths": [1, 1, 1, 1], "hidden_sizes": [8, 16, 32, 64]}',
            "busi_cls",
            "ConvNextForImageClassification",
        ),
        (
            "run_semantic_segmentation",
            "segformer",
            '{"depths": [1, 1, 1, 1], "hidden_sizes": [8, 16, 32, 64], "decoder_hidden_size": 32, '
            '"num_attention_heads": [1, 1, 1, 1]}',
            "busi_seg",
            "SegformerForSemanticSegmentation",
        ),
    ],
)
def test_transformers_baselines_train_with_the_same_recipe(
    tmp_path, datasets_cache, script_name, model_type, overrides, data, expected
):
    """The comparison runs: a transformers model by --model_type wins over the recipe's preset, same script."""
    recipe, size, extra = ("medmamba", "32", []) if data == "busi_cls" else ("isic", "64", ["--num_overlays", "0"])
    results = example(script_name).main(
        [
            "--data_dir", data_dir(data), "--model_type", model_type, "--config_overrides", overrides,
            "--recipe", recipe, "--image_size", size, "--max_train_samples", "4", "--max_eval_samples", "2",
            "--max_steps", "1", "--per_device_train_batch_size", "4", *extra, *TRAIN_EVAL,
            *common_args(tmp_path, datasets_cache),
        ]
    )  # fmt: skip
    trainer = results["trainer"]
    assert type(trainer.model).__name__ == expected
    assert type(trainer.optimizer.optimizer) is (torch.optim.Adam if recipe == "medmamba" else torch.optim.AdamW)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == model_type
    assert "eval_loss" in json.loads((tmp_path / "all_results.json").read_text())


def test_vmunet_encoder_initialised_from_vmamba_like_upstream_load_from(tmp_path, datasets_cache):
    torch.manual_seed(0)
    vmamba = VMambaForImageClassification(
        VMambaConfig(depths=[2, 1, 1, 1], dims=[16, 32, 64, 128], id2label={0: "a", 1: "b"})
    )
    vmamba.save_pretrained(tmp_path / "vmamba")
    arguments = [
        "--data_dir", data_dir("busi_seg"), "--preset", "vmunet-paper", "--config_overrides",
        '{"depths": [1, 1, 1, 1], "depths_decoder": [1, 1, 1, 2], "dims": [16, 32, 64, 128]}',
        "--encoder_name_or_path", str(tmp_path / "vmamba"),
        *common_args(tmp_path / "out", datasets_cache),
    ]  # fmt: skip
    results = example("run_semantic_segmentation").main(arguments)
    model, source = results["trainer"].model, vmamba.state_dict()
    target = model.state_dict()
    block = "blocks.0.self_attention.x_proj_weight"
    assert torch.equal(target["vmunet.patch_embed.proj.weight"], source["vmamba.patch_embed.proj.weight"])
    merge = "layers.1.downsample.reduction.weight"
    assert torch.equal(target[f"vmunet.{merge}"], source[f"vmamba.{merge}"])
    for i in range(4):  # encoder stage i and decoder stage 3 - i both start from VMamba stage i
        assert torch.equal(target[f"vmunet.layers.{i}.{block}"], source[f"vmamba.layers.{i}.{block}"])
        assert torch.equal(target[f"vmunet.layers_up.{3 - i}.{block}"], source[f"vmamba.layers.{i}.{block}"])
    # decoder stage 3 has 2 blocks and VMamba stage 0 has 2: block 1 copied too; nothing else is touched
    assert torch.equal(
        target["vmunet.layers_up.3.blocks.1.ln_1.weight"], source["vmamba.layers.0.blocks.1.ln_1.weight"]
    )
    fresh = VMUNetForSegmentation(model.config).state_dict()
    assert target["final_conv.weight"].shape == fresh["final_conv.weight"].shape
    assert not any(key.startswith("vmunet.norm") for key in target)

    wider = VMambaForImageClassification(VMambaConfig(depths=[1, 1, 1, 1], dims=32, id2label={0: "a", 1: "b"}))
    wider.save_pretrained(tmp_path / "wider")
    arguments[arguments.index(str(tmp_path / "vmamba"))] = str(tmp_path / "wider")
    with pytest.raises(ValueError, match="shape"):
        example("run_semantic_segmentation").main(arguments)


def test_evaluate_volumes_on_the_bundled_ct(tmp_path):
    """A tiny random VM-UNet (biased towards the liver, so that HD95 stays fast) on the bundled CT, Synapse JSON."""
    torch.manual_seed(0)
    config = VMUNetConfig.from_preset("vmunet-synapse", depths=[1, 1, 1, 1], depths_decoder=[1, 1, 1, 1], dims=16)
    model = VMUNetForSegmentation(config)
    with torch.no_grad():
        model.final_conv.weight.mul_(0.01)
        model.final_conv.bias.copy_(torch.tensor([0.0, 0, 0, 0, 0, 5.0, 0, 0, 0]))
    model.save_pretrained(tmp_path / "model")
    size = {"height": 64, "width": 64}
    VMUNetImageProcessor(num_channels=1, normalization_mode="standard", mask_mode="index", size=size).save_pretrained(
        tmp_path / "model"
    )
    nifti = DATA / "ct_abdomen_organs" / "nifti"
    output = tmp_path / "synapse.json"
    args = ["--model_name_or_path", str(tmp_path / "model"), "--images", str(nifti / "ct.nii.gz")]
    args += ["--labels", str(nifti / "seg_synapse8.nii.gz"), "--output_file", str(output)]
    example("evaluate_volumes").main([*args, "--save_predictions", str(tmp_path / "pred")])

    results = json.loads(output.read_text())
    organs = ["spleen", "right kidney", "left kidney", "gallbladder", "liver", "stomach", "aorta", "pancreas"]
    assert results["num_classes"] == 9 and results["class_names"] == organs
    assert results["window_hu"] == [-125.0, 275.0] and results["model_input_size"] == [64, 64]
    (case,) = results["cases"]
    assert case["slices"] == 30 and case["slice_size"] == [101, 122]
    assert case["spacing"] == [3.0, 3.0, 3.0] and case["hd95_units"] == "mm"
    assert list(case["dice"]) == organs and list(case["hd95"]) == organs
    # everything is predicted liver: liver Dice = 2|L| / (|volume| + |L|) with the 38,634 liver voxels, others 0
    assert case["dice"]["liver"] == pytest.approx(2 * 38634 / (122 * 101 * 30 + 38634), rel=1e-4)
    assert case["hd95"]["liver"] > 0 and all(case["dice"][o] == 0.0 for o in organs if o != "liver")
    summary = results["summary"]
    assert set(summary["per_class"]) == set(organs)
    assert summary["mean_dice"] == pytest.approx(np.mean(list(case["dice"].values())))
    import nibabel as nib

    prediction = nib.load(next((tmp_path / "pred").glob("*.nii.gz")))
    assert prediction.shape == (122, 101, 30) and np.unique(np.asarray(prediction.dataobj)).tolist() == [5]


def test_demo_smoke_writes_the_report(tmp_path, datasets_cache, monkeypatch):
    """The README's main job, with tiny models (--smoke): both runs, the pipelines and the report with its images."""
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # what demo.py sets at import; undone after the test
    result = example("demo").main(["--smoke", "--output_dir", str(tmp_path), "--cache_dir", datasets_cache])
    report = Path(result["report"]).read_text()
    assert "Demo configuration, not the paper recipes" in report and "Smoke test" in report
    for heading in ("## 1. MedMamba", "## 2. VM-UNet", "## 3. Inference with `pipeline(...)`", "| OA |", "| mIoU |"):
        assert heading in report, heading
    images = [line.split("](")[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]
    assert len(images) == 7  # confusion matrix, 2 learning curves, 4 overlays
    assert all((tmp_path / image).is_file() for image in images)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["smoke"] and set(summary["classification"]) >= {"accuracy", "f1", "auc"}
    assert 0.0 <= summary["segmentation"]["dsc"] <= 1.0
    assert (tmp_path / "medmamba-busi" / "model.safetensors").is_file()
    assert (tmp_path / "vmunet-busi" / "model.safetensors").is_file()
