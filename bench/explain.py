"""Seconds per heatmap vs. a forward pass, same run, same batch (``cxrtool explain``'s speed goal).

Usage: ``.venv/bin/python bench/explain.py [--batch 16] [--size 224] [--repeats 3] [--zennit]``

The baseline is the plain forward of the same DenseNet-121 under ``torch.inference_mode()``, in
NCHW and in channels-last (the layout explain runs in), whichever is faster.
Each explainer is timed per batch (compile time excluded: ``cxrtool explain`` compiles once per
run), each call right after a baseline forward; the ratio is the median over ``--repeats`` of
those neighbouring pairs' ratios (s/image: the median explain time), with each LRP composite's ``relevance_sum / logit``
range on the benchmark batch, alone and with ``bias_share`` (conservation held by the timed code itself).  ``--zennit``
adds stock zennit with our canonizer
(the "naive" path, slow).  The CPU is shared: run it a few times and quote the quiet numbers with
the load average printed at the top.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch

from cxrtool.config import PreprocessCfg
from cxrtool.explain.attribution import Explainer, zennit_relevance
from cxrtool.explain.composites import COMPOSITES
from cxrtool.models import build_model


def _median_time(fn, repeats: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--zennit", action="store_true", help="also time stock zennit (slow)")
    ap.add_argument("--composites", default=",".join(COMPOSITES))
    ap.add_argument(
        "--threads", type=int, default=0, help="torch threads (0: torch's default); 1 is steadier on a loaded machine"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = build_model("densenet121", num_classes=3).eval()
    for m in model.modules():  # non-trivial batch-norm statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    bounds = PreprocessCfg(input_size=args.size).input_bounds()
    print(
        f"load average {os.getloadavg()}, torch threads {torch.get_num_threads()}, batch {args.batch}, {args.size} px"
    )

    fast_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    forwards, forwards_fn = {}, {}
    for label, net, inp in (("NCHW", model, x), ("channels_last", fast_model, x_cl)):

        def forward(net=net, inp=inp) -> None:  # noqa: ANN001
            with torch.inference_mode():
                net(inp)

        forward()  # warm-up
        forwards[label] = _median_time(forward, args.repeats)
        forwards_fn[label] = forward
    # the baseline is the faster forward: explain runs channels-last, so the ratio must not gain from the layout
    label, base = min(forwards.items(), key=lambda kv: kv[1])
    for name, t in forwards.items():
        print(
            f"{'forward ' + name:32s} {t / args.batch:8.4f} s/image {t / base:6.2f}x"
            + ("   <- baseline" if name == label else "")
        )
    for name in args.composites.split(","):
        explainer = Explainer(model, name, bounds)
        result = explainer.attribute(x)  # warm-up, and the conservation check of this very run
        # each explain call is paired with a baseline forward right before it, and the ratio is the median of the
        # pairs' ratios: on a VM whose speed drifts by tens of percent within a minute, only neighbours compare
        fwd = forwards_fn[label]
        pairs = []
        for _ in range(args.repeats):
            t_fwd = _median_time(fwd, 1)
            pairs.append((_median_time(lambda: explainer.explain(x), 1), t_fwd))
        t = statistics.median(t_exp for t_exp, _ in pairs)
        ratio_x = statistics.median(t_exp / t_fwd for t_exp, t_fwd in pairs)
        line = f"{name:32s} {t / args.batch:8.4f} s/image {ratio_x:6.2f}x"
        if explainer.spec.is_lrp:
            logit = result.logits.max(1).values
            total = result.relevance[0].sum((1, 2, 3))
            ratio, closed = (total / logit).numpy(), ((total + result.bias_share[0]) / logit).numpy()
            line += f"   relevance_sum/logit {ratio.min():.3f}..{ratio.max():.3f}"
            line += f"   (+bias_share) {closed.min():.3f}..{closed.max():.3f}"
        print(line)
    if args.zennit:
        targets = torch.zeros(args.batch, dtype=torch.long)
        t = _median_time(lambda: zennit_relevance(model, x, targets, "epsilon_plus_flat", bounds), 1)
        print(f"{'zennit epsilon_plus_flat (naive)':32s} {t / args.batch:8.4f} s/image {t / base:6.2f}x")


if __name__ == "__main__":
    main()
