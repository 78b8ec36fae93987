"""Model cards for converted and trained hf_medmamba folders: `huggingface_hub.ModelCard` rendered from the package's
Jinja template (``templates/modelcard_template.md``).

The metadata's ``model-index`` only ever holds evaluation results that were measured on the checkpoint (passed in as
`EvalResult` objects or a JSON file); the numbers reported by the papers go into a separate, labelled table in the
body. Not part of the remote-code files.
"""

import inspect
import json
from collections.abc import Mapping
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData


TEMPLATE_PATH = Path(__file__).with_name("templates") / "modelcard_template.md"

BASE_TAGS = ["medical-imaging", "mamba", "state-space-model", "vision-mamba", "custom_code"]

CITATIONS = {
    "medmamba": """@misc{yue2024medmamba,
  title         = {MedMamba: Vision Mamba for Medical Image Classification},
  author        = {Yue, Yubiao and Li, Zhenzhang},
  year          = {2024},
  eprint        = {2403.03849},
  archivePrefix = {arXiv},
  url           = {https://arxiv.org/abs/2403.03849}
}""",
    "vmunet": """@misc{ruan2024vmunet,
  title         = {VM-UNet: Vision Mamba UNet for Medical Image Segmentation},
  author        = {Ruan, Jiacheng and Li, Jincheng and Xiang, Suncheng},
  year          = {2024},
  eprint        = {2402.02491},
  archivePrefix = {arXiv},
  url           = {https://arxiv.org/abs/2402.02491}
}""",
    "vmamba": """@misc{liu2024vmamba,
  title         = {VMamba: Visual State Space Model},
  author        = {Liu, Yue and Tian, Yunjie and Zhao, Yuzhong and Yu, Hongtian and Xie, Lingxi and Wang, Yaowei
                   and Ye, Qixiang and Liu, Yunfan},
  year          = {2024},
  eprint        = {2401.10166},
  archivePrefix = {arXiv},
  url           = {https://arxiv.org/abs/2401.10166}
}""",
}

UPSTREAM = {
    "medmamba": ("https://github.com/YubiaoYue/MedMamba", "commit 104beb3; model file last changed in ba7ac24"),
    "vmunet": ("https://github.com/JCruan519/VM-UNet", "commit 43c495b"),
    "vmamba": ("https://github.com/MzeroMiko/VMamba", "commit 0ec6c27, the v0 model"),
}

# MedMamba's repository README (spec section 2.8): variant not stated, two datasets private; percentages and AUC.
MEDMAMBA_REPORTED = [
    ("PAD-UFES-20", 6, 38.4, 36.9, 89.9, 35.8, 58.8, 0.808),
    ("Cervical-US (private)", 4, 81.2, 76.2, 94.9, 78.0, 86.2, 0.952),
    ("Fetal-Planes-DB", 6, 92.2, 93.9, 98.7, 93.0, 94.0, 0.993),
    ("CPN X-ray", 3, 97.2, 97.2, 98.5, 97.2, 97.1, 0.995),
    ("Kvasir", 8, 78.7, 78.8, 97.0, 78.6, 78.8, 0.973),
    ("Otoscopy2024 (private)", 9, 86.0, 84.4, 98.6, 85.2, 89.5, 0.989),
    ("PathMNIST", 9, 94.0, 94.7, 99.4, 94.2, 95.3, 0.997),
    ("DermaMNIST", 7, 67.3, 50.1, 93.6, 51.6, 77.9, 0.917),
    ("OCTMNIST", 4, 92.8, 91.8, 97.3, 91.8, 91.8, 0.992),
    ("PneumoniaMNIST", 2, 92.1, 87.0, 87.0, 88.6, 89.9, 0.965),
    ("RetinaMNIST", 5, 35.9, 37.7, 87.5, 36.1, 54.3, 0.747),
    ("BreastMNIST", 2, 91.6, 72.6, 72.6, 76.6, 85.3, 0.825),
    ("BloodMNIST", 8, 97.7, 97.7, 99.7, 97.7, 97.8, 0.999),
    ("OrganAMNIST", 11, 94.4, 93.3, 99.5, 93.8, 94.6, 0.998),
    ("OrganCMNIST", 11, 92.2, 91.6, 99.3, 91.7, 92.7, 0.997),
    ("OrganSMNIST", 11, 78.0, 77.4, 98.2, 76.3, 81.9, 0.982),
]

