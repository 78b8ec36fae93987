"""GPU benchmark: the scan backends at SS2D's real call shapes, and training throughput against transformers' peers.

Run:  python benchmarks/bench_gpu.py [--quick] [--repeats 10] [--no-write] [--dry-run]

Scan: SS2D's four-direction scan (n = 16, fp32, inputs distributed as at initialisation) at the four stage shapes of
MedMamba-T (224 px) and VM-UNet (256 px), batch 1, 8 and 32: forward, and forward + backward with gradients for every
input, per backend present (chunked always; triton when Triton and a GPU driver are there; mamba_ssm when it imports),
with the peak extra GPU memory of a forward + backward. Models: training steps per second (bf16 autocast, AdamW, random
init) of MedMamba-T and VM-UNet per backend, and of ConvNeXt-T and SegFormer-B2 (transformers) as peers. Ratios are
against the chunked backend or the peer measured in the same run. ``--quick`` (batches 1 and 8, fewer repetitions)
takes a few minutes; ``--dry-run`` prints the plan and needs no GPU. Writes its section of benchmarks/RESULTS.md.
"""

import math
import platform
import statistics
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import transformers


sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import parse_bench_args, write_section

from hf_medmamba import (
    MedMambaConfig,
    MedMambaForImageClassification,
    VMUNetConfig,
    VMUNetForSegmentation,
    scan_kernels,
)
from hf_medmamba import scan_triton as st
from hf_medmamba import selective_scan as ss


N_STATE = 16
# label -> (E channels per direction, H = W)
SCAN_SHAPES = {
    "MedMamba-T 224, stage 1": (96, 56),
    "MedMamba-T 224, stage 2": (192, 28),
    "MedMamba-T 224, stage 3": (384, 14),
    "MedMamba-T 224, stage 4": (768, 7),
    "VM-UNet 256, stage 1": (192, 64),
    "VM-UNet 256, stage 2": (384, 32),
    "VM-UNet 256, stage 3": (768, 16),
    "VM-UNet 256, stage 4": (1536, 8),
}
# label -> (model name, image size, batch, quick batch, uses the scan)
MODELS = {
    "MedMamba-T": ("medmamba-t", 224, 32, 8, True),
    "ConvNeXt-T": ("convnext-t", 224, 32, 8, False),
    "VM-UNet": ("vmunet", 256, 16, 8, True),
    "SegFormer-B2": ("segformer-b2", 256, 16, 8, False),
}
PEERS = {"MedMamba-T": "ConvNeXt-T", "VM-UNet": "SegFormer-B2"}


def backend_status():
    """Every candidate backend with whether it can run here."""
    cuda = torch.cuda.is_available()
    checks = {
        "chunked": (True, ""),
        "triton": (st.triton_available(), "Triton does not import or finds no GPU driver"),
        "mamba_ssm": (scan_kernels.mamba_ssm_kernel() is not None, "mamba_ssm does not import"),
    }
    return {
        name: (cuda and ok, "present" if cuda and ok else why or "no CUDA GPU") for name, (ok, why) in checks.items()
    }


def cross_scan(backend, height, width):
    """`cross_selective_scan` on ``backend``."""
    return lambda *args, **kwargs: ss.cross_selective_scan(*args, **{**kwargs, "backend": backend})


