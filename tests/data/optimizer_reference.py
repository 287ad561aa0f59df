"""Record reference trajectories of Schedule-Free AdamW and Prodigy for the optimizer tests.

Needs PyTorch and the reference implementations (the test suite does not):

    python -m venv /tmp/ref
    /tmp/ref/bin/pip install torch==2.13.0 schedulefree==1.4.1 prodigyopt==1.1.2 numpy
    /tmp/ref/bin/python tests/data/optimizer_reference.py      # writes optimizer_reference.json

The problem: two float32 tensors, one random and one all zeros (as LoRA's B starts), and
the loss 0.5 * sum(c * (p - target)^2) + 0.1 * sum(sin(p)); each step's gradient is taken
where the optimizer says (for Schedule-Free, at y) and recorded, so a test feeds the same
gradients to the MLX optimizer and compares every state the reference exposes. The
versions used are written into the file.
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch

STEPS = 8
OUT = Path(__file__).with_name("optimizer_reference.json")


def problem() -> dict[str, Any]:
    rng = np.random.default_rng(20)
    shapes = {"a": (3, 4), "b": (5,)}
    start = {"a": rng.normal(size=shapes["a"]), "b": np.zeros(shapes["b"])}
    target = {k: rng.normal(size=s) for k, s in shapes.items()}
    curvature = {k: rng.uniform(0.5, 3.0, size=s) for k, s in shapes.items()}
    return {"start": start, "target": target, "curvature": curvature}


def gradient(p: torch.Tensor, target: np.ndarray, curvature: np.ndarray) -> torch.Tensor:
    c = torch.tensor(curvature, dtype=torch.float32)
    t = torch.tensor(target, dtype=torch.float32)
    return c * (p - t) + 0.1 * torch.cos(p)


def tensors(start: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in start.items()}


def listed(t: torch.Tensor) -> Any:
    return t.detach().numpy().astype(np.float64).tolist()


def schedule_free(prob: dict[str, Any]) -> dict[str, Any]:
    from schedulefree import AdamWScheduleFree

    hyper = {"lr": 0.05, "warmup_steps": 3, "weight_decay": 0.01, "betas": [0.9, 0.999]}
    params = tensors(prob["start"])
    names = sorted(params)
    opt = AdamWScheduleFree(
        [params[k] for k in names],
        lr=hyper["lr"],
        warmup_steps=hyper["warmup_steps"],
        weight_decay=hyper["weight_decay"],
        betas=tuple(hyper["betas"]),
        foreach=False,
    )
    opt.train()
    steps = []
    for _ in range(STEPS):
        point = {k: listed(params[k]) for k in names}
        for k in names:
            params[k].grad = gradient(params[k], prob["target"][k], prob["curvature"][k])
        grads = {k: listed(params[k].grad) for k in names}
        opt.step()
        group = opt.param_groups[0]
        steps.append(
            {
                "lr": group["scheduled_lr"],
                "point": point,
                "grad": grads,
                "y": {k: listed(params[k]) for k in names},
                "z": {k: listed(opt.state[params[k]]["z"]) for k in names},
                "v": {k: listed(opt.state[params[k]]["exp_avg_sq"]) for k in names},
            }
        )
    return {"version": version("schedulefree"), "hyper": hyper, "steps": steps}


def prodigy(prob: dict[str, Any]) -> dict[str, Any]:
    from prodigyopt import Prodigy

    hyper = {"lr": 1.0, "weight_decay": 0.01, "betas": [0.9, 0.999], "d0": 1e-6}
    params = tensors(prob["start"])
    names = sorted(params)
    opt = Prodigy(
        [params[k] for k in names],
        lr=hyper["lr"],
        weight_decay=hyper["weight_decay"],
        betas=tuple(hyper["betas"]),
        d0=hyper["d0"],
    )
    steps = []
    for _ in range(STEPS):
        for k in names:
            params[k].grad = gradient(params[k], prob["target"][k], prob["curvature"][k])
        grads = {k: listed(params[k].grad) for k in names}
        opt.step()
        group = opt.param_groups[0]
        steps.append(
            {
                "grad": grads,
                "params": {k: listed(params[k]) for k in names},
                "m": {k: listed(opt.state[params[k]]["exp_avg"]) for k in names},
                "v": {k: listed(opt.state[params[k]]["exp_avg_sq"]) for k in names},
                "d": group["d"],
                "d_max": group["d_max"],
                "d_numerator": float(group["d_numerator"]),
            }
        )
    return {"version": version("prodigyopt"), "hyper": hyper, "steps": steps}


def main() -> None:
    prob = problem()
    record = {
        "torch": torch.__version__,
        "start": {k: v.tolist() for k, v in prob["start"].items()},
        "schedule_free": schedule_free(prob),
        "prodigy": prodigy(prob),
    }
    OUT.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
