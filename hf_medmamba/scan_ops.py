"""The package's custom-op scheme: scan kernels as ``torch.library`` operators in the ``hf_medmamba`` namespace.

A kernel that `torch.compile` cannot trace (a ctypes call, a Triton launch, mamba-ssm's CUDA extension, a Python
loop over a data-dependent length) becomes an operator with a fake (meta) implementation that gives the output shapes
and an autograd formula, so that compiled models see one node and no graph break.

Each operator is defined once per process. The installed package and a Hub folder's remote-code copy of these files
can both load in one process (and on torch 2.13 a second definition would silently replace the first): `custom_op`
reuses an operator that exists with the same schema and raises a clear error when the schema differs.
"""

import contextlib

import torch


NAMESPACE = "hf_medmamba"


def existing_op(name):
    """``torch.ops.hf_medmamba.<name>.default``, or None when no such operator is defined in this process."""
    namespace = getattr(torch.ops, NAMESPACE)
    return getattr(namespace, name).default if hasattr(namespace, name) else None


def custom_op(name, schema, fake, autograd=None):
    """Decorator: ``hf_medmamba::name`` with the operator ``schema`` (e.g. ``"(Tensor u, int n) -> Tensor"``), the
    decorated function as its implementation, its fake implementation and, optionally, its autograd formula
    ``(backward, setup_context)``. Returns the operator's default overload.

    When the operator already exists (another copy of hf_medmamba defined it), it is reused if its schema is the one
    this function would get, and refused with an error that says so otherwise.
    """
    qualname = f"{NAMESPACE}::{name}"

    def define(fn):
        wanted = str(torch._C.parse_schema(qualname + schema))
        existing = existing_op(name)
        if existing is not None:
            if str(existing._schema) != wanted:
                raise RuntimeError(
                    f"The operator {qualname} is already defined as\n  {existing._schema}\nbut this copy of "
                    f"hf_medmamba ({fn.__module__}) needs\n  {wanted}\nTwo different versions of hf_medmamba are "
                    "loaded in one process (the installed package and a model's remote code?). Install the version "
                    "the model was saved with, or re-save the model with the installed one."
                )
            return existing
        op = torch.library.custom_op(qualname, fn, mutates_args=(), schema=schema)
        op.register_fake(fake)
        if autograd is not None:
            op.register_autograd(autograd[0], setup_context=autograd[1])
        return existing_op(name)

    return define


@contextlib.contextmanager
def autograd_inside_op():
    """Autograd inside an operator's implementation, which the dispatcher runs below autograd: for a backward that
    runs a kernel's own autograd function again (mamba-ssm keeps its intermediate states inside it)."""
    keys = torch._C.DispatchKey
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in (keys.AutogradOther, keys.AutogradNestedTensor, keys.AutogradCPU, keys.AutogradCUDA):
        exclude = exclude.remove(key)
    include = torch._C._dispatch_tls_local_include_set()
    with torch._C._ForceDispatchKeyGuard(include, exclude), torch.enable_grad():
        yield
