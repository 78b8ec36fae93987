"""Model cards for converted and trained hf_medmamba folders: `huggingface_hub.ModelCard` rendered from the package's
Jinja template (``templates/modelcard_template.md``).

The metadata's ``model-index`` only ever holds evaluation results that were measured on the checkpoint (passed in as
`EvalResult` objects or a JSON file); the numbers reported by the papers go into a separate, labelled table in the
body. The fixed texts and tables are data in `hf_medmamba.tools.model_card_texts`.
"""

import inspect
import json
from collections.abc import Mapping
from pathlib import Path

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .. import __version__
from ..configuration_medmamba import MedMambaConfig
from ..configuration_vmamba import VMambaConfig
from ..configuration_vmunet import VMUNetConfig
from ..image_processing_medmamba import MedMambaImageProcessor
from ..image_processing_vmamba import VMambaImageProcessor
from ..image_processing_vmunet import VMUNetImageProcessor
from ..modeling_medmamba import MedMambaForImageClassification
from ..modeling_vmamba import VMambaForImageClassification
from ..modeling_vmunet import VMUNetForSegmentation
from .labels import imagenet_id2label
from .model_card_texts import (
    ARCH_NAMES,
    BASE_TAGS,
    CITATIONS,
    INITIALISED_TRAINING,
    KIND_INFO,
    PAPER_RESULTS,
    TRAINING_DATA,
    UPSTREAM,
)


TEMPLATE_PATH = Path(__file__).with_name("templates") / "modelcard_template.md"

EVAL_RESULT_FIELDS = set(inspect.signature(EvalResult.__init__).parameters) - {"self"}
EVAL_RESULT_REQUIRED = {"dataset_type", "dataset_name", "metric_type", "metric_value"}


def load_eval_results(source, task_type=None):
    """`EvalResult` objects from a JSON file (or already-parsed data): a list of objects, or ``{"results": [...]}``,
    each with ``dataset_type``, ``dataset_name``, ``metric_type``, ``metric_value`` and optionally ``task_type``
    (default: the card's pipeline tag) and the other `EvalResult` fields. Only for results measured on the
    checkpoint."""
    if isinstance(source, (str, Path)):
        with open(source, encoding="utf-8") as f:
            data = json.load(f)
    else:
        data = source
    if isinstance(data, Mapping):
        data = data.get("results", data.get("eval_results"))
    if not isinstance(data, list) or not data:
        raise ValueError(f"eval results must be a non-empty list of result objects, got {type(data).__name__}.")
    results = []
    for i, item in enumerate(data):
        if isinstance(item, EvalResult):
            results.append(item)
            continue
        unknown = set(item) - EVAL_RESULT_FIELDS
        missing = EVAL_RESULT_REQUIRED - set(item)
        if unknown or missing:
            raise ValueError(
                f"eval result {i}: unknown fields {sorted(unknown)}, missing {sorted(missing)}; allowed fields are "
                f"{sorted(EVAL_RESULT_FIELDS)}."
            )
        item = dict(item)
        if task_type is not None:
            item.setdefault("task_type", task_type)
        if "task_type" not in item:
            raise ValueError(f"eval result {i}: no task_type (e.g. 'image-classification').")
        try:
            results.append(EvalResult(**item))
        except (TypeError, ValueError) as err:
            raise ValueError(f"eval result {i}: {err}") from None
    return results


def _labels(config):
    id2label = getattr(config, "id2label", None) or {}
    return [(int(i), name) for i, name in sorted(id2label.items(), key=lambda kv: int(kv[0]))]


def _size_text(size):
    size = dict(size)
    if size.get("height") and size.get("width"):
        return f"{size['height']} x {size['width']}"
    return f"shorter side {size.get('shortest_edge')}"


def _resample_name(resample):
    return getattr(resample, "name", str(resample)).lower()


def preprocessing_lines(processor, config):
    """What the image processor does, in words (from its actual settings)."""
    channels = "gray (1 channel)" if config.num_channels == 1 else "RGB (3 channels)"
    lines = [
        f"Input: {channels}; the processor converts gray and colour images to this (PIL images, NumPy arrays or "
        "tensors; 16-bit and float data are first brought to the 8-bit scale).",
        f"Resize to {_size_text(processor.size)} ({_resample_name(processor.resample)})"
        + (
            f", then centre-crop {_size_text(processor.crop_size)}"
            if getattr(processor, "do_center_crop", False)
            else ""
        )
        + ".",
    ]
    mode = getattr(processor, "normalization_mode", None)
    if mode == "isic":
        lines.append(
            'Normalisation `normalization_mode="isic"` (upstream VM-UNet\'s ISIC pipeline): each image is min-max '
            "scaled to [0, 255] over all its pixels and channels, `255 * (x - min) / (max - min)`, before resizing; "
            "no division by 255 and no mean/std. Model inputs lie in [0, 255]; ImageNet-style normalisation gives "
            "wrong results with these weights."
        )
    else:
        lines.append(
            f"Rescale by {processor.rescale_factor:.6g} (to [0, 1]), then normalise with mean "
            f"{list(processor.image_mean)} and std {list(processor.image_std)}."
        )
    if mode is not None:
        masks = (
            "binary masks with values {0, 255} or {0, 1}"
            if processor.mask_mode == "binary"
            else "class-index masks (0 = background)"
        )
        lines.append(f"Masks for fine-tuning (`segmentation_maps=`): {masks}, resized with nearest neighbour.")
    if config.model_type in ("medmamba", "vmamba"):
        lines.append("Height and width reaching the model must be multiples of 32.")
    else:
        lines.append(
            "Any size of at least 32 x 32 works inside the model (padded to a multiple of 32 and cropped back)."
        )
    return lines


