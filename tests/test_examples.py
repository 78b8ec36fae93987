"""End-to-end runs of the example scripts on a handful of the bundled images, with tiny models (32-64 px, 1-2 steps).

Each run checks what the README promises: all_results.json, the confusion matrix or the overlays, a saved folder that
`pipeline(...)` loads, and for the volumes script the Synapse JSON.
"""

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import TrainerCallback, pipeline

import hf_medmamba.tools.hub
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

from .conftest import DATA, TINY_MEDMAMBA, TINY_VMUNET, common_args, data_dir, example
from .hub_stand_in import FakeHfApi, LocalHub, names


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="session")
def datasets_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("datasets_cache"))


TRAIN_EVAL = ["--do_train", "--do_eval"]  # off unless given, as in transformers' scripts


@pytest.fixture
def local_hub(monkeypatch):
    """A local HTTP stand-in for the Hub's file downloads (see tests/hub_stand_in.py)."""
    hub = LocalHub().start(monkeypatch)
    yield hub
    hub.stop()


@pytest.fixture
def fake_hf_api(monkeypatch):
    """`huggingface_hub.HfApi` replaced by a recorder; returns its event list (the tests add their own events)."""
    import huggingface_hub

    FakeHfApi.events = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    return FakeHfApi.events


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
    # mIoU: the mean of the organs' IoUs (background left out), each IoU = Dice / (2 - Dice) for pooled counts
    ious = [all_results[f"eval_iou_{organ}"] for organ in organs]
    dices = [all_results[f"eval_dice_{organ}"] for organ in organs]
    assert np.allclose(ious, [d / (2 - d) for d in dices], equal_nan=True)
    assert all_results["eval_miou"] == pytest.approx(np.nanmean(ious)) and "eval_iou_background" not in all_results
    assert card_results(out)["Mean IoU over the classes"][0] == round(all_results["eval_miou"], 4)
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


# ---------------------------------------------------------------------------------------------------------------------
# transformers' argument names and defaults
# ---------------------------------------------------------------------------------------------------------------------

SCRIPTS = ("run_image_classification", "run_semantic_segmentation")


def parse(script_name, argv):
    script = example(script_name)
    types = (script.ModelArguments, script.DataTrainingArguments, example("example_utils").RecipeTrainingArguments)
    return example("example_utils").parse_arguments(types, argv)


@pytest.mark.parametrize("script_name", SCRIPTS)
def test_nothing_runs_unless_asked_and_no_default_names_a_hub_repository(script_name, tmp_path):
    model_args, data_args, args = parse(script_name, ["--output_dir", str(tmp_path)])
    assert (args.do_train, args.do_eval, args.do_predict, args.overwrite_output_dir) == (False, False, False, False)
    assert args.hub_strategy.value == "end" and not args.push_to_hub
    assert model_args.model_revision == "main" and model_args.token is None
    for values in (model_args, data_args):
        for name, value in vars(values).items():  # a Hub id has a '/', like 'nvidia/mit-b0'
            assert not (isinstance(value, str) and "/" in value), f"--{name} defaults to {value!r}"
    with pytest.raises(ValueError, match="exactly one data source"):
        example(script_name).main(["--do_train", "--output_dir", str(tmp_path)])


def test_do_eval_alone_evaluates_without_training(tmp_path, datasets_cache):
    """The bug this guards against: with do_train on by default, `--do_eval` alone trained (and overwrote) a model."""
    results = example("run_image_classification").main(
        [
            "--data_dir", data_dir("busi_cls"), "--preset", "medmamba-t", "--config_overrides", TINY_MEDMAMBA,
            "--image_size", "32", "--max_eval_samples", "4", "--do_eval", *common_args(tmp_path, datasets_cache),
        ]
    )  # fmt: skip
    assert results["trainer"].state.global_step == 0 and "train" not in results
    all_results = json.loads((tmp_path / "all_results.json").read_text())
    assert "eval_accuracy" in all_results and not any(key.startswith("train") for key in all_results)
    assert not (tmp_path / "model.safetensors").exists() and not (tmp_path / "README.md").exists()


