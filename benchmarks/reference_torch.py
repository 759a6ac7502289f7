"""The PyTorch way of doing s4mi_jax's research SimCLR step, on the same card: the ratio's denominator.

    python benchmarks/reference_torch.py --batch=512 --image_size=224 --json=torch.json [--compile]

Not part of the package (torch is not a dependency of s4mi_jax; nothing imports this file). The work
matches `configs/simclr_chest.py:research` with `aug.on_device=True` per step: a batch of B uint8
grayscale source images (`--source_size`, as the host hands them over) goes to the GPU, two views of
each are made there (per-image random resized crop of scale 0.08-1 and aspect 3/4-4/3, horizontal flip,
brightness/contrast jitter; s4mi_jax also blurs and solarizes, which this reference omits: a small
share of the step), then torchvision's ResNet-50 (1 input channel), the 2048-2048-128 projection head
with BatchNorm, NT-Xent at temperature 0.1 over the 2B views, and LARS (momentum 0.9, weight decay 1e-6,
trust coefficient 0.001, biases and BatchNorm excluded from both, as SimCLR). bf16 autocast,
channels_last, `--warmup` untimed steps, then `--steps` steps timed with CUDA events (on a CPU, with a
wall clock). `--compile` adds `torch.compile` of the model and loss.

It prints one JSON object (examples/s, step ms, peak memory); `--json` also writes it.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import torch
import torch.nn.functional as F
import torchvision


class Lars(torch.optim.Optimizer):
    """SGD with momentum, weight decay and LARS trust ratio; `exclude` params get neither (SimCLR)."""

    def __init__(self, groups, lr: float, momentum: float = 0.9, eta: float = 0.001):
        super().__init__(groups, dict(lr=lr, momentum=momentum, eta=eta, weight_decay=0.0))

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            params = [p for p in g["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if g["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=g["weight_decay"])
                p_norm = torch._foreach_norm(params)
                g_norm = torch._foreach_norm(grads)
                ratios = [
                    torch.where((pn > 0) & (gn > 0), g["eta"] * pn / gn, torch.ones_like(pn))
                    for pn, gn in zip(p_norm, g_norm, strict=True)
                ]
                grads = torch._foreach_mul(grads, ratios)
            bufs = []
            for p in params:
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                bufs.append(state["mu"])
            torch._foreach_mul_(bufs, g["momentum"])
            torch._foreach_add_(bufs, grads)
            torch._foreach_add_(params, bufs, alpha=-g["lr"])


class SimCLR(torch.nn.Module):
    def __init__(self, arch: str, hidden: int, out: int):
        super().__init__()
        net = getattr(torchvision.models, arch)(weights=None)
        net.conv1 = torch.nn.Conv2d(1, net.conv1.out_channels, 7, 2, 3, bias=False)
        feat = net.fc.in_features
        net.fc = torch.nn.Identity()
        self.encoder = net
        self.head = torch.nn.Sequential(
            torch.nn.Linear(feat, hidden, bias=False),
            torch.nn.BatchNorm1d(hidden),
            torch.nn.ReLU(inplace=True),
            torch.nn.Linear(hidden, out),
        )

    def forward(self, x):
        return self.head(self.encoder(x))


def nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    z = F.normalize(z.float(), dim=1)
    n = z.shape[0] // 2
    logits = z @ z.t() / temperature
    logits.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


def views(src: torch.Tensor, size: int) -> torch.Tensor:
    """(B, S, S) uint8 -> (2B, 1, size, size) float: per-image random resized crop, flip, jitter."""
    b = src.shape[0]
    x = src.float().div_(255.0).unsqueeze(1).repeat(2, 1, 1, 1)
    n = x.shape[0]
    dev = x.device
    area = torch.empty(n, device=dev).uniform_(0.08, 1.0)
    log_r = torch.empty(n, device=dev).uniform_(math.log(3 / 4), math.log(4 / 3))
    ratio = torch.exp(log_r)
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(n, device=dev) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, device=dev) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(n, device=dev) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, (n, 1, size, size), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", align_corners=False)
    bright = torch.empty(n, 1, 1, 1, device=dev).uniform_(0.2, 1.8)
    contrast = torch.empty(n, 1, 1, 1, device=dev).uniform_(0.2, 1.8)
    mean = x.mean(dim=(2, 3), keepdim=True)
    x = ((x * bright - mean) * contrast + mean).clamp_(0, 1)
    assert x.shape[0] == 2 * b
    return (x - 0.5) / 0.25


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--source_size", type=int, default=96)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--out_dim", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--json", default=None)
    a = p.parse_args()

    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    model = SimCLR(a.arch, a.hidden, a.out_dim).to(dev).to(memory_format=torch.channels_last)
    decay = [q for n, q in model.named_parameters() if q.ndim > 1]
    no_decay = [q for n, q in model.named_parameters() if q.ndim <= 1]
    lr = 0.3 * a.batch / 256
    opt = Lars([dict(params=decay, weight_decay=1e-6), dict(params=no_decay, weight_decay=0.0)], lr)

    def step_fn(src: torch.Tensor) -> torch.Tensor:
        x = views(src, a.image_size).contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            loss = nt_xent(model(x), 0.1)
        loss.backward()
        return loss

    if a.compile:
        step_fn = torch.compile(step_fn)

    def train_step(src):
        opt.zero_grad(set_to_none=True)
        loss = step_fn(src)
        opt.step()
        return loss

    gen = torch.Generator().manual_seed(0)
    host = torch.randint(
        0, 256, (a.batch, a.source_size, a.source_size), dtype=torch.uint8, generator=gen
    )
    if cuda:
        host = host.pin_memory()
    t_compile = time.perf_counter()
    for _ in range(a.warmup):
        loss = train_step(host.to(dev, non_blocking=True))
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    warmup_s = time.perf_counter() - t_compile
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    t = time.perf_counter()
    for _ in range(a.steps):
        loss = train_step(host.to(dev, non_blocking=True))
    if cuda:
        end.record()
        torch.cuda.synchronize()
        total_s = start.elapsed_time(end) / 1e3
    else:
        total_s = time.perf_counter() - t
    result = {
        "framework": f"torch {torch.__version__} torchvision {torchvision.__version__}",
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "arch": a.arch,
        "batch": a.batch,
        "image_size": a.image_size,
        "views_per_example": 2,
        "compile": a.compile,
        "amp": "bf16" if cuda else "off (CPU)",
        "steps": a.steps,
        "warmup": a.warmup,
        "warmup_s": warmup_s,
        "step_ms": 1e3 * total_s / a.steps,
        "examples_per_s": a.batch * a.steps / total_s,
        "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan"),
        "final_loss": float(loss),
    }
    print(json.dumps(result), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
