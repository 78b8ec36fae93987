"""Smoke demo of the selective scan: every backend on MedMamba-T's first-stage call, checked and timed.

Run:  python examples/scan_demo.py
"""

import time

import torch

from hf_medmamba.selective_scan import SCAN_BACKENDS, resolve_scan_backend, selective_scan


def main():
    torch.manual_seed(0)
    b, d, L, n, g = 1, 384, 3136, 16, 4  # MedMamba-T at 224 px, stage 1: 4 directions x 96 channels, 56 x 56 pixels
    inputs = {
        "u": torch.randn(b, d, L),
        "delta": torch.randn(b, d, L) * 0.5 - 3,
        "A": -torch.arange(1, n + 1.0).expand(d, -1),
        "B": torch.randn(b, g, n, L),
        "C": torch.randn(b, g, n, L),
        "D": torch.ones(d),
        "delta_bias": torch.zeros(d),
    }
    print(
        f"selective scan, u of shape {(b, d, L)}, state size {n}; 'auto' picks {resolve_scan_backend('auto', 'cpu')!r}"
    )
    expected = None
    for backend in [name for name in SCAN_BACKENDS if name not in ("auto", "mamba_ssm")]:
        try:
            resolve_scan_backend(backend, "cpu")
        except RuntimeError as err:
            print(f"  {backend:>10}: not available ({err})")
            continue
        with torch.no_grad():
            y = selective_scan(**inputs, delta_softplus=True, backend=backend)
            start = time.perf_counter()
            selective_scan(**inputs, delta_softplus=True, backend=backend)
            ms = (time.perf_counter() - start) * 1e3
        expected = y if expected is None else expected
        print(f"  {backend:>10}: {ms:7.1f} ms   max |y - reference| = {(y - expected).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