def scan_inputs(batch, E, side, requires_grad):
    L, K = side * side, 4
    dt = torch.exp(torch.rand(K * E, device="cuda") * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    inputs = {
        "u": torch.randn(batch, E, L, device="cuda"),
        "delta": 0.1 * torch.randn(batch, K * E, L, device="cuda"),
        "A": -torch.arange(1, N_STATE + 1.0, device="cuda").expand(K * E, -1).contiguous(),
        "B": torch.randn(batch, K, N_STATE, L, device="cuda"),
        "C": torch.randn(batch, K, N_STATE, L, device="cuda"),
        "D": torch.ones(K * E, device="cuda"),
        "delta_bias": dt + torch.log(-torch.expm1(-dt)),
    }
    return {k: v.requires_grad_(requires_grad) for k, v in inputs.items()}


def gpu_time(fn, repeats):
    """Median seconds of fn() between CUDA events, after a warm-up call (which also compiles Triton kernels)."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def peak_extra_mb(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def bench_scans(backends, batches, repeats):
    rows = []
    for label, (E, side) in SCAN_SHAPES.items():
        for batch in batches:
            row = {"label": label, "batch": batch, "E": E, "side": side}
            for backend in backends:
                scan = cross_scan(backend, side, side)
                inputs = scan_inputs(batch, E, side, requires_grad=True)
                weight = torch.randn(batch, E, side * side, device="cuda")

                def forward(scan=scan, inputs=inputs, side=side):
                    with torch.no_grad():
                        scan(**inputs, height=side, width=side)

                def train(scan=scan, inputs=inputs, weight=weight, side=side):
                    (scan(**inputs, height=side, width=side) * weight).sum().backward()
                    for t in inputs.values():
                        t.grad = None

                row[backend] = (gpu_time(forward, repeats), gpu_time(train, repeats), peak_extra_mb(train))
                del inputs, weight
            rows.append(row)
            print(label, f"batch {batch}", {b: f"{row[b][0] * 1e3:.2f} / {row[b][1] * 1e3:.2f} ms" for b in backends})
    return rows


def build(name):
    torch.manual_seed(0)
    if name == "medmamba-t":
        return MedMambaForImageClassification(MedMambaConfig.from_preset("medmamba-t", num_labels=3))
    if name == "vmunet":
        return VMUNetForSegmentation(VMUNetConfig.from_preset("vmunet-paper"))
    if name == "convnext-t":
        return transformers.ConvNextForImageClassification(transformers.ConvNextConfig(num_labels=3))
    config = transformers.SegformerConfig(
        depths=[3, 4, 6, 3], hidden_sizes=[64, 128, 320, 512], decoder_hidden_size=768, num_labels=2
    )
    return transformers.SegformerForSemanticSegmentation(config)


@contextmanager
def model_scan_backend(model, backend):
    """Run the model's SS2D scans on ``backend``."""
    with model.scan_backend_context(backend):
        yield


def train_step_call(model, size, batch):
    model.cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    pixels = torch.randn(batch, 3, size, size, device="cuda")
    segmentation = isinstance(model, (VMUNetForSegmentation, transformers.SegformerForSemanticSegmentation))
    labels = torch.randint(
        0, 2 if segmentation else 3, (batch, size, size) if segmentation else (batch,), device="cuda"
    )

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(pixel_values=pixels, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def bench_models(backends, quick, repeats):
    results = {}
    for label, (name, size, batch, quick_batch, uses_scan) in MODELS.items():
        batch = quick_batch if quick else batch
        for backend in backends if uses_scan else [None]:
            model = build(name)
            with model_scan_backend(model, backend) if backend else nullcontext():
                seconds = gpu_time(train_step_call(model, size, batch), repeats)
            results[label, backend] = (batch, batch / seconds)
            print(f"{label} ({backend or 'no scan'}) batch {batch}: {batch / seconds:.1f} images/s", flush=True)
            del model
            torch.cuda.empty_cache()
    return results


def plan(args, status, batches):
    lines = ["Plan:", "backends: " + ", ".join(f"{name} ({why})" for name, (_, why) in status.items())]
    lines.append("scan (SS2D four-direction scan, n = 16, fp32): forward and forward + backward, per backend:")
    for label, (E, side) in SCAN_SHAPES.items():
        lines.append(f"  {label}: E = {E}, {side} x {side}, " + ", ".join(f"batch {b}" for b in batches))
    lines.append("training throughput (bf16 autocast, AdamW step, images/s):")
    for label, (_, size, batch, quick_batch, uses_scan) in MODELS.items():
        per = "per backend" if uses_scan else "peer"
        lines.append(f"  {label} {size} px, batch {quick_batch if args.quick else batch}, {per}")
    lines.append(f"repeats: {args.repeats}; writes benchmarks/RESULTS.md: {not args.no_write}")
    return "\n".join(lines)


def scan_table(rows, backends):
    header = ["shape", "batch"] + [f"{b} fwd / fwd+bwd ms" for b in backends]
    header += [f"{b} fwd+bwd peak MB" for b in backends]
    header += [f"{b} fwd+bwd speed-up" for b in backends if b != "chunked"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["label"], str(row["batch"])] + [f"{row[b][0] * 1e3:.2f} / {row[b][1] * 1e3:.2f}" for b in backends]
        cells += [f"{row[b][2]:.0f}" for b in backends]
        cells += [f"{row['chunked'][1] / row[b][1]:.1f}x" for b in backends if b != "chunked"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    args = parse_bench_args(__doc__, repeats=10, extra=("--quick", "--dry-run"))
    if args.quick:
        args.repeats = min(args.repeats, 5)
    batches = [1, 8] if args.quick else [1, 8, 32]
    status = backend_status()
    print(plan(args, status, batches), flush=True)
    if args.dry_run:
        return
    if not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA GPU (use --dry-run to print the plan without one).")
    backends = [name for name, (ok, _) in status.items() if ok]
    rows = bench_scans(backends, batches, args.repeats)
    models = bench_models(backends, args.quick, max(3, args.repeats // 2))

    speedups = [row["chunked"][1] / row["triton"][1] for row in rows] if "triton" in backends else []
    verdict = "triton not present: no verdict"
    if speedups:
        geomean = math.exp(statistics.fmean(math.log(s) for s in speedups))
        met = "met" if min(speedups) >= 10 else "NOT met"
        verdict = f"min {min(speedups):.1f}x, geometric mean {geomean:.1f}x over the rows: {met}"
    model_lines = ["| model | backend | batch | images/s | vs peer |", "|---|---|---|---|---|"]
    for (label, backend), (batch, speed) in models.items():
        peer = PEERS.get(label)
        ratio = f"{speed / models[peer, None][1]:.2f}x {peer}" if peer else ""
        model_lines.append(f"| {label} | {backend or '-'} | {batch} | {speed:.1f} | {ratio} |")
    command = "python benchmarks/bench_gpu.py" + (" --quick" if args.quick else "") + f" --repeats {args.repeats}"
    versions = f"torch {torch.__version__}, Triton {getattr(st.triton, '__version__', 'absent')}"
    body = f"""
Command: `{command}`

Device: {torch.cuda.get_device_name()}, {versions}, Python {platform.python_version()}. Median of {args.repeats} timed
calls between CUDA events after a warm-up call; peak extra memory from `torch.cuda.max_memory_allocated`.

SS2D's four-direction scan (n = 16, fp32, gradients for u, delta, A, B, C, D and delta_bias):

{scan_table(rows, backends)}

Target, triton forward + backward >= 10x chunked: {verdict}.

Training throughput (bf16 autocast, AdamW, random init):

{chr(10).join(model_lines)}
"""
    print(body)
    if not args.no_write:
        write_section("GPU: scan backends and training throughput (benchmarks/bench_gpu.py)", body)


if __name__ == "__main__":
    main()