def _kind(config):
    if config.model_type == "vmunet":
        return "vmunet-isic" if config.sigmoid_head or config.num_labels == 2 else "vmunet-synapse"
    return config.model_type


def _architecture(config, variant, num_parameters):
    rows = [("Architecture", ARCH_NAMES[config.model_type]), ("Variant", variant or "custom")]
    if config.model_type == "vmunet":
        rows += [("Encoder depths", config.depths), ("Decoder depths", config.depths_decoder)]
    else:
        rows.append(("Depths", config.depths))
    rows += [
        ("Widths (dims)", config.dims),
        ("SS2D", f"d_state {config.d_state}, expand {config.expand}, d_conv {config.d_conv}, dt_rank {config.dt_rank}"),
    ]
    if num_parameters:
        rows.append(("Parameters", f"{num_parameters:,}"))
    if config.model_type == "vmunet":
        head = "1 channel, sigmoid (binary)" if config.sigmoid_head else f"{config.num_labels} channels, softmax"
        rows.append(("Head", head))
    else:
        rows.append(("Classes", config.num_labels))
    rows.append(("Input channels", config.num_channels))
    return rows


def _paper_results(kind):
    return PAPER_RESULTS["vmunet" if kind.startswith("vmunet") else kind]


def _license(kind, license, status):
    if license:
        return license, None, None, f"`{license}` (as given {'at conversion' if status == 'converted' else 'for it'})."
    if status == "initialised":
        return "mit", None, None, "`mit`, the licence of the VMamba weights it is initialised from."
    name, license_name, link = KIND_INFO[kind]["license"]
    if name == "other":
        text = (
            f"`other`: the upstream authors' weights come without a licence statement checked for this port; the "
            f"terms of the upstream repository ({link}) and of the training data apply. Set `--license` at "
            "conversion when you know them."
        )
    else:
        text = f"`{name}` (the licence of the upstream VMamba repository, which released these weights)."
    return name, license_name, link, text


def _eval_rows(eval_results):
    rows = []
    for result in eval_results or []:
        rows.append(
            {
                "task": result.task_type,
                "dataset": result.dataset_name,
                "split": result.dataset_split or "–",
                "metric": result.metric_name or result.metric_type,
                "value": result.metric_value,
                "source": result.source_name or "measured",
            }
        )
    return rows


