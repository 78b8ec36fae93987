"""Shared by the benchmarks: arguments, timing, peak memory of a call, machine description, RESULTS.md sections."""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


RESULTS = Path(__file__).with_name("RESULTS.md")


def parse_bench_args(doc, repeats, extra=()):
    """The options every benchmark takes (--threads, --repeats, --no-write) plus ``extra`` flags; sets the threads."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    for flag in extra:
        parser.add_argument(flag, action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


def median_time(fn, repeats=5, warmup=1):
    """Median wall time of fn() in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine():
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )


_PEAK_SNIPPET = r"""
import json, sys, torch
sys.path[:0] = [{root!r}, {bench!r}]
torch.set_num_threads({threads})
setup = __import__({module!r}, fromlist=['x']).{factory}
fn = setup(*{args!r})
fn()  # warm-up: one-time allocations (thread pools, kernels) are not part of a call's cost

def rss_kb(field):
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1])

with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # reset the peak RSS (VmHWM) to the current RSS
before = rss_kb('VmRSS:')
fn()
print(json.dumps({{'peak_extra_mb': (rss_kb('VmHWM:') - before) / 1024}}))
"""


def peak_extra_memory_mb(module, factory, args, threads=2):
    """Peak RSS above the resting level during one call of ``factory(*args)()``, in a fresh process.

    glibc is told to serve every allocation of 64 KiB or more with its own mapping, so memory freed by the warm-up is
    returned to the system and the next call's peak is its own.
    """
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    code = _PEAK_SNIPPET.format(
        root=str(Path(__file__).resolve().parent.parent),
        bench=str(Path(__file__).resolve().parent),
        threads=threads,
        module=module,
        factory=factory,
        args=tuple(args),
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_extra_mb"]


_HEADER = """# Benchmark results

Every number here was measured by a script in this folder; each section names the command that produced it.
"""


def write_section(name, body):
    """Replace (or append) the section ``## name`` of RESULTS.md with ``body``."""
    text = RESULTS.read_text() if RESULTS.exists() else _HEADER
    section = f"## {name}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(section + "\n", text)
    else:
        text = text.rstrip() + "\n\n" + section
    RESULTS.write_text(text.rstrip() + "\n")
