"""Model benchmark: MedMamba-T and VM-UNet against transformers' peers, in one process and one run.

Run:  python benchmarks/bench_models.py [--threads 2] [--repeats 5] [--no-write] [--skip-scaling]

All models use random initialisation and fp32. Every case is timed round-robin (one call of each case per round, so
that drift in machine speed hits every model alike) and reported as the median over the rounds; ratios are against
peers measured in the same run. The peak memory of one call is measured in a fresh process per case. The scaling
section times both models at several input sizes and draws a PNG; the profile section lists where the time goes.
"""

import sys
from pathlib import Path

import torch
import transformers


sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import RESULTS, machine, median_time, parse_bench_args, peak_extra_memory_mb, write_section

from hf_medmamba import (
    MedMambaConfig,
    MedMambaForImageClassification,
    VMUNetConfig,
    VMUNetForSegmentation,
)


def build(name, scan_backend="auto"):
    """A model by short name, random init, eval mode."""
    torch.manual_seed(0)
    if name == "medmamba-t":
        return MedMambaForImageClassification(
            MedMambaConfig.from_preset("medmamba-t", num_labels=3, scan_backend=scan_backend)
        )
    if name == "vmunet":
        return VMUNetForSegmentation(VMUNetConfig.from_preset("vmunet-paper", scan_backend=scan_backend))
    if name == "convnext-t":
        return transformers.ConvNextForImageClassification(transformers.ConvNextConfig(num_labels=3))
    if name == "swin-t":
        return transformers.SwinForImageClassification(transformers.SwinConfig(num_labels=3))
    if name == "segformer-b2":
        config = transformers.SegformerConfig(
            depths=[3, 4, 6, 3], hidden_sizes=[64, 128, 320, 512], decoder_hidden_size=768, num_labels=2
        )
        return transformers.SegformerForSemanticSegmentation(config)
    if name == "segformer-b0":
        return transformers.SegformerForSemanticSegmentation(transformers.SegformerConfig(num_labels=2))
    raise ValueError(name)


# name -> (model, image size, batch, mode, scan backend)
CASES = {
    "MedMamba-T b1": ("medmamba-t", 224, 1, "forward", "auto"),
    "ConvNeXt-T b1": ("convnext-t", 224, 1, "forward", "auto"),
    "Swin-T b1": ("swin-t", 224, 1, "forward", "auto"),
    "MedMamba-T b8": ("medmamba-t", 224, 8, "forward", "auto"),
    "ConvNeXt-T b8": ("convnext-t", 224, 8, "forward", "auto"),
    "Swin-T b8": ("swin-t", 224, 8, "forward", "auto"),
    "MedMamba-T train b8": ("medmamba-t", 224, 8, "train", "auto"),
    "ConvNeXt-T train b8": ("convnext-t", 224, 8, "train", "auto"),
    "VM-UNet b1": ("vmunet", 256, 1, "forward", "auto"),
    "SegFormer-B2 b1": ("segformer-b2", 256, 1, "forward", "auto"),
    "SegFormer-B0 b1": ("segformer-b0", 256, 1, "forward", "auto"),
    "VM-UNet train b4": ("vmunet", 256, 4, "train", "auto"),
    "SegFormer-B2 train b4": ("segformer-b2", 256, 4, "train", "auto"),
    "MedMamba-T b1, pure PyTorch scan": ("medmamba-t", 224, 1, "forward", "chunked"),
    "VM-UNet b1, pure PyTorch scan": ("vmunet", 256, 1, "forward", "chunked"),
}


def model_and_inputs(model_name, size, batch, mode, scan_backend="auto"):
    """The model, in eval mode for ``mode == "forward"`` and in train mode with random labels among its inputs else."""
    model = build(model_name, scan_backend)
    inputs = {"pixel_values": torch.randn(batch, 3, size, size)}
    if mode == "forward":
        return model.eval(), inputs
    if isinstance(model, (VMUNetForSegmentation, transformers.SegformerForSemanticSegmentation)):
        inputs["labels"] = torch.randint(0, 2, (batch, size, size))
    else:
        inputs["labels"] = torch.randint(0, 3, (batch,))
    return model.train(), inputs


def make_call(model_name, size, batch, mode, scan_backend="auto"):
    """A closure running one forward (no grad) or one training step (forward, backward, AdamW step)."""
    model, inputs = model_and_inputs(model_name, size, batch, mode, scan_backend)
    if mode == "forward":

        def run():
            with torch.no_grad():
                model(**inputs)

        return run
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def run():
        loss = model(**inputs).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return run


def time_round_robin(calls, repeats):
    for call in calls.values():  # warm-up
        call()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            times[name].append(median_time(call, repeats=1, warmup=0))
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def ratio_table(med, memory):
    rows = [
        ("MedMamba-T b1", "ConvNeXt-T b1", "<= 1.5x"),
        ("MedMamba-T b1", "Swin-T b1", ""),
        ("MedMamba-T b8", "ConvNeXt-T b8", "<= 2x"),
        ("MedMamba-T train b8", "ConvNeXt-T train b8", "<= 3x"),
        ("VM-UNet b1", "SegFormer-B2 b1", "<= 1.6x"),
        ("VM-UNet b1", "SegFormer-B0 b1", ""),
        ("VM-UNet train b4", "SegFormer-B2 train b4", ""),
        ("MedMamba-T b1, pure PyTorch scan", "ConvNeXt-T b1", "<= 2.5x (stretch)"),
        ("VM-UNet b1, pure PyTorch scan", "SegFormer-B2 b1", "<= 3.5x (stretch)"),
    ]
    lines = ["| case | ms | peak extra MB | peer | peer ms | ratio | target |", "|---|---|---|---|---|---|---|"]
    for case, peer, target in rows:
        ratio = med[case] / med[peer]
        verdict = ""
        if target:
            limit = float(target.split("x")[0].replace("<=", "").strip())
            verdict = f"{target}: {'met' if ratio <= limit else 'NOT met'}"
        lines.append(
            f"| {case} | {med[case] * 1e3:.0f} | {memory[case]:.0f} | {peer} | {med[peer] * 1e3:.0f} | "
            f"{ratio:.2f}x | {verdict} |"
        )
    return "\n".join(lines)