# VM-UNet paper (spec section 3.10). Only Synapse's mean DSC is confirmed (by a third-party listing of the paper).
VMUNET_REPORTED = [
    ("ISIC 2017", "80.23", "89.03", "96.29", "97.58", "89.90", "–", "unverified (not checked against the paper)"),
    ("ISIC 2018", "81.35", "89.71", "94.91", "96.13", "91.12", "–", "unverified (not checked against the paper)"),
    ("Synapse", "–", "81.08", "–", "–", "–", "19.21", "DSC from a third-party listing of the paper; HD95 unverified"),
]

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
    rows = [("Architecture", _ARCH_NAMES[config.model_type]), ("Variant", variant or "custom")]
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


_ARCH_NAMES = {
    "medmamba": "MedMamba (Conv-SSM blocks, `MedMambaForImageClassification`)",
    "vmamba": "VMamba v0 (VSS blocks, `VMambaForImageClassification`)",
    "vmunet": "VM-UNet (VMamba v0 encoder, VSS decoder, `VMUNetForSegmentation`)",
}

_KIND_INFO = {
    "medmamba": {
        "title": "MedMamba (medical image classification)",
        "task": "image-classification",
        "auto_class": "AutoModelForImageClassification",
        "tags": ["medmamba", "image-classification"],
        "citations": ["medmamba", "vmamba"],
        "summary": [
            "MedMamba (Yue & Li, 2024) is a Vision-Mamba classifier for medical images: a patch embedding and four "
            "stages of Conv-SSM blocks, each splitting its channels between a convolution branch and a 2-D selective "
            "scan (SS2D) branch and mixing them with a channel shuffle, followed by average pooling and a linear head.",
            "This repository holds the model in Hugging Face `transformers` format: the `hf_medmamba` port, whose "
            "outputs match the original code's on the same weights (max abs difference below 1e-4).",
        ],
        "intended_use": "Research on medical image classification: benchmarking, fine-tuning on a labelled dataset "
        "of the same kind of images, and studying state-space vision models.",
        "limitations": [
            "It only knows the classes and image type it was trained on; accuracy on other scanners, sites, "
            "populations or image sizes is unknown and usually lower.",
            "Its scores are not calibrated probabilities of disease.",
        ],
        "classes_note": None,
        "example_image": "image.png",
        "pipe_name": "classifier",
        "datasets": None,
        "license": ("other", "upstream-medmamba-weights", "https://github.com/YubiaoYue/MedMamba"),
    },
    "vmamba": {
        "title": "VMamba v0 (ImageNet-1k classifier)",
        "task": "image-classification",
        "auto_class": "AutoModelForImageClassification",
        "tags": ["vmamba", "image-classification", "imagenet", "backbone"],
        "citations": ["vmamba", "vmunet"],
        "summary": [
            "VMamba v0 (Liu et al., 2024; the first-generation 'vanilla' VMamba) is a visual state-space model: "
            "stages of VSS blocks (LayerNorm, four-direction 2-D selective scan, residual) with patch merging, a final "
            "LayerNorm and a linear classifier. VMamba-S v0 trained on ImageNet-1k is the encoder that VM-UNet "
            "initialises from.",
            "This repository holds it in Hugging Face `transformers` format (the `hf_medmamba` port). It is a general "
            "ImageNet classifier and backbone, not a medical model.",
        ],
        "intended_use": "An ImageNet-1k classifier and, mainly, the pretrained encoder for VM-UNet and other "
        "fine-tuning (`hf_medmamba`'s VMamba -> VM-UNet initialisation reproduces upstream VM-UNet's `load_from`).",
        "limitations": [
            "Trained on natural images (ImageNet-1k); it knows nothing medical and inherits ImageNet's biases.",
        ],
        "classes_note": None,
        "example_image": "image.jpg",
        "pipe_name": "classifier",
        "datasets": ["ILSVRC/imagenet-1k"],
        "license": ("mit", None, None),
    },
    "vmunet-isic": {
        "title": "VM-UNet (binary lesion segmentation, ISIC setting)",
        "trained_title": "VM-UNet (binary lesion segmentation)",
        "task": "image-segmentation",
        "auto_class": "AutoModelForSemanticSegmentation",
        "tags": ["vm-unet", "image-segmentation", "semantic-segmentation"],
        "setting_tags": ["skin-lesion", "dermoscopy"],
        "citations": ["vmunet", "vmamba"],
        "summary": [
            "VM-UNet (Ruan et al., 2024) is a U-shaped segmentation network built only from visual state-space (VSS) "
            "blocks: a VMamba v0 encoder, a VSS decoder with patch-expanding upsampling and additive skip "
            "connections, and a 1x1 convolution head. This checkpoint has upstream's binary head (one channel, "
            "sigmoid) as used for ISIC 2017/2018 skin-lesion segmentation.",
            "This repository holds the model in Hugging Face `transformers` format: the `hf_medmamba` port, whose "
            "outputs match the original code's on the same weights (max abs difference below 1e-4).",
        ],
        "intended_use": "Research on binary lesion segmentation (dermoscopy as in ISIC 2017/2018, or other images "
        "after fine-tuning): benchmarking and fine-tuning.",
        "limitations": [
            "Binary only: lesion versus background, thresholded at 0.5 by default (`threshold` in the processor).",
            "Expects the ISIC min-max normalisation (see Input preprocessing); other normalisations degrade it.",
        ],
        "setting_limitations": [
            "Dermoscopy datasets under-represent darker skin types; performance across skin tones is unknown.",
        ],
        "classes_note": None,
        "example_image": "lesion.png",
        "pipe_name": "segmenter",
        "datasets": None,
        "license": ("other", "upstream-vm-unet-weights", "https://github.com/JCruan519/VM-UNet"),
    },
    "vmunet-synapse": {
        "title": "VM-UNet (multi-organ CT segmentation, Synapse setting)",
        "trained_title": "VM-UNet (multi-class segmentation)",
        "task": "image-segmentation",
        "auto_class": "AutoModelForSemanticSegmentation",
        "tags": ["vm-unet", "image-segmentation", "semantic-segmentation"],
        "setting_tags": ["ct", "multi-organ", "abdomen"],
        "citations": ["vmunet", "vmamba"],
        "summary": [
            "VM-UNet (Ruan et al., 2024) is a U-shaped segmentation network built only from visual state-space (VSS) "
            "blocks: a VMamba v0 encoder, a VSS decoder with patch-expanding upsampling and additive skip "
            "connections, and a 1x1 convolution head. This checkpoint has a multi-class softmax head as in the "
            "paper's Synapse multi-organ CT setting (background and eight abdominal organs, gray 2-D slices).",
            "This repository holds the model in Hugging Face `transformers` format: the `hf_medmamba` port, whose "
            "outputs match the original code's on the same weights (max abs difference below 1e-4).",
        ],
        "intended_use": "Research on 2-D slice-wise multi-organ segmentation of abdominal CT: benchmarking and "
        "fine-tuning. Volumes are segmented slice by slice.",
        "limitations": [
            "Works on 2-D slices: no 3-D context; the CT windowing must match the training data's.",
        ],
        "setting_limitations": [
            "Trained on very few scans in the Synapse setting (18 training volumes); expect failures on other "
            "scanners, contrast phases and anatomy.",
        ],
        "classes_note": None,
        "example_image": "ct_slice.png",
        "pipe_name": "segmenter",
        "datasets": None,
        "license": ("other", "upstream-vm-unet-weights", "https://github.com/JCruan519/VM-UNet"),
    },
}

