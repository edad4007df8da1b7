"""`EvalSchedule`: evaluate at chosen optimizer steps, dense early where refusal changes fastest.

A fixed `val_check_interval` of 20 steps sees every domain fall from 100% to 0% between two
evaluations, so the order in which domains lose their refusals is never seen. The schedule evaluates
at steps 1, 2, 4, 8, ... (or any list), every `every` steps beyond, and at `max_steps`.
"""

from __future__ import annotations

from typing import Optional

import lightning.pytorch as pl


def eval_steps(max_steps: int, steps: Optional[list[int]] = None, every: Optional[int] = None) -> list[int]:
    """The sorted optimizer steps to evaluate at: `steps` (default: the powers of two), every
    multiple of `every`, and `max_steps`; all within 1..max_steps."""
    if max_steps < 1:
        raise ValueError(f"EvalSchedule needs trainer.max_steps >= 1, got {max_steps}")
    if every is not None and every < 1:
        raise ValueError(f"EvalSchedule: every must be >= 1, got {every}")
    chosen = set(steps) if steps is not None else {2 ** k for k in range(max_steps.bit_length())}
    bad = sorted(s for s in chosen if s < 1)
    if bad:
        raise ValueError(f"EvalSchedule: steps must be >= 1 (step 0 is the baseline, always measured), got {bad}")
    if every:
        chosen |= set(range(every, max_steps + 1, every))
    return sorted({s for s in chosen if s <= max_steps} | {max_steps})


class EvalSchedule(pl.Callback):
    """Runs validation after the optimizer steps of `eval_steps(trainer.max_steps, steps, every)`.

    After every training batch it points Lightning's batch-based validation check
    (`trainer.val_check_batch`, with `check_val_every_n_epoch: null`) at this batch when a scheduled
    step was just reached, and past it otherwise; `val_check_interval` (an integer, as Lightning
    requires for step-based validation) is then ignored. Gradient
    accumulation and epoch ends (where Lightning steps on a partial accumulation) are handled, as the
    decision follows the optimizer step actually reached.

    Args:
        steps: optimizer steps to evaluate after (default 1, 2, 4, 8, ... up to max_steps).
        every: also evaluate every this many steps.
    """

    def __init__(self, steps: Optional[list[int]] = None, every: Optional[int] = None) -> None:
        self.steps = None if steps is None else [int(s) for s in steps]
        self.every = every
        self.schedule: set[int] = set()
        self._done: set[int] = set()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.check_val_every_n_epoch is not None:
            raise ValueError("EvalSchedule counts steps across epochs: set trainer.check_val_every_n_epoch: null")
        if trainer.max_steps is None or trainer.max_steps < 1:
            raise ValueError("EvalSchedule needs trainer.max_steps")
        self.schedule = set(eval_steps(trainer.max_steps, self.steps, self.every))
        self._done = {s for s in self.schedule if s <= trainer.global_step}  # a resumed run: evaluated before
        trainer.val_check_batch = trainer.max_steps * trainer.accumulate_grad_batches + 1  # not before a step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        # The check after this batch fires when (batch count) % val_check_batch == 0: the count itself
        # fires now, anything larger does not (and is never inf, which means "at every epoch end").
        count = trainer.fit_loop.epoch_loop.total_batch_idx + 1
        step = trainer.global_step
        due = step in self.schedule and step not in self._done
        if due:
            self._done.add(step)
        trainer.val_check_batch = count if due else count + 1