def build_model_card(
    config,
    processor=None,
    *,
    model_name=None,
    repo_id=None,
    variant=None,
    status="converted",
    datasets=None,
    license=None,
    base_model=None,
    eval_results=None,
    source_file=None,
    source_sha256=None,
    checkpoint_entry=None,
    init_summary=None,
    num_parameters=None,
    tags=None,
    provenance_note=None,
    training_data=None,
):
    """The model card of an hf_medmamba model: YAML metadata (licence, ``library_name: transformers``,
    ``pipeline_tag``, tags, datasets, ``base_model``, and a ``model-index`` only with measured ``eval_results``) and
    a body (what the model is, how to load it with and without remote code, preprocessing, intended use,
    limitations with the not-a-medical-device statement, training data and licence, the papers' numbers in a
    separate table, citations, and conversion provenance: source file and SHA-256).

    ``status`` is ``"converted"`` (from an upstream checkpoint), ``"initialised"`` (VM-UNet initialised from VMamba,
    not trained) or ``"trained"`` (a folder trained with hf_medmamba). ``training_data`` (a list of sentences)
    replaces the default description of the training data, e.g. for a model fine-tuned here.
    """
    if status not in ("converted", "initialised", "trained"):
        raise ValueError(f"status must be 'converted', 'initialised' or 'trained', got {status!r}.")
    kind = _kind(config)
    info = KIND_INFO[kind]
    if processor is None:
        raise ValueError(
            "build_model_card needs the image processor saved with the model (its settings are documented)."
        )
    task = info["task"]
    # A folder trained here is described by its own data, not by the upstream setting (ISIC, Synapse) of its kind.
    upstream_setting = status != "trained"
    title = info["title"] if upstream_setting else info.get("trained_title", info["title"])
    setting_tags = info.get("setting_tags", []) if upstream_setting else []
    limitations = info["limitations"] + (info.get("setting_limitations", []) if upstream_setting else [])
    if status == "initialised":
        limitations.append("Initialisation only: fine-tune before any use.")
    results = load_eval_results(eval_results, task) if eval_results else None
    license_id, license_name, license_link, license_text = _license(kind, license, status)
    card_data = ModelCardData(
        license=license_id,
        license_name=license_name,
        license_link=license_link,
        library_name="transformers",
        pipeline_tag=task,
        tags=list(dict.fromkeys(BASE_TAGS + info["tags"] + setting_tags + list(tags or []))),
        datasets=list(datasets) if datasets else info["datasets"],
        base_model=base_model,
        model_name=model_name or title,
        eval_results=results,
    )
    labels = _labels(config)
    classes, classes_note = labels, None
    if len(labels) > 30:
        classes, classes_note = None, f"{len(labels)} classes; the names are in `config.json` (`id2label`)."
    upstream_kinds = ["medmamba"] if kind == "medmamba" else (["vmamba"] if kind == "vmamba" else ["vmunet", "vmamba"])
    upstream_code = "; ".join(f"{UPSTREAM[k][0]} ({UPSTREAM[k][1]})" for k in upstream_kinds)
    provenance = [
        ("Produced by", f"`hf_medmamba` {__version__} ({status})"),
        ("Source checkpoint", f"`{source_file}`" if source_file else "none (not converted from a checkpoint file)"),
        ("Source SHA-256", f"`{source_sha256}`" if source_sha256 else "not recorded"),
    ]
    if checkpoint_entry:
        provenance.append(("Weights read from", f"`{checkpoint_entry}`"))
    provenance.append(("Upstream code", upstream_code))
    if provenance_note:
        provenance.append(("Note", provenance_note))
    if training_data is None:
        training_data = INITIALISED_TRAINING if status == "initialised" else TRAINING_DATA[kind]
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        title=model_name or title,
        family=title,
        summary=info["summary"],
        status=status,
        architecture=_architecture(config, variant, num_parameters),
        classes=classes,
        classes_note=classes_note,
        task=task,
        auto_class=info["auto_class"],
        repo_id=repo_id or "<namespace>/<model-name>",
        pipe_name=info["pipe_name"],
        example_image=info["example_image"],
        preprocessing=preprocessing_lines(processor, config),
        intended_use=info["intended_use"],
        limitations=limitations,
        training_data=training_data,
        license_text=license_text,
        upstream_code=upstream_code,
        eval_rows=_eval_rows(results),
        paper_results=_paper_results(kind),
        citations=[CITATIONS[name] for name in info["citations"]],
        provenance=provenance,
        init_summary=init_summary,
    )


def card_for_folder(folder, **kwargs):
    """A card for a saved folder (e.g. one written by `transformers.Trainer`) from its config and processor files."""
    from transformers import AutoConfig, AutoImageProcessor

    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder)
    processor = AutoImageProcessor.from_pretrained(folder)
    kwargs.setdefault("status", "trained")
    kwargs.setdefault("model_name", folder.name)
    return build_model_card(config, processor, **kwargs)


def example_cards():
    """The example cards of ``model_cards/`` (name -> ModelCard), rendered from the presets without checkpoints."""
    busi = {0: "benign", 1: "malignant", 2: "normal"}
    cases = {}
    for size in ("t", "s", "b"):
        config = MedMambaConfig.from_preset(f"medmamba-{size}", id2label=busi)
        cases[f"medmamba-{size}"] = (
            config,
            MedMambaForImageClassification,
            MedMambaImageProcessor.for_model(config),
            {},
        )
    config = VMambaConfig.from_preset("vmamba-s", id2label=imagenet_id2label())
    source = {"source_file": "vssmsmall_dp03_ckpt_epoch_238.pth", "checkpoint_entry": "model"}
    cases["vmamba-s"] = (config, VMambaForImageClassification, VMambaImageProcessor.for_model(config), source)
    for name, preset in (("vmunet-isic", "vmunet-paper"), ("vmunet-synapse", "vmunet-synapse")):
        config = VMUNetConfig.from_preset(preset)
        cases[name] = (config, VMUNetForSegmentation, VMUNetImageProcessor.for_model(config), {"variant": preset})
    cards = {}
    for name, (config, model_class, processor, extra) in cases.items():
        with torch.device("meta"):
            num_parameters = sum(p.numel() for p in model_class(config).parameters())
        extra = {"variant": name, **extra}
        cards[name] = build_model_card(
            config,
            processor,
            model_name=name,
            repo_id=f"<namespace>/{name}",
            num_parameters=num_parameters,
            provenance_note="example card rendered from the preset without a checkpoint; a conversion records the "
            "source file and its SHA-256 here.",
            **extra,
        )
    return cards


def write_example_cards(directory):
    """Render `example_cards` into ``directory`` as ``<name>.md``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, card in example_cards().items():
        card.save(directory / f"{name}.md")
    return sorted(directory.glob("*.md"))
