"""The fixed content of the model cards, as data: tags, citations, upstream sources, the papers' reported results,
and per kind of model (MedMamba, VMamba, VM-UNet in the ISIC or Synapse setting) its title, summary, intended use,
limitations, training data and default licence. `hf_medmamba.tools.model_card` fills the template with them."""

import re
from pathlib import Path


BASE_TAGS = ["medical-imaging", "mamba", "state-space-model", "vision-mamba", "custom_code"]

CITATIONS_FILE = Path(__file__).with_name("data") / "citations.bib"
CITATION_KEYS = {
    "medmamba": "yue2024medmamba",
    "vmunet": "ruan2024vmunet",
    "vmamba": "liu2024vmamba",
}  # paper -> BibTeX key in citations.bib


def _citations():
    """Paper -> its BibTeX entry, from citations.bib."""
    entries = [entry.strip() for entry in re.split(r"\n(?=@)", CITATIONS_FILE.read_text().strip())]
    by_key = {re.match(r"@\w+\{([^,]+),", entry).group(1): entry for entry in entries}
    return {paper: by_key[key] for paper, key in CITATION_KEYS.items()}


CITATIONS = _citations()

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

# The papers' and releases' own numbers, shown in the card's body in a labelled table (never in the model-index).
PAPER_RESULTS = {
    "medmamba": {
        "note": "From the MedMamba repository README (current version). The variant (T/S/B) behind each row is "
        "not stated, two datasets are private, and none of these numbers was reproduced for this checkpoint.",
        "columns": ["dataset", "classes", "precision", "sensitivity", "specificity", "F1", "accuracy", "AUC"],
        "rows": MEDMAMBA_REPORTED,
    },
    "vmunet": {
        "note": "From the VM-UNet paper (arXiv:2402.02491) as recorded in this port's specification. The ISIC "
        "numbers are **unverified** (recalled, not checked against the paper); only the Synapse mean DSC was "
        "confirmed, by a third-party listing. None of them was reproduced for this checkpoint.",
        "columns": ["dataset", "mIoU", "DSC", "accuracy", "specificity", "sensitivity", "HD95", "status"],
        "rows": VMUNET_REPORTED,
    },
    "vmamba": {
        "note": "From the VMamba authors' v0 release (`vssmsmall_dp03_ckpt_epoch_238.pth`, EMA weights, log "
        "`vssmsmall_dp03_e238_ema.log`); not reproduced for this checkpoint.",
        "columns": ["model", "dataset", "resolution", "top-1 accuracy", "parameters"],
        "rows": [("VMamba-S v0", "ImageNet-1k val", "224", "83.5 %", "44 M")],
    },
}

ARCH_NAMES = {
    "medmamba": "MedMamba (Conv-SSM blocks, `MedMambaForImageClassification`)",
    "vmamba": "VMamba v0 (VSS blocks, `VMambaForImageClassification`)",
    "vmunet": "VM-UNet (VMamba v0 encoder, VSS decoder, `VMUNetForSegmentation`)",
}

KIND_INFO = {
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

TRAINING_DATA = {
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

INITIALISED_TRAINING = [
    "Not trained on medical data: encoder weights (and, as upstream, copies of them in the decoder's VSS blocks) come "
    "from VMamba-S v0 trained on ImageNet-1k (non-commercial research and educational terms of access); the rest "
    "is randomly initialised.",
]
