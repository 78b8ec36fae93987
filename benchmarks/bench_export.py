"""Export benchmark: onnxruntime CPU latency next to PyTorch eager, export time and file size; and the measurements
behind the choice of the exportable scan formulation.

Run:  python benchmarks/bench_export.py [--threads 2] [--repeats 10] [--no-write] [--skip-formulations]

Models: MedMamba-T at 224 px and VM-UNet (paper preset) at 256 px, random initialisation, fp32, batch 1, exported by
`hf_medmamba.tools.export.export_onnx` (dynamic batch, opset 18). Each round calls onnxruntime (CPU, ``threads``
intra-op threads), PyTorch eager with the default scan backend (the compiled CPU kernel) and PyTorch eager with the
pure-PyTorch chunked scan, once each; the medians over the rounds are reported.

Formulations: SS2D's four-direction scan of MedMamba-T's first stage (96 channels, 56 x 56 pixels, state 16) written
four ways that export, each exported alone to ONNX and timed in onnxruntime the same way.
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnx
import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import machine, parse_bench_args, write_section

from hf_medmamba import MedMambaConfig, MedMambaForImageClassification, VMUNetConfig, VMUNetForSegmentation
from hf_medmamba import selective_scan as ss
from hf_medmamba.tools.export import example_input, export_onnx, onnx_session


def node_counts(path):
    """(nodes of the main graph, nodes including those of Scan bodies)."""

    def count(graph):
        total = 0
        for node in graph.node:
            total += 1
            total += sum(count(a.g) for a in node.attribute if a.type == onnx.AttributeProto.GRAPH)
        return total

    graph = onnx.load(str(path), load_external_data=False).graph
    return len(graph.node), count(graph)


def round_robin(calls, repeats):
    """Median seconds of each call, timed one call of each per round (drift in machine speed hits all alike)."""
    for call in calls.values():
        call()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


# ----------------------------------------------------------------------------------------------------------------------
# The models
# ----------------------------------------------------------------------------------------------------------------------

MODELS = {
    "MedMamba-T": (lambda: MedMambaForImageClassification(MedMambaConfig.from_preset("medmamba-t", num_labels=3)), 224),
    "VM-UNet (paper)": (lambda: VMUNetForSegmentation(VMUNetConfig.from_preset("vmunet-paper")), 256),
}


def measure_model(name, build, size, folder, threads, repeats):
    """Export one model and time onnxruntime against PyTorch eager (compiled kernel, chunked scan)."""
    torch.manual_seed(0)
    model = build().eval()
    chunked = build().eval()
    chunked.load_state_dict(model.state_dict())
    chunked.set_scan_backend("chunked")
    start = time.perf_counter()
    path = export_onnx(model, Path(folder) / f"{name.split()[0].lower()}.onnx", size)
    export_seconds = time.perf_counter() - start
    session = onnx_session(path, threads)
    x = example_input(model, size, 1, seed=1)
    feed = {"pixel_values": x.numpy()}

    def eager(m):
        def call():
            with torch.no_grad():
                return m(pixel_values=x).logits

        return call

    diff = (torch.from_numpy(session.run(None, feed)[0]) - eager(model)()).abs().max().item()
    med = round_robin(
        {"onnx": lambda: session.run(None, feed), "kernel": eager(model), "chunked": eager(chunked)}, repeats
    )
    print(f"{name}: export {export_seconds:.1f} s, {med}", flush=True)
    return name, size, path.stat().st_size / 2**20, export_seconds, node_counts(path), med, diff


def bench_models(folder, threads, repeats):
    return [measure_model(name, build, size, folder, threads, repeats) for name, (build, size) in MODELS.items()]


def models_table(rows):
    lines = [
        "| model | input | ONNX file | export | nodes (incl. Scan bodies) | onnxruntime | eager, compiled kernel | "
        "eager, chunked scan | onnxruntime / kernel | onnxruntime / chunked | max abs diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, size, mib, seconds, (nodes, all_nodes), med, diff in rows:
        lines.append(
            f"| {name} | 1 x 3 x {size} x {size} | {mib:.1f} MiB | {seconds:.0f} s | {nodes} ({all_nodes}) | "
            f"{med['onnx'] * 1e3:.0f} ms | {med['kernel'] * 1e3:.0f} ms | {med['chunked'] * 1e3:.0f} ms | "
            f"{med['onnx'] / med['kernel']:.2f}x | {med['onnx'] / med['chunked']:.2f}x | {diff:.1e} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# Candidate formulations of the exportable scan (only the chosen one lives in hf_medmamba.selective_scan)
# ----------------------------------------------------------------------------------------------------------------------


def _chunk_layout(u, delta, A, B, C, delta_bias, T=None):
    """Inputs of a two-level scan in the chunked backend's (T, b, g, nc, ...) layout, softplus applied."""
    B, C = ss._check_inputs(u, delta, A, B, C, None, None, delta_bias)
    dt = ss._step_sizes(delta, delta_bias, True)
    b, d, L = u.shape
    g, n = B.shape[1], B.shape[2]
    T = T or ss._chunk_length(L)
    nc = -(-L // T)
    steps = [ss._to_steps(t.reshape(b, g, -1, L), T, nc) for t in (dt, dt * u, B, C)]
    A = A.reshape(g, d // g, n).transpose(1, 2).unsqueeze(1).contiguous()  # (g, 1, n, dg)
    return (*steps, A, L)


def _carry_unrolled(ends, chunk_decay):
    """Start state of every chunk (b, g, nc, n, dg) from the chunk-local end states, one step per chunk."""
    starts = [torch.zeros_like(ends[:, :, 0])]
    for c in range(ends.shape[2] - 1):
        starts.append(chunk_decay[:, :, c] * starts[-1] + ends[:, :, c])
    return torch.stack(starts, 2)


def unrolled_materialised(u, delta, A, B, C, D, delta_bias):
    """Two-level scan unrolled for the fixed L: every state of every chunk is kept, then corrected by the carry."""
    dt, dtu, B_s, C_s, A, L = _chunk_layout(u, delta, A, B, C, delta_bias)
    decay = torch.exp(dt.unsqueeze(-2) * A).unbind(0)
    drive = (dtu.unsqueeze(-2) * B_s.unsqueeze(-1)).unbind(0)
    states = [drive[0]]
    for t in range(1, len(drive)):
        states.append(decay[t] * states[-1] + drive[t])
    start = _carry_unrolled(states[-1], torch.exp(A * dt.sum(0).unsqueeze(-2)))
    states = torch.stack(states) + torch.exp(A * dt.cumsum(0).unsqueeze(-2)) * start
    y = ss._from_steps(torch.matmul(C_s.unsqueeze(-2), states).squeeze(-2), L)
    return y + u * D.unsqueeze(-1)


def unrolled_recomputed(u, delta, A, B, C, D, delta_bias):
    """Two-level scan unrolled for the fixed L, as the chunked backend: decays recomputed in a second pass."""
    dt_all, dtu, B_s, C_s, A, L = _chunk_layout(u, delta, A, B, C, delta_bias)
    dt, dtu, B_s, C_s = (t.unbind(0) for t in (dt_all, dtu, B_s, C_s))

    def step(h, t):
        return torch.exp(dt[t].unsqueeze(-2) * A) * h + dtu[t].unsqueeze(-2) * B_s[t].unsqueeze(-1)

    h = torch.zeros_like(dtu[0].unsqueeze(-2) * B_s[0].unsqueeze(-1))
    for t in range(len(dt)):
        h = step(h, t)
    h = _carry_unrolled(h, torch.exp(A * dt_all.sum(0).unsqueeze(-2)))
    ys = []
    for t in range(len(dt)):
        h = step(h, t)
        ys.append(torch.matmul(C_s[t].unsqueeze(-2), h).squeeze(-2))
    return ss._from_steps(torch.stack(ys), L) + u * D.unsqueeze(-1)


def _local_step(A):
    def step(h, inputs):
        dt_t, dtu_t, B_t = inputs
        return torch.exp(dt_t * A) * h + dtu_t * B_t, dt_t.new_zeros(())

    return step


def _emit_step(A):
    def step(h, inputs):
        dt_t, dtu_t, B_t, C_t = inputs
        h = torch.exp(dt_t * A) * h + dtu_t * B_t
        return h, torch.matmul(C_t, h)

    return step


def _carry_step(s, inputs):
    decay, end = inputs
    return decay * s + end, s.clone()


def scan_op_two_level(u, delta, A, B, C, D, delta_bias):
    """Two-level scan with the scan op: one iteration per position in a chunk, all chunks at once, then the carry."""
    dt, dtu, B_s, C_s, A, L = _chunk_layout(u, delta, A, B, C, delta_bias)
    dt, dtu, B_s, C_s = dt.unsqueeze(-2), dtu.unsqueeze(-2), B_s.unsqueeze(-1), C_s.unsqueeze(-2)
    zeros = dt.new_zeros((*dt.shape[1:4], A.shape[-2], A.shape[-1]))
    ends, _ = ss._scan_steps(_local_step(A), zeros, (dt, dtu, B_s))
    chunk_decay = torch.exp(A * dt.sum(0))
    carry_in = (chunk_decay.movedim(2, 0).contiguous(), ends.movedim(2, 0).contiguous())
    _, start = ss._scan_steps(_carry_step, zeros[:, :, 0].contiguous(), carry_in)
    _, y = ss._scan_steps(_emit_step(A), start.movedim(0, 2).contiguous(), (dt, dtu, B_s, C_s))
    return ss._from_steps(y.squeeze(-2), L) + u * D.unsqueeze(-1)


FORMULATIONS = {
    "scan op, one step per iteration (chosen: backend 'export')": None,
    "scan op, two-level (one iteration per chunk position)": scan_op_two_level,
    "unrolled two-level, states kept": unrolled_materialised,
    "unrolled two-level, decays recomputed": unrolled_recomputed,
}


class CrossScan(torch.nn.Module):
    """SS2D's four-direction scan with fixed parameters, by a candidate formulation (None: the library's)."""

    def __init__(self, E, n, height, width, formulation):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.A = torch.nn.Parameter(-torch.arange(1.0, n + 1).repeat(4 * E, 1))
        self.D = torch.nn.Parameter(torch.ones(4 * E))
        self.bias = torch.nn.Parameter(torch.rand(4 * E, generator=gen) * 4 - 7)  # softplus: dt in [0.001, 0.05]
        self.height, self.width, self.formulation = height, width, formulation

    def forward(self, u, delta, B, C, backend="export"):
        args = (u, delta, self.A, B, C, self.D, self.bias, self.height, self.width)
        if self.formulation is None:
            return ss.cross_selective_scan(*args, backend=backend)
        batch, E, L = u.shape
        xs = ss.cross_scan(u.view(batch, E, self.height, self.width)).reshape(batch, 4 * E, L)
        deltas = ss.to_scan_orders(delta.view(batch, 4, E, L), self.height, self.width).reshape(batch, 4 * E, L)
        ys = self.formulation(
            xs,
            deltas,
            self.A,
            ss.to_scan_orders(B, self.height, self.width),
            ss.to_scan_orders(C, self.height, self.width),
            self.D,
            self.bias,
        )
        return ss.cross_merge(ys.view(batch, 4, E, L), self.height, self.width)


def bench_formulations(folder, threads, repeats, E=96, n=16, side=56):
    gen = torch.Generator().manual_seed(1)
    L = side * side
    inputs = (
        torch.randn(1, E, L, generator=gen),
        torch.randn(1, 4 * E, L, generator=gen),
        torch.randn(1, 4, n, L, generator=gen),
        torch.randn(1, 4, n, L, generator=gen),
    )
    reference = CrossScan(E, n, side, side, None).double()
    with torch.no_grad():
        exact = reference(*(t.double() for t in inputs), backend="reference").float()
        kernel = CrossScan(E, n, side, side, None)
    rows, calls = [], {}
    for index, (name, formulation) in enumerate(FORMULATIONS.items()):
        module = CrossScan(E, n, side, side, formulation).eval()
        path = Path(folder) / f"formulation{index}.onnx"
        start = time.perf_counter()
        with torch.no_grad():
            torch.onnx.export(module, inputs, str(path), dynamo=True, opset_version=18, verbose=False)
        seconds = time.perf_counter() - start
        session = onnx_session(path, threads)
        feed = dict(zip([i.name for i in session.get_inputs()], (t.numpy() for t in inputs)))
        diff = (torch.from_numpy(session.run(None, feed)[0]) - exact).abs().max().item()
        calls[name] = lambda session=session, feed=feed: session.run(None, feed)
        rows.append((name, seconds, node_counts(path), path.stat().st_size / 2**10, diff))
        print(f"{name}: export {seconds:.1f} s, max diff {diff:.1e}", flush=True)
    for backend in ("cpu_kernel", "chunked"):
        calls[f"eager {backend}"] = lambda backend=backend: kernel(*inputs, backend=backend)
    with torch.no_grad():
        med = round_robin(calls, repeats)
    return rows, med


def formulations_table(rows, med):
    lines = [
        "| formulation | export | ONNX nodes (incl. Scan bodies) | file | onnxruntime | max abs diff vs float64 |",
        "|---|---|---|---|---|---|",
    ]
    for name, seconds, (nodes, all_nodes), kib, diff in rows:
        lines.append(
            f"| {name} | {seconds:.1f} s | {nodes} ({all_nodes}) | {kib:.0f} KiB | {med[name] * 1e3:.0f} ms | "
            f"{diff:.1e} |"
        )
    eager = ", ".join(f"{name} {med[name] * 1e3:.0f} ms" for name in med if name.startswith("eager"))
    return "\n".join(lines) + f"\n\nSame scan in PyTorch eager: {eager}."


def main():
    args = parse_bench_args(__doc__, repeats=10, extra=("--skip-formulations",))
    with open("/proc/loadavg") as f:
        load_before = f.read().split()[:3]

    with tempfile.TemporaryDirectory() as folder:
        rows = bench_models(folder, args.threads, args.repeats)
        formulations = None if args.skip_formulations else bench_formulations(folder, args.threads, args.repeats)
    with open("/proc/loadavg") as f:
        load_after = f.read().split()[:3]

    command = f"python benchmarks/bench_export.py --threads {args.threads} --repeats {args.repeats}"
    body = f"""
Command: `{command}`

Machine: {machine()}; onnxruntime {__import__("onnxruntime").__version__}, onnx {onnx.__version__}. Load average
(1, 5, 15 min) {", ".join(load_before)} before and {", ".join(load_after)} after the run (this run alone accounts for
up to {args.threads}; more means other work shared the CPU).
Random initialisation, fp32, batch 1, {args.threads} threads for PyTorch (`torch.set_num_threads`) and onnxruntime
(`intra_op_num_threads`, CPU provider); medians of {args.repeats} round-robin rounds in one process. The ONNX files
come from `hf_medmamba.tools.export.export_onnx` (torch.export, then `torch.onnx.export(..., dynamo=True)`, opset 18,
dynamic batch, fixed image size); "export" is the wall time of that call. Max abs diff: onnxruntime against PyTorch
eager (compiled kernel) on the same random input.

{models_table(rows)}
"""
    if formulations is not None:
        body += f"""
The exportable scan, four formulations measured on SS2D's four-direction scan of MedMamba-T's first stage
(1 x 96 channels x 56 x 56 pixels, state 16, L = 3136), each exported alone (static shapes) and run in onnxruntime as
above. The two-level ones cut L into chunks of ceil(sqrt(L)) = 56 steps; "unrolled" ones are Python loops traced into
the graph; "scan op" ones use `torch._higher_order_ops.scan` (one ONNX `Scan` node per loop, its body a subgraph).
The chosen formulation also gathers the four scan orders with one index per input (the others use the generic
reorders of `cross_selective_scan`) and computes softplus without onnxruntime's slow Softplus op (a few ms here).

{formulations_table(*formulations)}
"""
    print(body)
    if not args.no_write:
        write_section("ONNX export (benchmarks/bench_export.py)", body)


if __name__ == "__main__":
    main()
