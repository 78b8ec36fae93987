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
    # fine-tuning and evaluation: data loading, training loop, metrics, augmentation, plots, NIfTI volumes
    "train": [
        "datasets>=3.0",
        "accelerate>=1.0",
        "scikit-learn>=1.4",
        "monai>=1.4",
        "albumentations>=2.0",
        "matplotlib>=3.8",
        "nibabel>=5.0",
    ],
    # medical files (hf_medmamba.tools.medical_io): DICOM files and series, NIfTI volumes, RAS reorientation
    "medical": ["pydicom>=3.0", "nibabel>=5.0", "monai>=1.4"],
    "cuda": ["mamba-ssm>=1.0.1"],
    # deployment: ONNX export (dynamo exporter) and its verification with onnxruntime
    "export": ["onnx>=1.16", "onnxscript>=0.2", "onnxruntime>=1.18"],
}
# the web demo in examples/space (a Gradio app in the layout of a Hugging Face Space)
EXTRAS["space"] = ["gradio>=6.0", *EXTRAS["medical"]]
EXTRAS["dev"] = [
    *EXTRAS["train"],
    *EXTRAS["medical"],
    *EXTRAS["export"],
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
    packages=["hf_medmamba", "hf_medmamba.tools"],
    package_data={"hf_medmamba": ["kernels/*.cpp", "templates/*.md", "data/*.json", "data/*.md"]},
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["hf-medmamba = hf_medmamba.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
