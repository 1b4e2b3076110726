"""The character-level LM task of the PBT benchmark as a Ray Tune function trainable.

Importable by Ray workers as ``tests.bench.pbt_trainables`` (the benchmark runs with the repo root
on PYTHONPATH). The same model, data, optimizer and seeding as ``examples.charlm_torch:train``
(which this runner's scenarios use unchanged): a member's seed is ``derive_seed(seed, index)``
with ``index`` the number of its Tune trial (the ``_00003`` of its id), so member ``i`` of a
Tune run starts from the same weights and sees the same batches as trial ``i`` of this runner's
run with the same seed. AdamW's hyperparameters are set before every update from the config:
the learning rate is the WSD shape of the runner's spec (``wsd_spec``) with the config's
``peak_value``, evaluated at the absolute step, which is what this runner's PBT does after an
exploit too (an absolute join: the donor's schedule until the step, the explored one after it);
``b2`` and ``weight_decay`` (group 0 only, as in the example) are constants.

Checkpoints (model, optimizer and step, ``torch.save``) are reported every ``interval_steps``
steps, where Tune's PBT looks at the population; one Tune iteration is ``report_every`` steps.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

WSD = {"warmup": 0.05, "decay": 0.2}  # fractions of the budget; stable is the rest


def wsd_spec(peak_value: float, steps: int) -> dict[str, Any]:
    """The benchmark's WSD learning rate: warmup 5%, stable, 1-sqrt cooldown over the last 20%."""
    warmup = max(1, round(WSD["warmup"] * steps))
    decay = max(1, round(WSD["decay"] * steps))
    return {"kind": "wsd", "peak_value": peak_value, "warmup_steps": warmup,
            "stable_steps": steps - warmup - decay, "decay_steps": decay,
            "decay_type": "1-sqrt", "end_value": 1.0e-5}


def _index(trial_id: str) -> int:
    """The trial's number in its Tune run (``_00003``); with a search algorithm Tune's ids end in
    a hex hash instead, which then seeds the trial (distinct, not this runner's numbering)."""
    tail = trial_id.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else int(tail, 16) % 1_000_000


def tune_train(config: dict) -> None:
    """Ray Tune function trainable: ``config`` holds ``peak_value``, ``b2``, ``weight_decay``
    (mutated by PBT) and ``seed``, ``steps``, ``report_every``, ``interval_steps``, ``params``."""
    import torch
    from ray import tune

    import schedules
    from examples.charlm_data import batch_starts, splits, val_starts, windows
    from examples.charlm_torch import DEFAULTS, lm_loss, make_model, param_groups, update
    from runner.context import derive_seed, seed_everything

    params = {**DEFAULTS, **config["params"]}
    steps, every, interval = config["steps"], config["report_every"], config["interval_steps"]
    context, batch_size = int(params["context"]), int(params["batch_size"])
    member = _index(tune.get_context().get_trial_id())
    seed = derive_seed(config["seed"], member)
    seed_everything(seed)
    train_tokens, val_tokens = splits()
    x_val, y_val = (torch.from_numpy(a)
                    for a in windows(val_tokens, val_starts(context, len(val_tokens)), context))
    model = make_model(**params)
    optimizer = torch.optim.AdamW(param_groups(model))
    step = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a restart: its own (paused) or a donor's (exploit)
        with checkpoint.as_directory() as path:
            state = torch.load(os.path.join(path, "state.pt"), weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
    lr = schedules.from_spec(wsd_spec(float(config["peak_value"]), steps))
    b2, weight_decay = float(config["b2"]), float(config["weight_decay"])

    while step < steps:
        for i, group in enumerate(optimizer.param_groups):
            group["lr"] = float(lr(step))
            group["betas"] = (group["betas"][0], b2)
            group["weight_decay"] = weight_decay if i == 0 else 0.0
        starts = batch_starts(seed, step, batch_size, context, len(train_tokens))
        x, y = (torch.from_numpy(a) for a in windows(train_tokens, starts, context))
        loss = update(model, optimizer, x, y)
        step += 1
        if step % every == 0 or step == steps:
            with torch.no_grad():
                val_loss = lm_loss(model, x_val, y_val).item()
            metrics = {"loss": loss.item(), "val_loss": val_loss, "step": step, "member": member}
            if step % interval == 0 or step == steps:
                with tempfile.TemporaryDirectory() as path:
                    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                "step": step}, os.path.join(path, "state.pt"))
                    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(path))
            else:
                tune.report(metrics)


# --- the search space, shared by every method -------------------------------------------------

PEAK = (3.0e-4, 3.0e-2)  # loguniform, as in sweeps/charlm.yaml
B2 = (0.9, 0.999)  # uniform
WEIGHT_DECAY = (1.0e-3, 3.0e-1)  # loguniform
BOUNDS = {"peak_value": PEAK, "b2": B2, "weight_decay": WEIGHT_DECAY}


def clip_to_space(config: dict) -> dict:
    """Tune PBT's ``custom_explore_fn``: a perturbed value clipped back into its distribution's
    range, as this runner's PBT does (Tune's own explore does not clip: 0.99 * 1.2 would be a b2
    above 1, which AdamW turns into NaN)."""
    for key, (low, high) in BOUNDS.items():
        config[key] = min(max(float(config[key]), low), high)
    return config
