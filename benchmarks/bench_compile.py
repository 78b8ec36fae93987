"""torch.compile against eager: MedMamba-T and VM-UNet on CPU, with the compiled CPU scan kernel (the default here)
and with the pure-PyTorch chunked scan, both of which run as custom operators that the compiler keeps as one node.

Run:  python benchmarks/bench_compile.py [--threads 2] [--repeats 5] [--no-write]

Each case is compiled once with inductor (the first call's time is reported as the compile time), then timed
round-robin with its eager twin (same weights, same inputs) as medians over the rounds; speed-ups are eager / compiled
from the same run. Outputs are compared too (max abs difference of the logits).
"""

import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_models
from _common import machine, median_time, parse_bench_args, write_section
from bench_models import model_and_inputs


# The cases of bench_models.py that are ours: name -> (model, image size, batch, mode, scan backend)
OURS = ("MedMamba-T b1", "MedMamba-T train b8", "VM-UNet b1", "VM-UNet train b4", "MedMamba-T b1, pure PyTorch scan")
CASES = {name: bench_models.CASES[name] for name in OURS}


def make_calls(model_name, size, batch, mode, scan_backend):
    """(eager call, compiled call) on one model and one input; each returns the logits (forward, no grad) or the
    loss after its backward pass (training mode)."""
    model, inputs = model_and_inputs(model_name, size, batch, mode, scan_backend)
    compiled = torch.compile(model, backend="inductor")

    def call(m):
        def run():
            if mode == "forward":
                with torch.no_grad():
                    return m(**inputs).logits
            loss = m(**inputs).loss
            model.zero_grad(set_to_none=True)
            loss.backward()
            return loss.detach()

        return run

    return call(model), call(compiled)


def main():
    args = parse_bench_args(__doc__, repeats=5)
    rows = []
    for name, spec in CASES.items():
        eager, compiled = make_calls(*spec)
        start = time.perf_counter()
        out_compiled = compiled()
        compile_seconds = time.perf_counter() - start
        out_eager = eager()
        diff = (out_compiled.float() - out_eager.float()).abs().max().item()
        times = {"eager": [], "compiled": []}
        for _ in range(args.repeats):
            times["eager"].append(median_time(eager, repeats=1, warmup=0))
            times["compiled"].append(median_time(compiled, repeats=1, warmup=0))
        med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        rows.append((name, med["eager"], med["compiled"], compile_seconds, diff))
        print(f"{name}: eager {1000 * med['eager']:.0f} ms, compiled {1000 * med['compiled']:.0f} ms", flush=True)
        torch._dynamo.reset()
    body = f"""Command: `python benchmarks/bench_compile.py --threads {args.threads} --repeats {args.repeats}`

Machine: {machine()}. fp32, random initialisation, 3 x 224 x 224 (MedMamba-T) and 3 x 256 x 256 (VM-UNet) inputs;
`torch.compile(model, backend="inductor")`; medians of {args.repeats} round-robin rounds after the compiling call.
The scan runs as a custom operator (`hf_medmamba.scan_ops`): the compiler fuses the layers around it, not the scan.
The train cases' difference is that of stochastic depth (the presets' drop-path rates), whose random draws differ
between eager and compiled code; the forward cases compare deterministic outputs.

| case | eager ms | compiled ms | speed-up (eager / compiled) | first (compiling) call s | max abs diff |
|---|---|---|---|---|---|
""" + "\n".join(
        f"| {n} | {1000 * e:.0f} | {1000 * c:.0f} | {e / c:.2f}x | {s:.0f} | {d:.1e} |" for n, e, c, s, d in rows
    )
    print(body)
    if not args.no_write:
        write_section("torch.compile against eager (CPU)", body)


if __name__ == "__main__":
    main()
