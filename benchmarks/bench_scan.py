"""Selective-scan benchmark: every backend at the real call shapes of MedMamba-T (224 px) and VM-UNet (256 px).

Run:  python benchmarks/bench_scan.py [--threads 2] [--repeats 5] [--no-write]

Times the forward of each backend in one process, round-robin, as medians; forward + backward at (1, 384, 3136)
against autograd through the reference (written with ``unbind`` over time); and the peak extra memory of one forward
call in a fresh process. Writes the table to benchmarks/RESULTS.md.
"""

import math
import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import machine, median_time, parse_bench_args, peak_extra_memory_mb, write_section

from hf_medmamba import scan_kernels
from hf_medmamba import selective_scan as ss


SHAPES = [
    ("MedMamba-T 224, stage 1", (1, 384, 3136)),
    ("MedMamba-T 224, stage 2", (1, 768, 784)),
    ("MedMamba-T 224, stage 3", (1, 1536, 196)),
    ("MedMamba-T 224, stage 4", (1, 3072, 49)),
    ("VM-UNet 256, stage 1", (1, 768, 4096)),
    ("VM-UNet 256, stage 2", (1, 1536, 1024)),
    ("VM-UNet 256, stage 3", (1, 3072, 256)),
    ("VM-UNet 256, stage 4", (1, 6144, 64)),
    ("MedMamba-T 224, stage 1, batch 8", (8, 384, 3136)),
]
N_STATE, GROUPS = 16, 4


def scan_inputs(b, d, L, requires_grad=False):
    """Inputs distributed like SS2D's at initialisation: S4D-real A, dt between 1e-3 and 1e-1 after softplus."""
    gen = torch.Generator().manual_seed(0)
    dt = torch.exp(torch.rand(d, generator=gen) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    inputs = {
        "u": torch.randn(b, d, L, generator=gen),
        "delta": 0.1 * torch.randn(b, d, L, generator=gen),
        "A": -torch.arange(1, N_STATE + 1.0).expand(d, -1).contiguous(),
        "B": torch.randn(b, GROUPS, N_STATE, L, generator=gen),
        "C": torch.randn(b, GROUPS, N_STATE, L, generator=gen),
        "D": torch.ones(d),
        "delta_bias": dt + torch.log(-torch.expm1(-dt)),
    }
    return {k: v.requires_grad_(requires_grad) for k, v in inputs.items()}


def forward_call(backend, b, d, L):
    inputs = scan_inputs(b, d, L)

    def run():
        with torch.no_grad():
            ss.selective_scan(**inputs, delta_softplus=True, backend=backend)

    return run


def train_call(backend, b, d, L):
    inputs = scan_inputs(b, d, L, requires_grad=True)
    weight = torch.randn(b, d, L)

    def run():
        y = ss.selective_scan(**inputs, delta_softplus=True, backend=backend)
        (y * weight).sum().backward()

    return run


def available_backends():
    backends = ["reference", "chunked"]
    if scan_kernels.cpu_kernel() is not None:
        backends.append("cpu_kernel")
    return backends


def main():
    args = parse_bench_args(__doc__, repeats=5)
    backends = available_backends()
    fast = [b for b in backends if b != "reference"]

    rows = []
    for label, shape in SHAPES:
        calls = {backend: forward_call(backend, *shape) for backend in backends}
        repeats = args.repeats if shape[0] == 1 else max(2, args.repeats // 2)
        times = {backend: [] for backend in backends}
        for backend in backends:  # warm-up
            calls[backend]()
        for _ in range(repeats):  # round-robin, so that drift in machine speed hits every backend alike
            for backend in backends:
                times[backend].append(median_time(calls[backend], repeats=1, warmup=0))
        med = {backend: sorted(t)[len(t) // 2] for backend, t in times.items()}
        memory = {backend: peak_extra_memory_mb("bench_scan", "forward_call", (backend, *shape)) for backend in fast}
        rows.append((label, shape, med, memory))
        print(label, shape, {k: f"{v * 1e3:.1f} ms" for k, v in med.items()}, flush=True)

    train = {}
    for backend in backends:
        train[backend] = median_time(train_call(backend, 1, 384, 3136), repeats=3)
        print("forward+backward", backend, f"{train[backend] * 1e3:.1f} ms", flush=True)
    fwd = rows[0][2]

    header = "| call | shape (b, d, L) | " + " | ".join(f"{b} fwd (ms)" for b in backends)
    header += " | " + " | ".join(f"{b} speed-up" for b in fast) + " | " + " | ".join(f"{b} peak extra MB" for b in fast)
    lines = [header + " |", "|" + "---|" * (2 + len(backends) + 2 * len(fast))]
    for label, shape, med, memory in rows:
        cells = [label, str(shape)] + [f"{med[b] * 1e3:.1f}" for b in backends]
        cells += [f"{med['reference'] / med[b]:.1f}x" for b in fast] + [f"{memory[b]:.1f}" for b in fast]
        lines.append("| " + " | ".join(cells) + " |")

    train_lines = [
        "| backend | forward (ms) | forward + backward (ms) | backward / own forward | vs reference autograd |",
        "|---|---|---|---|---|",
    ]
    for backend in backends:
        backward = train[backend] - fwd[backend]
        train_lines.append(
            f"| {backend} | {fwd[backend] * 1e3:.1f} | {train[backend] * 1e3:.1f} | {backward / fwd[backend]:.2f} | "
            f"{train['reference'] / train[backend]:.1f}x |"
        )

    stage1 = rows[0]
    verdicts = ["| target at (1, 384, 3136) | backend | measured | verdict |", "|---|---|---|---|"]

    def verdict(name, backend, value, limit, higher_is_better, unit):
        ok = value >= limit if higher_is_better else value <= limit
        verdicts.append(f"| {name} | {backend} | {value:.1f}{unit} | {'met' if ok else 'NOT met'} |")

    for backend in fast:
        verdict("forward >= 10x the reference", backend, stage1[2]["reference"] / stage1[2][backend], 10, True, "x")
        verdict(
            "forward + backward >= 10x reference autograd", backend, train["reference"] / train[backend], 10, True, "x"
        )
        verdict("backward <= 3x own forward", backend, (train[backend] - fwd[backend]) / fwd[backend], 3, False, "x")
        verdict("peak extra memory of a forward <= 40 MB", backend, stage1[3][backend], 40, False, " MB")
    if "cpu_kernel" in fast:
        verdict(
            "forward >= 40x the reference (issue 9)",
            "cpu_kernel",
            stage1[2]["reference"] / stage1[2]["cpu_kernel"],
            40,
            True,
            "x",
        )

    body = f"""
Command: `python benchmarks/bench_scan.py --threads {args.threads} --repeats {args.repeats}`

Machine: {machine()}. fp32, n = {N_STATE}, {GROUPS} groups of B/C (SS2D's four directions), inputs distributed as at
initialisation. Forward times are medians of {args.repeats} round-robin repetitions in one process; the peak extra
memory of one forward call is measured in a fresh process (RSS high-water mark above the resting level).

{chr(10).join(lines)}

Forward + backward at (1, 384, 3136), gradients for u, delta, A, B, C, D and delta_bias; the reference column is
autograd through the sequential recurrence written with `unbind` over time:

{chr(10).join(train_lines)}

Targets:

{chr(10).join(verdicts)}
"""
    print(body)
    if not args.no_write:
        write_section("Selective scan (benchmarks/bench_scan.py)", body)


if __name__ == "__main__":
    main()