def all_cases_table(med, memory):
    lines = ["| case | median ms | peak extra MB |", "|---|---|---|"]
    for name in CASES:
        lines.append(f"| {name} | {med[name] * 1e3:.1f} | {memory[name]:.0f} |")
    return "\n".join(lines)


SCALING = {"MedMamba-T": ("medmamba-t", [128, 224, 384, 512]), "VM-UNet": ("vmunet", [128, 256, 384, 512])}


def scaling(repeats):
    rows = []
    for label, (name, sizes) in SCALING.items():
        for size in sizes:
            seconds = median_time(make_call(name, size, 1, "forward"), repeats=repeats)
            memory = peak_extra_memory_mb("bench_models", "make_call", (name, size, 1, "forward"))
            rows.append((label, size, seconds, memory))
            print(f"scaling {label} {size}px: {seconds * 1e3:.0f} ms, {memory:.0f} MB", flush=True)
    return rows


def plot_scaling(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(10, 4))
    for label in SCALING:
        pixels = [size * size for lab, size, _, _ in rows if lab == label]
        ax_time.plot(pixels, [s * 1e3 for lab, _, s, _ in rows if lab == label], "o-", label=label)
        ax_mem.plot(pixels, [m for lab, _, _, m in rows if lab == label], "o-", label=label)
    for ax, ylabel in ((ax_time, "forward latency, batch 1 (ms)"), (ax_mem, "peak extra memory (MB)")):
        ax.set_xlabel("pixels (H x W)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle("Cost against image size (fp32, CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def profile_table(name, size, top=12):
    call = make_call(name, size, 1, "forward")
    call()
    with torch.profiler.profile() as prof:
        for _ in range(3):
            call()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    lines = ["| op | share of self CPU time | calls per forward |", "|---|---|---|"]
    for event in events[:top]:
        lines.append(f"| `{event.key}` | {100 * event.self_cpu_time_total / total:.1f} % | {event.count // 3} |")
    return "\n".join(lines)


def main():
    args = parse_bench_args(__doc__, repeats=5, extra=("--skip-scaling",))

    calls = {name: make_call(*spec[:4], spec[4]) for name, spec in CASES.items()}
    med = time_round_robin(calls, args.repeats)
    del calls
    memory = {}
    for name, spec in CASES.items():
        memory[name] = peak_extra_memory_mb("bench_models", "make_call", spec, threads=args.threads)
        print(f"{name}: {med[name] * 1e3:.1f} ms, {memory[name]:.0f} MB", flush=True)

    command = f"python benchmarks/bench_models.py --threads {args.threads} --repeats {args.repeats}"
    body = f"""
Command: `{command}`

Machine: {machine()}; transformers {transformers.__version__}. Random initialisation, fp32, inputs of 3 x 224 x 224
(classifiers) and 3 x 256 x 256 (segmenters). Medians of {args.repeats} round-robin rounds in one process; a train step
is forward + backward + AdamW. Peak extra memory: RSS high-water mark of one call above the resting level, in a fresh
process. MedMamba-T and VM-UNet use the default scan backend (`auto`: the compiled CPU kernel here) unless marked
"pure PyTorch scan" (`scan_backend="chunked"`, what a Hub folder loaded with `trust_remote_code` runs without the
package installed).

{ratio_table(med, memory)}

All cases:

{all_cases_table(med, memory)}

Where the time goes, MedMamba-T at 224 px, batch 1 (share of self CPU time, torch profiler):

{profile_table("medmamba-t", 224)}

VM-UNet at 256 px, batch 1:

{profile_table("vmunet", 256)}
"""
    print(body)
    if not args.no_write:
        write_section("Models against transformers' peers (benchmarks/bench_models.py)", body)

    if not args.skip_scaling:
        rows = scaling(max(2, args.repeats // 2))
        png = RESULTS.with_name("scaling.png")
        plot_scaling(rows, png)
        lines = [
            "| model | size (px) | pixels | forward ms | ms per kilopixel | peak extra MB |",
            "|---|---|---|---|---|---|",
        ]
        for label, size, seconds, mem in rows:
            lines.append(
                f"| {label} | {size} | {size * size} | {seconds * 1e3:.0f} | {seconds * 1e6 / (size * size):.2f} | "
                f"{mem:.0f} |"
            )
        scaling_body = f"""
Command: `{command}` (same run). Batch 1, fp32, forward. A cost that grows linearly with the pixel count keeps
"ms per kilopixel" constant.

{chr(10).join(lines)}

![scaling](scaling.png)
"""
        print(scaling_body)
        if not args.no_write:
            write_section("Scaling with image size (benchmarks/bench_models.py)", scaling_body)


if __name__ == "__main__":
    main()
