"""Helpers shared by the selection tests (imported by name: tests/selection is on sys.path)."""

from __future__ import annotations


def make_source(run_dir, seed, num_classes=3, bias=0.0):
    """A small random-weight source run (channel T1); ``bias`` shifts class 1's logit."""
    import torch

    from trmcore.models import UNet, UNetConfig
    from trmcore.training import RunInfo, save_run

    torch.manual_seed(seed)
    config = UNetConfig(in_channels=1, num_classes=num_classes, depth=2, width=4)
    model = UNet(config).eval()
    if bias:
        with torch.no_grad():
            head = [m for m in model.head.modules() if isinstance(m, torch.nn.Conv2d)][-1]
            head.bias[1] += bias
    names = ["background"] + [f"c{k}" for k in range(1, num_classes)]
    info = RunInfo(model=config, channels=["T1"], label_names=names, label_values=list(range(num_classes)),
                   axis=2, divisor=config.divisor, orientation="RAS")
    save_run(run_dir, model, info)
    return run_dir
