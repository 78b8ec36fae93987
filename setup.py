"""Packaging for hf-medmamba.

Requirements carry lower bounds only. With torch already installed, a lower bound that it meets leaves it alone; an
upper bound would make pip replace the user's torch (and break the torchvision built for it). Add an upper bound only
for a known breakage, and say which."""

from pathlib import Path

from setuptools import setup


HERE = Path(__file__).parent

CORE = [
    "torch>=2.11",
    "transformers>=5.17",
    "safetensors>=0.4.3",
    "huggingface-hub>=1.0",
    "numpy>=1.26",
    "pillow>=10.0",
]

EXTRAS = {
    # fine-tuning and evaluation: data loading, training loop, metrics, augmentation, plots, NIfTI and HDF5 volumes
    "train": [
        "datasets>=3.0",
        "accelerate>=1.0",
        "scikit-learn>=1.4",
        "monai>=1.4",
        "albumentations>=2.0",
        "matplotlib>=3.8",
        "nibabel>=5.0",
        # TransUNet's Synapse test volumes (test_vol_h5/*.npy.h5) read by examples/prepare_synapse.py
        "h5py>=3.8",
    ],
    # medical files (hf_medmamba.tools.medical_io): DICOM files and series, NIfTI volumes, RAS reorientation
    "medical": ["pydicom>=3.0", "nibabel>=5.0", "monai>=1.4"],
    "cuda": ["mamba-ssm>=1.0.1"],
    # the Triton scan backend (scan_triton.py). Linux CUDA and ROCm builds of torch already bring Triton; this pins the
    # version that the tested torch 2.13.0's CUDA wheel requires (Requires-Dist: triton==3.7.1). With another torch,
    # keep the Triton that torch brought and skip this extra: pip would otherwise move torch to match the pin.
    "triton": ["triton==3.7.1; platform_system == 'Linux'"],
    # deployment: ONNX export (dynamo exporter) and its verification with onnxruntime
    "export": ["onnx>=1.16", "onnxscript>=0.2", "onnxruntime>=1.18"],
}
# the web demo in examples/space (a Gradio app in the layout of a Hugging Face Space)
EXTRAS["space"] = ["gradio>=6.0", *EXTRAS["medical"]]
EXTRAS["dev"] = [
    *EXTRAS["train"],
    *EXTRAS["medical"],
    *EXTRAS["export"],
    # Triton's CPU interpreter runs the Triton scan tests. Not the pin above: pip keeps the Triton an installed torch
    # brought (torch 2.14.1 brings 3.8.0); a fresh CPU environment gets the newest (3.9.0 checked with torch 2.13.0).
    "triton>=3.6; platform_system == 'Linux'",
    *EXTRAS["space"],
    "pytest>=8",
    "playwright>=1.40",  # drives the system Chromium in the Space's browser test (its driver only, no browsers)
    "ruff>=0.6",
    "build>=1.2",
    "hypothesis>=6.100",
]

setup(
    name="hf-medmamba",
    version="0.1.0",
    description="MedMamba and VM-UNet (Vision Mamba for medical imaging) as Hugging Face transformers models",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=["hf_medmamba", "hf_medmamba.kernels", "hf_medmamba.tools"],
    package_data={
        "hf_medmamba.kernels": ["*.cpp"],
        "hf_medmamba.tools": ["templates/*.md", "data/*.json", "data/*.md", "data/*.bib"],
    },
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["hf-medmamba = hf_medmamba.tools.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
