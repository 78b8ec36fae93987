"""The checks every hf_medmamba model passes, written once (in the manner of transformers' ``ModelTesterMixin``).

A test class per model (``TestMedMamba``, ``TestVMamba``, ``TestVMUNet``) mixes in `SSMModelTesterMixin` and says
which classes it tests, how to build a tiny config and inputs, and which hidden-state shapes to expect.
"""

import copy

import torch
from transformers import AutoConfig, AutoModel


class SSMModelTesterMixin:
    """Common model checks. Subclasses set the class attributes and implement `make_config`, `make_labels` and
    `expected_hidden_state_shapes`."""

    base_class = None  # e.g. MedMambaModel
    head_class = None  # e.g. MedMambaForImageClassification
    auto_head_class = None  # e.g. AutoModelForImageClassification
    input_size = (64, 96)  # not square: a swapped height and width shows

    def make_config(self, **overrides):
        raise NotImplementedError

    def make_labels(self, config, batch, generator):
        raise NotImplementedError

    def expected_hidden_state_shapes(self, config, batch, height, width):
        raise NotImplementedError

    # -- helpers ------------------------------------------------------------------------------------------------------

    def make_model(self, model_class=None, **overrides):
        torch.manual_seed(0)
        return (model_class or self.head_class)(self.make_config(**overrides)).eval()

    def make_inputs(self, config, batch=2, seed=0):
        generator = torch.Generator().manual_seed(seed)
        pixel_values = torch.randn(batch, config.num_channels, *self.input_size, generator=generator)
        return {"pixel_values": pixel_values, "labels": self.make_labels(config, batch, generator)}

    # -- the checks ---------------------------------------------------------------------------------------------------

    def test_save_load_round_trip_is_exact(self, tmp_path):
        model = self.make_model()
        model.save_pretrained(tmp_path)
        config = AutoConfig.from_pretrained(tmp_path)
        assert type(config) is type(model.config)
        settings = [{k: v for k, v in c.to_dict().items() if k != "_name_or_path"} for c in (config, model.config)]
        assert settings[0] == settings[1]
        loaded = self.auto_head_class.from_pretrained(tmp_path).eval()
        assert type(loaded) is self.head_class
        base = AutoModel.from_pretrained(tmp_path).eval()
        assert type(base) is self.base_class
        x = self.make_inputs(model.config)["pixel_values"]
        with torch.no_grad():
            assert torch.equal(loaded(x).logits, model(x).logits)
            inner = getattr(model, model.base_model_prefix)
            assert torch.equal(base(x).last_hidden_state, inner(x).last_hidden_state)

    def test_batched_equals_one_by_one(self):
        model = self.make_model()
        x = self.make_inputs(model.config, batch=3)["pixel_values"]
        with torch.no_grad():
            batched = model(x).logits
            single = torch.cat([model(x[i : i + 1]).logits for i in range(3)])
        torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)

    def test_hidden_state_shapes(self):
        model = self.make_model()
        height, width = self.input_size
        with torch.no_grad():
            out = model(self.make_inputs(model.config)["pixel_values"], output_hidden_states=True)
            quiet = model(self.make_inputs(model.config)["pixel_values"])
        shapes = [tuple(h.shape) for h in out.hidden_states]
        assert shapes == self.expected_hidden_state_shapes(model.config, 2, height, width)
        assert all(h.is_floating_point() and torch.isfinite(h).all() for h in out.hidden_states)
        assert quiet.hidden_states is None

    def test_return_dict_false_gives_the_same_tuple(self):
        model = self.make_model()
        inputs = self.make_inputs(model.config)
        with torch.no_grad():
            as_output = model(**inputs)
            as_tuple = model(**inputs, return_dict=False)
        assert isinstance(as_tuple, tuple)
        assert torch.equal(as_tuple[0], as_output.loss) and torch.equal(as_tuple[1], as_output.logits)

    def test_gradient_checkpointing_gives_the_same_gradients(self):
        model = self.make_model().train()
        checkpointed = copy.deepcopy(model)
        # transformers >= 5.2x calls it activation checkpointing; older 5.x releases only have the gradient_* names
        enable = (
            getattr(checkpointed, "activation_checkpointing_enable", None) or checkpointed.gradient_checkpointing_enable
        )
        enable()
        layers = [m for m in checkpointed.modules() if hasattr(m, "gradient_checkpointing")]
        assert layers and all(m.gradient_checkpointing for m in layers)
        inputs = self.make_inputs(model.config)
        for m in (model, checkpointed):
            m(**inputs).loss.backward()
        for (name, p), q in zip(model.named_parameters(), checkpointed.parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)

    def test_every_parameter_gets_a_gradient(self):
        model = self.make_model().train()
        model(**self.make_inputs(model.config)).loss.backward()
        missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, missing

    def test_bfloat16_weights_and_autocast(self, tmp_path):
        model = self.make_model()
        model.save_pretrained(tmp_path)
        x = self.make_inputs(model.config)["pixel_values"]
        with torch.no_grad():
            expected = model(x).logits
            bf16 = self.head_class.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
            assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
            out = bf16(x).logits  # float32 input, cast to the model's dtype at the entry
            with torch.autocast("cpu", dtype=torch.bfloat16):
                auto = model(x).logits
        assert out.dtype == torch.bfloat16
        for logits in (out, auto):
            assert torch.isfinite(logits).all()
            torch.testing.assert_close(logits.float(), expected, rtol=0.1, atol=0.1)

    def test_deterministic(self):
        first, second = self.make_model(), self.make_model()  # same seed, same weights
        for a, b in zip(first.state_dict().values(), second.state_dict().values()):
            assert torch.equal(a, b)
        x = self.make_inputs(first.config)["pixel_values"]
        with torch.no_grad():
            assert torch.equal(first(x).logits, first(x).logits)
            assert torch.equal(first(x).logits, second(x).logits)

    def test_scan_backend_has_one_home_and_the_context_restores_it(self):
        model = self.make_model()
        x = self.make_inputs(model.config)["pixel_values"]
        with torch.no_grad():
            expected = model(x).logits
            with model.scan_backend_context("reference"):
                assert model.config.scan_backend == "reference"
                reference = model(x).logits
            assert model.config.scan_backend == "auto"
            model.set_scan_backend("chunked")
            chunked = model(x).logits
        torch.testing.assert_close(reference, expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(chunked, expected, rtol=1e-4, atol=1e-5)
        try:
            with model.scan_backend_context("reference"):
                raise KeyError("inside")
        except KeyError:
            pass
        assert model.config.scan_backend == "chunked"