def test_train_dir_and_validation_dir(tmp_path, datasets_cache):
    """One imagefolder per split (class sub-folders; a metadata.csv naming masks), evaluated on 'validation'."""
    results = example("run_image_classification").main(
        [
            "--train_dir", data_dir("busi_cls/train"), "--validation_dir", data_dir("busi_cls/test"),
            "--preset", "medmamba-t", "--config_overrides", TINY_MEDMAMBA, "--image_size", "32",
            "--max_train_samples", "3", "--max_eval_samples", "4", "--max_steps", "1", *TRAIN_EVAL,
            *common_args(tmp_path / "cls", datasets_cache),
        ]
    )  # fmt: skip
    assert results["class_names"] == ["benign", "malignant", "normal"]
    assert results["num_eval_examples"] == 4 and card_results(tmp_path / "cls")["Accuracy"][1] == "validation"
    results = example("run_semantic_segmentation").main(
        [
            "--train_dir", data_dir("busi_seg/train"), "--validation_dir", data_dir("busi_seg/test"),
            "--preset", "vmunet-paper", "--config_overrides", TINY_VMUNET, "--image_size", "32",
            "--max_train_samples", "2", "--max_eval_samples", "2", "--max_steps", "1", "--num_overlays", "0",
            *TRAIN_EVAL, *common_args(tmp_path / "seg", datasets_cache),
        ]
    )  # fmt: skip
    assert results["trainer"].train_dataset.num_rows == 2 and "eval_dsc" in results["eval"]
    assert card_results(tmp_path / "seg")["DSC (pooled over all pixels)"][1] == "validation"
    with pytest.raises(FileNotFoundError, match="--validation_dir"):
        example("run_image_classification").main(
            ["--validation_dir", str(tmp_path / "missing"), "--do_eval", "--output_dir", str(tmp_path / "x")]
        )


def test_model_revision_and_token_reach_the_hub(tmp_path, datasets_cache, local_hub):
    """--model_name_or_path as a Hub id: config, weights and processor come from --model_revision with --token, and
    the card names that repository as its base_model."""
    torch.manual_seed(0)
    config = MedMambaConfig(
        depths=[1, 1, 1, 1], dims=[16, 32, 64, 128], id2label={0: "benign", 1: "malignant", 2: "normal"}
    )
    upstream = MedMambaForImageClassification(config)
    upstream.save_pretrained(tmp_path / "repo")
    MedMambaImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "repo")
    local_hub.add("lab/medmamba-tiny", tmp_path / "repo", revision="v1.0")
    out = tmp_path / "out"
    results = example("run_image_classification").main(
        [
            "--model_name_or_path", "lab/medmamba-tiny", "--model_revision", "v1.0", "--token", "hf_read_token",
            "--data_dir", data_dir("busi_cls"), "--max_train_samples", "3", "--max_steps", "1", "--learning_rate", "0",
            "--do_train", *common_args(out, str(tmp_path / "cache")),
        ]
    )  # fmt: skip
    downloads = local_hub.paths("GET")
    for file in ("config.json", "model.safetensors", "preprocessor_config.json"):
        assert f"/lab/medmamba-tiny/resolve/v1.0/{file}" in downloads, downloads
    assert not any("/resolve/main/" in path for path in downloads)
    assert {auth for _, path, auth in local_hub.requests if "/resolve/" in path} == {"Bearer hf_read_token"}
    trained = dict(results["trainer"].model.named_parameters())  # learning rate 0: the downloaded weights
    assert len(trained) > 100 and all(torch.equal(trained[k], v) for k, v in upstream.named_parameters())
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "lab/medmamba-tiny" and card.data.license != "apache-2.0"
    assert card.data.datasets is None  # a local imagefolder is no Hub dataset


def copy_of_ct_slices(tmp_path, id2label=None):
    """The bundled CT slices in a folder of their own, optionally with an id2label.json beside them."""
    import shutil

    folder = tmp_path / "ct_slices"
    shutil.copytree(data_dir("ct_abdomen_organs/slices"), folder)
    if id2label is not None:
        (folder / "id2label.json").write_text(json.dumps(id2label))
    return folder


ORGANS = ["spleen", "right kidney", "left kidney", "gallbladder", "liver", "stomach", "aorta", "pancreas"]


