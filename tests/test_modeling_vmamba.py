"""VMamba v0 (the encoder of VM-UNet and the ImageNet classifier it was pretrained as)."""

import torch
from transformers import AutoModelForImageClassification

from hf_medmamba import VMambaConfig, VMambaForImageClassification, VMambaModel, VMUNetConfig, VMUNetModel

from .model_tester import SSMModelTesterMixin


def tiny_config(**kwargs):
    return VMambaConfig(**{"depths": [1, 1, 1, 1], "dims": 16, "num_labels": 5, "drop_path_rate": 0.0, **kwargs})


def test_vmamba_s_preset_has_upstreams_parameter_count():
    with torch.device("meta"):
        model = VMambaForImageClassification(VMambaConfig.from_preset("vmamba-s"))
    assert sum(p.numel() for p in model.parameters()) == 44_417_416
    assert (model.config.depths, model.config.dims) == ([2, 2, 27, 2], [96, 192, 384, 768])


def test_classifier_outputs_and_loss():
    model = VMambaForImageClassification(tiny_config()).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64), labels=torch.tensor([1, 4]))
        pooled = model.vmamba(torch.randn(1, 3, 32, 32)).pooler_output
    assert out.logits.shape == (2, 5) and out.loss is not None
    assert pooled.shape == (1, 128)


def test_final_norm_is_applied_before_pooling():
    model = VMambaModel(tiny_config()).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
        expected = model.norm(out.hidden_states[-1].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(out.last_hidden_state, expected)
    torch.testing.assert_close(out.pooler_output, expected.mean(dim=(2, 3)))


def test_vmamba_encoder_is_vmunets():
    """The same VMamba weights give the same encoder features inside VMamba and inside VM-UNet."""
    vmamba = VMambaModel(tiny_config()).eval()
    vmunet = VMUNetModel(
        VMUNetConfig(
            depths=[1, 1, 1, 1],
            depths_decoder=[1, 1, 1, 1],
            dims=16,
            id2label={0: "background", 1: "lesion"},
            sigmoid_head=True,
        )
    ).eval()
    missing = vmunet.load_state_dict(vmamba.state_dict(), strict=False)
    assert missing.unexpected_keys == ["norm.weight", "norm.bias"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a = vmamba(x, output_hidden_states=True).hidden_states
        b = vmunet(x, output_hidden_states=True).encoder_hidden_states
    assert len(a) == len(b) == 5
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v)


def test_a_slice_of_the_encoder_runs_the_first_stages():
    model = VMambaModel(tiny_config()).eval()
    x = torch.randn(1, 3, 64, 64)
    first_two = model.layers[:2]
    assert isinstance(first_two, torch.nn.ModuleList) and list(first_two) == [model.layers[0], model.layers[1]]
    with torch.no_grad():
        hidden = model.patch_embed(x)
        for stage in first_two:
            hidden = stage(hidden)[1]
        expected = model(x, output_hidden_states=True).hidden_states[2]
    torch.testing.assert_close(hidden.permute(0, 3, 1, 2), expected)


class TestVMamba(SSMModelTesterMixin):
    base_class = VMambaModel
    head_class = VMambaForImageClassification
    auto_head_class = AutoModelForImageClassification

    def make_config(self, **overrides):
        return tiny_config(**overrides)

    def make_labels(self, config, batch, generator):
        return torch.randint(0, config.num_labels, (batch,), generator=generator)

    def expected_hidden_state_shapes(self, config, batch, height, width):
        """The patch embedding, then every stage after its merging (the last stage has none)."""
        dims, sizes = config.dims, [(height // 4 // 2**i, width // 4 // 2**i) for i in range(4)]
        return [(batch, dims[0], *sizes[0])] + [(batch, dims[min(i + 1, 3)], *sizes[min(i + 1, 3)]) for i in range(4)]
