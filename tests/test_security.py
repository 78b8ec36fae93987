"""No network access at import or inference time."""

import socket

import numpy as np
import pytest


@pytest.fixture
def no_network(monkeypatch):
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"network access attempted to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse(None, address))
    return attempts


def test_inference_from_a_local_folder_needs_no_network(tmp_path, no_network):
    from transformers import pipeline

    from hf_medmamba import (
        MedMambaConfig,
        MedMambaForImageClassification,
        MedMambaImageProcessor,
        VMUNetConfig,
        VMUNetForSegmentation,
        VMUNetImageProcessor,
    )

    tiny = {"depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128]}
    MedMambaForImageClassification(MedMambaConfig(**tiny, num_labels=2)).save_pretrained(tmp_path / "cls")
    MedMambaImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "cls")
    VMUNetForSegmentation(VMUNetConfig(**tiny, depths_decoder=[1, 1, 1, 1], sigmoid_head=True)).save_pretrained(
        tmp_path / "seg"
    )
    VMUNetImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "seg")
    image = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    from PIL import Image

    for task, folder in (("image-classification", "cls"), ("image-segmentation", "seg")):
        result = pipeline(task, model=str(tmp_path / folder), trust_remote_code=False)(Image.fromarray(image))
        assert result
    assert no_network == []
