"""Model cards: every card type renders from the package template, its YAML metadata and model-index parse back, the
papers' numbers stay out of the model-index, and the key sections are present."""

import json

import pytest
import yaml
from huggingface_hub import ModelCard
from transformers import pipeline

from hf_medmamba import MedMambaConfig, MedMambaForImageClassification, MedMambaImageProcessor
from hf_medmamba.tools.model_card import TEMPLATE_PATH, build_model_card, example_cards, load_eval_results
from hf_medmamba.tools.model_card_texts import BASE_TAGS

from ..conftest import REPO, data_path


CARD_TYPES = {
    "medmamba-t": ("image-classification", "medmamba", "2403.03849", "other"),
    "medmamba-s": ("image-classification", "medmamba", "2403.03849", "other"),
    "medmamba-b": ("image-classification", "medmamba", "2403.03849", "other"),
    "vmamba-s": ("image-classification", "vmamba", "2401.10166", "mit"),
    "vmunet-isic": ("image-segmentation", "skin-lesion", "2402.02491", "other"),
    "vmunet-synapse": ("image-segmentation", "multi-organ", "2402.02491", "other"),
}

EVAL_RESULTS = [
    {
        "dataset_type": "busi",
        "dataset_name": "BUSI (test split)",
        "dataset_split": "test",
        "metric_type": "accuracy",
        "metric_value": 0.8125,
    },
    {"dataset_type": "busi", "dataset_name": "BUSI (test split)", "metric_type": "f1", "metric_value": 0.79},
]


@pytest.fixture(scope="module")
def cards():
    return example_cards()


def front_matter(text):
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def tiny_card(**kwargs):
    config = MedMambaConfig(depths=[1, 1, 1, 1], dims=[16, 32, 64, 128], id2label={0: "benign", 1: "malignant"})
    return build_model_card(config, MedMambaImageProcessor.for_model(config), **kwargs)


@pytest.mark.parametrize("name", sorted(CARD_TYPES))
def test_every_card_type_renders_and_parses_back(cards, tmp_path, name):
    task, tag, arxiv, license = CARD_TYPES[name]
    path = tmp_path / "README.md"
    cards[name].save(path)
    card = ModelCard.load(path)
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == task and data.license == license
    assert set(BASE_TAGS) <= set(data.tags) and tag in data.tags
    assert data.eval_results is None
    meta = front_matter(path.read_text())
    assert "model-index" not in meta
    text = card.text
    assert "**Not a medical device.**" in text and "not for clinical decisions" in text
    assert f"arxiv.org/abs/{arxiv}" in text and "```bibtex" in text
    assert "trust_remote_code=True)" in text and "import hf_medmamba" in text and "trust_remote_code=False" in text
    assert f'pipeline("{task}"' in text
    assert "## Provenance" in text and "Source SHA-256" in text
    assert "## Reported in the paper / by the upstream authors (not measured here)" in text
    assert "{{" not in text and "{%" not in text


def test_card_specific_content(cards):
    isic, synapse = cards["vmunet-isic"].text, cards["vmunet-synapse"].text
    assert 'normalization_mode="isic"' in isic and "[0, 255]" in isic
    assert "**unverified**" in isic and "| ISIC 2017 | 80.23 |" in isic
    assert "class-index masks" in synapse and "gray (1 channel)" in synapse and "`5`: liver" in synapse
    medmamba = cards["medmamba-t"].text
    assert "| PAD-UFES-20 | 6 | 38.4 |" in medmamba and "mean [0.5, 0.5, 0.5]" in medmamba
    assert "14,4" not in medmamba.split("## Model details")[0]
    vmamba = cards["vmamba-s"].text
    assert "1000 classes; the names are in `config.json`" in vmamba and "83.5 %" in vmamba
    assert "`vssmsmall_dp03_ckpt_epoch_238.pth`" in vmamba and "ILSVRC/imagenet-1k" in cards["vmamba-s"].data.datasets
    assert "Parameters | 44,417,416" in vmamba
    for name in ("medmamba-t", "vmunet-isic"):  # the papers' numbers never reach the metadata
        assert "80.23" not in str(cards[name].data.to_yaml()) and "38.4" not in str(cards[name].data.to_yaml())