_TRAINING_DATA = {
    "medmamba": [
        "The data this checkpoint was trained on is not recorded in the checkpoint itself; see the datasets in the "
        "metadata when given. The upstream authors' weights cover the datasets in the reported-results table, two "
        "of them private; each public dataset has its own licence (MedMNIST: CC BY 4.0; check the others).",
    ],
    "vmamba": [
        "ImageNet-1k (ILSVRC 2012): about 1.28 million training images in 1000 classes. ImageNet is distributed "
        "under its terms of access (non-commercial research and educational use).",
        "Class names: WordNet lemmas of the 1000 synsets, in the standard order (from the timm package, Apache-2.0).",
    ],
    "vmunet-isic": [
        "Upstream's setting: ISIC 2017 or ISIC 2018 dermoscopy images with binary lesion masks (International Skin "
        "Imaging Collaboration), split 7:3 into train and validation by the VM-UNet authors; the encoder started from "
        "ImageNet-1k VMamba-S v0 weights. The ISIC images carry their own Creative Commons licences (check the ISIC "
        "Archive's terms).",
    ],
    "vmunet-synapse": [
        "Upstream's setting: Synapse multi-atlas abdominal CT (MICCAI 2015 'Beyond the Cranial Vault' challenge), "
        "30 contrast-enhanced scans with 8 organ labels, 18 for training and 12 for testing as in TransUNet / "
        "Swin-UNet, 224 x 224 slices; the encoder started from ImageNet-1k VMamba-S v0 weights. The data is "
        "distributed by Synapse under its own terms of use.",
    ],
}

