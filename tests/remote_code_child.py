"""Run in a fresh process by test_remote_code.py: load saved folders as remote code, with hf_medmamba unimportable.

Argument: a JSON file with a list of cases {folder, auto_classes, task, input, expected, image} and optionally
backbone {repo_id, out_features, expected}: load that Hub id (HF_ENDPOINT) as AutoBackbone. Prints one JSON line.
"""

import importlib.abc
import json
import sys


class BlockHfMedmamba(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "hf_medmamba" or name.startswith("hf_medmamba."):
            raise ImportError(f"{name} is blocked: this process must load the models as remote code")
        return None


sys.meta_path.insert(0, BlockHfMedmamba())

import PIL.Image  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import pipeline  # noqa: E402
from transformers.models.auto.image_processing_auto import AutoImageProcessor  # noqa: E402


def check(case):
    report = {"folder": case["folder"], "classes": {}}
    inputs = torch.load(case["input"], weights_only=True)
    expected = torch.load(case["expected"], weights_only=True)
    for auto_name in case["auto_classes"]:
        model = getattr(transformers, auto_name).from_pretrained(case["folder"], trust_remote_code=True).eval()
        report["classes"][auto_name] = type(model).__module__
        if auto_name == case["head_class"]:
            with torch.no_grad():
                out = model(inputs)
            report["max_abs_diff"] = (out.logits - expected).abs().max().item()
            report["scan_backend"] = model.config.scan_backend
    if "backbone" in case:
        check_backbone(case["backbone"], inputs, report)
    processor = AutoImageProcessor.from_pretrained(case["folder"], trust_remote_code=True)
    report["classes"]["AutoImageProcessor"] = type(processor).__module__
    pipe = pipeline(case["task"], model=case["folder"], trust_remote_code=True)
    with PIL.Image.open(case["image"]) as image:
        result = pipe(image.copy())
    report["pipeline"] = [
        {k: (v if not hasattr(v, "size") else list(v.size)) for k, v in r.items() if k != "mask"}
        | ({"mask_size": list(r["mask"].size)} if "mask" in r else {})
        for r in result
    ]
    report["hf_medmamba_imported"] = any(m == "hf_medmamba" or m.startswith("hf_medmamba.") for m in sys.modules)
    return report


def check_backbone(spec, inputs, report):
    backbone = transformers.AutoBackbone.from_pretrained(
        spec["repo_id"], trust_remote_code=True, out_features=spec["out_features"]
    ).eval()
    report["classes"]["AutoBackbone"] = type(backbone).__module__
    with torch.no_grad():
        maps = backbone(inputs).feature_maps
    expected = torch.load(spec["expected"], weights_only=True)
    report["backbone_channels"] = backbone.channels
    report["backbone_shapes"] = [list(m.shape) for m in maps]
    report["backbone_max_abs_diff"] = max((m - e).abs().max().item() for m, e in zip(maps, expected, strict=True))


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    print(json.dumps([check(case) for case in cases]))