def test_eval_results_give_a_model_index_that_parses_back(tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps(EVAL_RESULTS))
    card = tiny_card(model_name="medmamba-busi", eval_results=tmp_path / "eval.json", datasets=["busi"])
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    results = loaded.data.eval_results
    assert [(r.metric_type, r.metric_value) for r in results] == [("accuracy", 0.8125), ("f1", 0.79)]
    assert all(r.task_type == "image-classification" for r in results)
    assert results[0].dataset_split == "test" and loaded.data.model_name == "medmamba-busi"
    meta = front_matter((tmp_path / "README.md").read_text())
    assert meta["model-index"][0]["name"] == "medmamba-busi"
    assert meta["datasets"] == ["busi"]
    assert "## Evaluation (measured)" in loaded.text and "| 0.8125 |" in loaded.text
    assert "model-index" not in front_matter(str(tiny_card(model_name="medmamba-busi")))


def test_eval_results_are_validated(tmp_path):
    with pytest.raises(ValueError, match="unknown fields"):
        load_eval_results([{**EVAL_RESULTS[0], "paper": True}], "image-classification")
    with pytest.raises(ValueError, match="missing"):
        load_eval_results([{"metric_type": "accuracy", "metric_value": 1.0}], "image-classification")
    with pytest.raises(ValueError, match="task_type"):
        load_eval_results([EVAL_RESULTS[1]])
    with pytest.raises(ValueError, match="eval result 0: If `source_name`"):
        load_eval_results([{**EVAL_RESULTS[1], "source_name": "my script"}], "image-classification")
    with pytest.raises(ValueError, match="non-empty list"):
        load_eval_results({"results": []})
    assert len(load_eval_results({"results": EVAL_RESULTS}, "image-classification")) == 2


def test_provenance_and_options():
    digest = "ab" * 32
    text = str(tiny_card(source_file="MedMambaNet.pth", source_sha256=digest, license="cc-by-4.0", repo_id="me/mm"))
    assert "`MedMambaNet.pth`" in text and f"`{digest}`" in text
    assert front_matter(text)["license"] == "cc-by-4.0"
    assert 'model="me/mm"' in text
    with pytest.raises(ValueError, match="status"):
        tiny_card(status="finished")


def test_template_is_package_data():
    assert TEMPLATE_PATH.is_file() and TEMPLATE_PATH.parent.name == "templates"
    assert "{{ card_data }}" in TEMPLATE_PATH.read_text()


def test_example_cards_in_the_repository_are_current(cards, tmp_path):
    """model_cards/*.md are generated (hf_medmamba.tools.model_card.write_example_cards); re-render and compare."""
    for name, card in cards.items():
        card.save(tmp_path / f"{name}.md")
        assert (REPO / "model_cards" / f"{name}.md").read_text() == (tmp_path / f"{name}.md").read_text(), name


def test_loading_instructions_with_the_package_installed(tmp_path):
    """The card's second recipe: with hf_medmamba imported, trust_remote_code=False uses the package's classes."""
    config = MedMambaConfig(depths=[1, 1, 1, 1], dims=[16, 32, 64, 128], id2label={0: "benign", 1: "malignant"})
    model = MedMambaForImageClassification(config).eval()
    processor = MedMambaImageProcessor.for_model(config, image_size=64)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    classifier = pipeline("image-classification", model=str(tmp_path), trust_remote_code=False)
    assert type(classifier.model).__module__ == "hf_medmamba.modeling_medmamba"
    import PIL.Image

    with PIL.Image.open(data_path("busi_cls", "test", "benign", "benign_0003.png")) as image:
        result = classifier(image.copy())
    assert sorted(r["label"] for r in result) == ["benign", "malignant"]


def test_a_trained_card_describes_its_own_data_not_the_upstream_setting():
    from hf_medmamba import VMUNetConfig, VMUNetImageProcessor

    config = VMUNetConfig.from_preset("vmunet-paper")
    converted = build_model_card(config, VMUNetImageProcessor.for_model(config))
    trained = build_model_card(
        config, VMUNetImageProcessor.for_model(config), status="trained", training_data=["BUSI ultrasound, 75 images."]
    )
    assert {"skin-lesion", "dermoscopy"} <= set(converted.data.tags)
    assert not {"skin-lesion", "dermoscopy"} & set(trained.data.tags)
    assert "darker skin types" in converted.text and "darker skin types" not in trained.text
    assert "ISIC setting" not in trained.text.split("## ")[0] and "- BUSI ultrasound, 75 images." in trained.text