_INITIALISED_TRAINING = [
    "Not trained on medical data: encoder weights (and, as upstream, copies of them in the decoder's VSS blocks) come "
    "from VMamba-S v0 trained on ImageNet-1k (non-commercial research and educational terms of access); the rest "
    "is randomly initialised.",
]


def _paper_results(kind):
    if kind == "medmamba":
        return {
            "note": "From the MedMamba repository README (current version). The variant (T/S/B) behind each row is "
            "not stated, two datasets are private, and none of these numbers was reproduced for this checkpoint.",
            "columns": ["dataset", "classes", "precision", "sensitivity", "specificity", "F1", "accuracy", "AUC"],
            "rows": MEDMAMBA_REPORTED,
        }
    if kind.startswith("vmunet"):
        return {
            "note": "From the VM-UNet paper (arXiv:2402.02491) as recorded in this port's specification. The ISIC "
            "numbers are **unverified** (recalled, not checked against the paper); only the Synapse mean DSC was "
            "confirmed, by a third-party listing. None of them was reproduced for this checkpoint.",
            "columns": ["dataset", "mIoU", "DSC", "accuracy", "specificity", "sensitivity", "HD95", "status"],
            "rows": VMUNET_REPORTED,
        }
    return {
        "note": "From the VMamba authors' v0 release (`vssmsmall_dp03_ckpt_epoch_238.pth`, EMA weights, log "
        "`vssmsmall_dp03_e238_ema.log`); not reproduced for this checkpoint.",
        "columns": ["model", "dataset", "resolution", "top-1 accuracy", "parameters"],
        "rows": [("VMamba-S v0", "ImageNet-1k val", "224", "83.5 %", "44 M")],
    }


def _license(kind, license, status):
    if license:
        return license, None, None, f"`{license}` (as given {'at conversion' if status == 'converted' else 'for it'})."
    if status == "initialised":
        return "mit", None, None, "`mit`, the licence of the VMamba weights it is initialised from."
    name, license_name, link = _KIND_INFO[kind]["license"]
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
    info = _KIND_INFO[kind]
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
    from . import __version__

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
        training_data = _INITIALISED_TRAINING if status == "initialised" else _TRAINING_DATA[kind]
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
    import torch

    from .configuration_medmamba import MedMambaConfig
    from .configuration_vmamba import VMambaConfig
    from .configuration_vmunet import VMUNetConfig
    from .convert import imagenet_id2label
    from .image_processing_medmamba import MedMambaImageProcessor
    from .image_processing_vmamba import VMambaImageProcessor
    from .image_processing_vmunet import VMUNetImageProcessor
    from .modeling_medmamba import MedMambaForImageClassification
    from .modeling_vmamba import VMambaForImageClassification
    from .modeling_vmunet import VMUNetForSegmentation

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
