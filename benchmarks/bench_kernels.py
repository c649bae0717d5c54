"""CPU kernel figures behind the policy speed-ups, each pair measured side by side in one process (1 thread).

  linear    torch's F.linear (MKL) vs robopolicy's prepacked oneDNN linear (policies/common/prepacked.py) on the
            thin shapes of batch-1 inference (ACT encoder / decoder, the paper UNet's GEMMs). Each timing cycles
            through 8 distinct weights so they stream from memory as in a real forward pass; GB/s = weight bytes / s.
  conv      torch's conv2d vs PrepackedConv2d on ResNet-18's 3x3 convs at a 96x96 input, batch 1.
  dropout   nn.Dropout vs robopolicy's FastDropout (policies/common/dropout.py), forward + backward on an ACT
            feed-forward activation (600 x 3200).

The "prepacked / fast" side needs the CPU kernels on (policies/common/kernels.py): the script refuses to run
when the switch is off or the oneDNN ops are missing, since both columns would then time the same torch op.

Usage: .venv/bin/python benchmarks/bench_kernels.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from robopolicy.policies.common import kernels, prepacked
from robopolicy.policies.common.dropout import dropout

LINEARS = [  # (rows, in, out): where they occur
    (11, 512, 3200, "ACT encoder feed-forward in"),
    (11, 3200, 512, "ACT encoder feed-forward out"),
    (11, 512, 1536, "ACT encoder q/k/v"),
    (100, 512, 3200, "ACT decoder feed-forward in"),
    (4, 10240, 2048, "paper UNet conv, 2048 ch, length 4"),
    (16, 2560, 512, "paper UNet conv, 512 ch, length 16"),
]
CONVS = [(64, 24), (128, 12), (256, 6), (512, 3)]  # (channels, feature-map side) of ResNet-18's 3x3 convs


def timed(fn, repeats: int, inner: int) -> float:
    """Median over `repeats` of the mean time of `inner` calls, in ms (after 2 warm-up calls)."""
    fn(), fn()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        runs.append((time.perf_counter() - t0) / inner * 1000)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not kernels.onednn("cpu"):
        raise SystemExit(f"CPU kernels off ({kernels.ENV}={kernels.mode()}, oneDNN ops usable: "
                         f"{kernels.onednn_available()}): nothing to compare")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print("linear, batch-1 inference shapes (8 distinct weights per timing), torch F.linear vs prepacked:")
    with torch.no_grad():
        for rows, k, n, where in LINEARS:
            ws = [torch.randn(n, k) for _ in range(8)]
            x = torch.randn(rows, k)
            plain = timed(lambda x=x, ws=ws: [F.linear(x, w) for w in ws], args.repeats, 3) / 8
            packed = timed(lambda x=x, ws=ws: [prepacked.linear(x, w) for w in ws], args.repeats, 3) / 8
            gb = k * n * 4 / 1e9
            print(f"  {rows:>4} x {k:>5} -> {n:>5}  {plain:7.3f} ms ({gb / plain * 1e3:5.1f} GB/s)  "
                  f"{packed:7.3f} ms ({gb / packed * 1e3:5.1f} GB/s)  x{plain / packed:.2f}  {where}")
        print("conv 3x3, ResNet-18 at 96x96, batch 1 (6 distinct weights per timing), torch conv2d vs prepacked:")
        for c, side in CONVS:
            convs = [prepacked.PrepackedConv2d(c, c, 3, padding=1, bias=False).eval() for _ in range(6)]
            x = torch.randn(1, c, side, side)
            plain = timed(lambda x=x, convs=convs: [F.conv2d(x, m.weight, None, 1, 1) for m in convs],
                          args.repeats, 5) / 6
            packed = timed(lambda x=x, convs=convs: [m(x) for m in convs], args.repeats, 5) / 6
            print(f"  {c:>4} ch {side:>2}x{side:<2}  {plain:6.3f} ms  {packed:6.3f} ms  x{plain / packed:.2f}")
    print("dropout p=0.1, forward + backward on 600 x 3200:")
    x, g = torch.randn(600, 3200, requires_grad=True), torch.randn(600, 3200)
    plain = timed(lambda: F.dropout(x, 0.1, True).backward(g), args.repeats, 10)
    fast = timed(lambda: dropout(x, 0.1, True).backward(g), args.repeats, 10)
    print(f"  nn.Dropout {plain:.2f} ms  FastDropout {fast:.2f} ms  x{plain / fast:.2f}")


if __name__ == "__main__":
    main()