def test_class_names_from_the_hub_datasets_id2label_json(tmp_path, datasets_cache, local_hub, monkeypatch):
    """--dataset_name on the Hub: the class names come from the repository's id2label.json (read with --token), so
    a multi-class dataset needs no hand-written --id2label; without the file the preset's names stay."""
    import datasets

    slices = datasets.load_dataset(
        "imagefolder", data_dir=data_dir("ct_abdomen_organs/slices"), cache_dir=datasets_cache
    )
    loaded = []

    def load_dataset(name, *args, **kwargs):  # the Hub's dataset files: the bundled slices
        loaded.append((name, kwargs.get("token")))
        return slices

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    id2label = {str(i): name.upper() for i, name in enumerate(["BACKGROUND", *ORGANS])}
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "id2label.json").write_text(json.dumps(id2label))
    local_hub.add("lab/ct-organs", tmp_path / "repo", repo_type="dataset")
    arguments = [
        "--dataset_name", "lab/ct-organs", "--token", "hf_read_token", "--preset", "vmunet-synapse",
        "--config_overrides", TINY_VMUNET, "--image_size", "32", "--max_eval_samples", "2", "--num_overlays", "0",
        "--do_eval", *common_args(tmp_path / "out", str(tmp_path / "cache")),
    ]  # fmt: skip
    results = example("run_semantic_segmentation").main(arguments)
    assert results["id2label"] == {int(k): v for k, v in id2label.items()}
    assert loaded == [("lab/ct-organs", "hf_read_token")]
    assert ("GET", "/datasets/lab/ct-organs/resolve/main/id2label.json", "Bearer hf_read_token") in local_hub.requests
    assert "eval_dice_LIVER" in results["eval"]

    (tmp_path / "repo" / "id2label.json").unlink()
    arguments[arguments.index(str(tmp_path / "cache"))] = str(tmp_path / "fresh_cache")
    results = example("run_semantic_segmentation").main(arguments)
    assert list(results["id2label"].values()) == ["background", *ORGANS]  # the vmunet-synapse preset's


def test_do_reduce_labels_ignores_background_and_shifts_the_classes(tmp_path, datasets_cache):
    """Masks 0..8 with --do_reduce_labels and an id2label.json of the 8 organs: 0 -> 255 (ignored), k -> k - 1; the
    metrics then cover all 8 classes (class 0 is the spleen, not background)."""
    folder = copy_of_ct_slices(tmp_path, {str(i): name for i, name in enumerate(ORGANS)})
    out = tmp_path / "out"
    results = example("run_semantic_segmentation").main(
        [
            "--data_dir", str(folder), "--preset", "vmunet-synapse", "--config_overrides", TINY_VMUNET,
            "--image_size", "32", "--do_reduce_labels", "--max_train_samples", "2", "--max_eval_samples", "3",
            "--train_val_split", "0.2", "--num_overlays", "0", "--max_steps", "1", *TRAIN_EVAL,
            *common_args(out, datasets_cache),
        ]
    )  # fmt: skip
    trainer = results["trainer"]
    assert trainer.model.config.num_labels == 8 and results["id2label"] == dict(enumerate(ORGANS))
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["do_reduce_labels"] and processor["mask_mode"] == "index"
    plain = VMUNetImageProcessor(num_channels=1, normalization_mode="standard", mask_mode="index", size=32)
    for example_index in range(2):
        raw = trainer.train_dataset.with_format(None)[example_index]
        labels = np.asarray(plain(raw["image"], segmentation_maps=raw["label"])["labels"][0])
        reduced = np.asarray(trainer.train_dataset[example_index]["labels"])
        assert np.array_equal(reduced, np.where(labels == 0, 255, labels - 1))
        assert (labels == 0).any() and (labels > 0).any()
    metrics = results["eval"]
    ious = [metrics[f"eval_iou_{name.replace(' ', '_')}"] for name in ORGANS]
    assert "eval_iou_background" not in metrics and "eval_dice_spleen" in metrics
    assert metrics["eval_miou"] == pytest.approx(np.nanmean(ious))


# ---------------------------------------------------------------------------------------------------------------------
# MedMNIST .npz files: choose on validation, report on test
# ---------------------------------------------------------------------------------------------------------------------

BREASTMNIST = DATA / "medmnist" / "breastmnist.npz"


