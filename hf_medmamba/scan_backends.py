"""Names of the selective-scan backends and the settings that steer ``"auto"``: plain constants, no torch import, so
that reading a ``config.json`` never imports the scan (see `selective_scan.resolve_scan_backend` for the rule)."""

SCAN_BACKENDS = ("auto", "reference", "chunked", "cpu_kernel", "mamba_ssm", "triton", "export")

SCAN_BACKEND_ENV = "HF_MEDMAMBA_SCAN_BACKEND"
"""Environment variable: the backend that ``"auto"`` stands for (unset or ``"auto"``: choose by device)."""

DISABLE_CPU_KERNEL_ENV = "HF_MEDMAMBA_DISABLE_CPU_KERNEL"
"""Environment variable: ``1`` keeps ``"auto"`` off the compiled CPU kernel."""

KERNEL_INTERFACE = 5
"""Version of the contract between the dispatch and the installed CPU-kernel loader (`hf_medmamba.kernels.cpu_scan`).
A Hub folder's remote-code copy of this file uses the installed kernel only when both carry the same number."""
