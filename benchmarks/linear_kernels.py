"""fp32 linear layers on this CPU: torch's `nn.Linear` (MKL's sgemm) against `OneDNNLinear` (oneDNN's matmul), in one run.

    python benchmarks/linear_kernels.py

For the default decoder's products (SmolLM2-135M: 576 -> 1536, 1536 -> 576, 576 -> 576, 576 -> 192 and the 49,152-word
output layer) and as many rows as answering sends (1: a decoding step; 16: sixteen answers decoded together; 240: their
questions read together; 2,048: a long prefill), the median microseconds of each, their ratio, and the largest
difference between their outputs. Not a test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from e2llm_plugin.onednn import LINEAR, route_linears

SHAPES = ((576, 1536), (1536, 576), (576, 576), (576, 192), (576, 49152))
ROWS = (1, 4, 16, 240, 2048)


def median_us(layer: nn.Module, x: torch.Tensor, seconds: float = 0.3) -> float:
    times = []
    with torch.inference_mode():
        layer(x)
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(times) < 5:
            start = time.perf_counter()
            layer(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if LINEAR is None:
        raise SystemExit("this torch has no oneDNN linear on this machine: nothing to compare")
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| features | rows | nn.Linear (MKL) | oneDNN | speed-up | largest difference |\n|---|---:|---:|---:|---:|---:|")
    for features_in, features_out in SHAPES:
        torch.manual_seed(0)
        plain = nn.Linear(features_in, features_out, bias=False)
        routed = route_linears(copy.deepcopy(plain))
        for rows in ROWS:
            if features_out > 10_000 and rows > 16:
                continue  # the output layer reads one position per answer
            x = torch.randn(rows, features_in)
            mkl, onednn = median_us(plain, x), median_us(routed, x)
            with torch.inference_mode():
                difference = (plain(x) - routed(x)).abs().max().item()
            print(f"| {features_in} -> {features_out} | {rows:,} | {mkl:,.0f} µs | {onednn:,.0f} µs | {mkl / onednn:.2f}x "
                  f"| {difference:.1e} |")


if __name__ == "__main__":
    main()