def test_breastmnist_chooses_on_validation_and_reports_on_test(tmp_path, datasets_cache):
    """The bundled BreastMNIST with the MedMamba recipe (RandomResizedCrop of the 28x28 gray images to 32 px): the
    checkpoint with the best validation AUC is the saved model, and it is evaluated on the whole official test split
    (test_* metrics, AUC included, in all_results.json and the card)."""
    out = tmp_path / "breastmnist"
    results = example("run_image_classification").main(
        [
            "--medmnist_file", str(BREASTMNIST), "--preset", "medmamba-t", "--config_overrides", TINY_MEDMAMBA,
            "--recipe", "medmamba", "--image_size", "32", "--max_train_samples", "16",
            "--per_device_train_batch_size", "4", "--max_steps", "3", "--eval_strategy", "steps", "--eval_steps", "1",
            "--save_strategy", "steps", "--save_steps", "1", "--load_best_model_at_end",
            "--metric_for_best_model", "auc", "--do_predict", *TRAIN_EVAL, *common_args(out, datasets_cache),
        ]
    )  # fmt: skip
    trainer = results["trainer"]
    assert results["class_names"] == ["malignant", "normal, benign"]  # MedMNIST's INFO
    assert (results["num_eval_examples"], results["num_test_examples"]) == (78, 156)  # the official split
    assert np.asarray(trainer.train_dataset[0]["pixel_values"]).shape == (3, 32, 32)

    aucs = {e["step"]: e["eval_auc"] for e in trainer.state.log_history if "eval_auc" in e}
    best_step = max(aucs, key=lambda step: (aucs[step], -step))  # the first of equals wins
    assert trainer.state.best_model_checkpoint == str(out / f"checkpoint-{best_step}")
    saved, best = load_file(out / "model.safetensors"), load_file(out / f"checkpoint-{best_step}" / "model.safetensors")
    assert saved.keys() == best.keys() and all(torch.equal(saved[k], best[k]) for k in saved)
    all_results = json.loads((out / "all_results.json").read_text())
    assert all_results["eval_auc"] == pytest.approx(aucs[best_step])  # the final evaluation is of the chosen model
    for key in ("accuracy", "precision", "sensitivity", "specificity", "f1", "auc"):
        assert 0.0 <= all_results[f"test_{key}"] <= 1.0, key
    report = json.loads((out / "test_report.json").read_text())
    assert np.array(report["confusion_matrix"]).sum() == 156 and report["auc"] == pytest.approx(all_results["test_auc"])
    assert png_size(out / "test_confusion_matrix.png")[0] > 100
    in_card = card_results(out)
    assert in_card["One-vs-rest AUC"] == (round(all_results["test_auc"], 4), "test")
    card = ModelCard.load(out / "README.md")
    assert f"checkpoint-{best_step}" in card.text and "breastmnist (MedMNIST v2 .npz" in card.text


