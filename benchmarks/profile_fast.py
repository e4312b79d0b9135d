"""Where the time goes: torch.profiler's operator table for seglab's fast bf16 path on one model.

``python -m benchmarks.profile_fast lraspp_mobilenet_v3_large bisenetv2 --size 512`` prints, per model, the
operators taking the most self CPU time in a few forward passes (after warm-up), with the model's FLOPs and the
latency that the bf16 matrix-product ceiling would allow. Used to explain the issue-7 targets that are missed.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import count_flops, matmul_ceiling


def profile(name: str, size: int, batch: int, reps: int, top: int) -> str:
    import seglab
    from seglab.engine.fast import prepare_fast

    torch.manual_seed(0)
    model = seglab.create_model(name, num_classes=21).eval()
    fast = prepare_fast(model, precision="bf16")
    x = torch.randn(batch, 3, size, size)
    flops = count_flops(lambda: model(x))
    with torch.no_grad():
        for _ in range(2):
            fast(x)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(reps):
                fast(x)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
    return f"### {name} {size}x{size} batch {batch}: {flops / 1e9:.1f} GFLOP per forward\n\n{table}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    gflops, _ = matmul_ceiling(torch.bfloat16, n=4096, reps=3)
    print(f"bf16 matrix-product ceiling: {gflops:.0f} GFLOP/s ({torch.get_num_threads()} threads)\n")
    for name in args.models:
        print(profile(name, args.size, args.batch, args.reps, args.top))


if __name__ == "__main__":
    main()