def test_medmnist_files_are_checked_and_named(tmp_path):
    medmnist = example("medmnist_npz")
    arrays = {}
    for split, count in (("train", 5), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = np.random.default_rng(0).integers(0, 256, (count, 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % 3).reshape(-1, 1).astype(np.uint8)
    np.savez(tmp_path / "dermamnist_64.npz", **arrays)
    dataset = medmnist.load_medmnist(tmp_path / "dermamnist_64.npz")  # an RGB set with no names known here
    assert {name: len(split) for name, split in dataset.items()} == {"train": 5, "validation": 2, "test": 3}
    assert dataset["train"].features["label"].names == ["0", "1", "2"]
    assert dataset["test"][2]["image"].mode == "RGB" and dataset["test"][2]["label"] == 2
    named = medmnist.load_medmnist(tmp_path / "dermamnist_64.npz", {0: "a", 1: "b", 2: "c"})
    assert named["train"].features["label"].names == ["a", "b", "c"]
    with pytest.raises(ValueError, match=r"cover the indices 0\.\.2"):
        medmnist.load_medmnist(tmp_path / "dermamnist_64.npz", {0: "a", 1: "b"})
    np.savez(tmp_path / "chestmnist.npz", **{**arrays, "train_labels": np.zeros((5, 14), dtype=np.uint8)})
    with pytest.raises(ValueError, match="multi-label"):
        medmnist.load_medmnist(tmp_path / "chestmnist.npz")
    np.savez(tmp_path / "partial.npz", train_images=arrays["train_images"], train_labels=arrays["train_labels"])
    with pytest.raises(ValueError, match=r"lacks .*val_images"):
        medmnist.load_medmnist(tmp_path / "partial.npz")
    with pytest.raises(ValueError, match="--id2label names the classes of a --medmnist_file"):
        example("run_image_classification").main(
            ["--data_dir", data_dir("busi_cls"), "--id2label", '{"0": "a"}', "--output_dir", str(tmp_path)]
        )
    with pytest.raises(ValueError, match="--do_predict reports on a 'test' split"):
        example("run_image_classification").main(
            [
                "--train_dir", data_dir("busi_cls/train"), "--validation_dir", data_dir("busi_cls/test"),
                "--do_predict", "--output_dir", str(tmp_path),
            ]
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# Publishing from training: after evaluation, once, through hf_medmamba.tools.hub.push_folder
# ---------------------------------------------------------------------------------------------------------------------


class RecordEvaluations(TrainerCallback):
    """Adds an event per evaluation or prediction to the fake Hub API's event list."""

    def __init__(self, events):
        self.events = events

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.events.append(("evaluate", {"keys": sorted(metrics or {})}))

    def on_predict(self, args, state, control, metrics=None, **kwargs):
        self.events.append(("predict", {"keys": sorted(metrics or {})}))


def test_push_to_hub_publishes_the_evaluated_folder_once(tmp_path, datasets_cache, fake_hf_api):
    """train -> evaluate -> test -> the package's card -> one commit of the whole folder (no pickle, no
    checkpoints); the Trainer itself never pushes. A bare --hub_model_id goes to the token owner's namespace."""
    out = tmp_path / "medmamba-breastmnist"
    results = example("run_image_classification").main(
        [
            "--medmnist_file", str(BREASTMNIST), "--preset", "medmamba-t", "--config_overrides", TINY_MEDMAMBA,
            "--image_size", "32", "--max_train_samples", "8", "--max_eval_samples", "16", "--max_predict_samples", "16",
            "--max_steps", "2", "--eval_strategy", "steps", "--eval_steps", "1", "--save_steps", "1", "--do_predict",
            "--push_to_hub", "--hub_model_id", "medmamba-bm", "--hub_private_repo", "True",
            "--hub_token", "hf_write_token", *TRAIN_EVAL, *common_args(out, datasets_cache),
        ],
        callbacks=[RecordEvaluations(fake_hf_api)],
    )  # fmt: skip
    assert results["trainer"].args.push_to_hub is False  # the Trainer never pushes
    events = names(fake_hf_api)
    assert events.count("create_commit") == 1 and "upload_folder" not in events
    last_evaluation = max(i for i, name in enumerate(events) if name in ("evaluate", "predict"))
    assert events.index("create_repo") > last_evaluation  # nothing reaches the Hub before evaluation is over
    assert events[-3:] == ["predict", "create_repo", "create_commit"]  # eval (step 1, 2, final), then test
    assert ("HfApi", {"token": "hf_write_token"}) in fake_hf_api
    (create,) = [info for name, info in fake_hf_api if name == "create_repo"]
    (commit,) = [info for name, info in fake_hf_api if name == "create_commit"]
    assert create["repo_id"] == commit["repo_id"] == f"{FakeHfApi.user}/medmamba-bm" and create["private"] is True
    assert results["hub"]["repo_id"] == f"{FakeHfApi.user}/medmamba-bm"

    uploaded = set(commit["contents"])
    top_level = {p.name for p in out.iterdir() if p.is_file()}
    assert (out / "training_args.bin").is_file() and (out / "checkpoint-2").is_dir()
    assert uploaded == top_level - {"training_args.bin"}  # no pickle, no checkpoint folders
    assert {"README.md", "model.safetensors", "config.json", "preprocessor_config.json", "modeling_medmamba.py"} <= (
        uploaded
    )
    assert {"all_results.json", "test_report.json", "confusion_matrix.png"} <= uploaded
    card = ModelCard(commit["contents"]["README.md"].decode())
    all_results = json.loads((out / "all_results.json").read_text())
    metrics = {r.metric_name: (r.metric_value, r.dataset_split) for r in card.data.eval_results}
    assert metrics["Accuracy"] == (round(all_results["test_accuracy"], 4), "test")
    assert metrics["One-vs-rest AUC"] == (round(all_results["test_auc"], 4), "test")
    assert card.data.base_model is None and card.data.datasets is None and card.data.license == "apache-2.0"
    assert f"{FakeHfApi.user}/medmamba-bm" in card.text  # the loading examples name the repository
    assert commit["contents"]["model.safetensors"] == (out / "model.safetensors").read_bytes()


def test_published_segmentation_card_names_its_base_model_and_dataset(
    tmp_path, datasets_cache, fake_hf_api, local_hub, monkeypatch
):
    """VM-UNet started from converted VMamba weights (--base_model names them on the Hub) on a Hub dataset: the card
    gets base_model and datasets, and the upload carries it."""
    import datasets

    torch.manual_seed(0)
    VMambaForImageClassification(
        VMambaConfig(depths=[1, 1, 1, 1], dims=[16, 32, 64, 128], id2label={0: "a", 1: "b"})
    ).save_pretrained(tmp_path / "vmamba")
    busi = datasets.load_dataset("imagefolder", data_dir=data_dir("busi_seg"), cache_dir=datasets_cache)
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: busi)
    checked = []  # the fresh-process load check runs in the classification test above; here only its call is seen
    verified = {"remote_max_abs_diff": 0.0, "remote_tolerance": 1e-4}
    monkeypatch.setattr(hf_medmamba.tools.hub, "verify_folder", lambda folder: checked.append(folder) or verified)
    (tmp_path / "dataset_repo").mkdir()
    local_hub.add("lab/busi-seg", tmp_path / "dataset_repo", repo_type="dataset")  # no id2label.json: binary names
    out = tmp_path / "vmunet-busi"
    example("run_semantic_segmentation").main(
        [
            "--dataset_name", "lab/busi-seg", "--preset", "vmunet-paper", "--config_overrides", TINY_VMUNET,
            "--encoder_name_or_path", str(tmp_path / "vmamba"), "--base_model", "lab/vmamba-s-v0",
            "--image_size", "32", "--max_train_samples", "2", "--max_eval_samples", "2", "--max_steps", "1",
            "--num_overlays", "0", "--push_to_hub", "--hub_model_id", "lab/vmunet-busi", "--hub_revision", "dev",
            *TRAIN_EVAL, *common_args(out, datasets_cache),
        ]
    )  # fmt: skip
    assert names(fake_hf_api) == ["HfApi", "create_repo", "create_branch", "create_commit"]  # no whoami: a full id
    assert local_hub.paths("HEAD") == ["/datasets/lab/busi-seg/resolve/main/id2label.json"]
    (commit,) = [info for name, info in fake_hf_api if name == "create_commit"]
    assert commit["repo_id"] == "lab/vmunet-busi" and commit["revision"] == "dev"
    assert checked == [out]
    card = ModelCard(commit["contents"]["README.md"].decode())
    assert card.data.base_model == "lab/vmamba-s-v0" and card.data.datasets == ["lab/busi-seg"]
    assert {r.dataset_type for r in card.data.eval_results} == {"lab/busi-seg"}
    assert "DSC (pooled over all pixels)" in {r.metric_name for r in card.data.eval_results}


def test_hub_flags_that_cannot_be_honoured_are_refused_before_training(tmp_path, datasets_cache, fake_hf_api):
    base = [
        "--data_dir", data_dir("busi_cls"), "--preset", "medmamba-t", "--config_overrides", TINY_MEDMAMBA,
        "--image_size", "32", "--max_train_samples", "2", "--max_steps", "1", *common_args(tmp_path, datasets_cache),
    ]  # fmt: skip
    script = example("run_image_classification")
    with pytest.raises(ValueError, match="--hub_strategy every_save is not supported"):
        script.main([*base, "--do_train", "--push_to_hub", "--hub_strategy", "every_save"])
    with pytest.raises(ValueError, match="--hub_strategy checkpoint is not supported"):
        script.main([*base, "--do_train", "--hub_strategy", "checkpoint"])
    with pytest.raises(ValueError, match="add --do_train"):
        script.main([*base, "--do_eval", "--push_to_hub"])
    with pytest.raises(ValueError, match="'convnext' model is not one"):
        script.main([*base, "--do_train", "--push_to_hub", "--model_type", "convnext"])
    assert fake_hf_api == [] and not (tmp_path / "model.safetensors").exists()  # refused before any work


def test_holdout_validation_keeps_the_test_split_for_the_report(tmp_path, datasets_cache):
    """With --holdout_validation the checkpoint is chosen on a part of train and test is only reported."""
    out = tmp_path / "seg"
    results = example("run_semantic_segmentation").main(
        [
            "--data_dir", data_dir("busi_seg"), "--config_overrides", TINY_VMUNET, "--recipe", "isic",
            "--image_size", "32", "--max_steps", "1", "--per_device_train_batch_size", "2", "--num_overlays", "0",
            "--holdout_validation", "--train_val_split", "0.2", "--do_train", "--do_eval", "--do_predict",
            *common_args(out, datasets_cache),
        ]
    )  # fmt: skip
    sizes = [results[f"num_{role}_examples"] for role in ("train", "eval", "test")]
    assert sizes == [60, 15, 20]  # 20 % of the 75 training images held out; all 20 test images only reported
    assert "test_dsc" in json.loads((out / "all_results.json").read_text())
