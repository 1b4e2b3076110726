"""The trial worker: a long-lived Ray actor that runs trial after trial in one process.

``run`` is a Ray streaming generator: it yields batches of events (reports, checkpoints, the final
outcome) while the trainable runs in a thread. Reports are batched for up to ``FLUSH_SECONDS``
unless a pruner must answer them, in which case the trainable waits for ``decide``.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
import traceback
from dataclasses import asdict
from typing import Any, Iterator

from runner.checkpoint import SupersededError
from runner.context import (Control, TrialContext, TrialInterrupted, TrialPruned, TrialTask,
                            resolve_trainable)

logger = logging.getLogger("runner.worker")
FLUSH_SECONDS = 0.25
FINAL = frozenset({"done", "pruned", "failed", "interrupted", "superseded"})


class TrialWorker:
    """Runs trials; one at a time per actor, so the trial's resources are the actor's."""

    def __init__(self) -> None:
        self.control = Control()
        self._answers: dict[int, tuple[threading.Event, list]] = {}
        # A spot notice arrives as SIGTERM: the running trial checkpoints at its next step and
        # hands over, losing no step. (Actor constructors run on the process's main thread.)
        signal.signal(signal.SIGTERM, lambda signum, frame: self.control.preempt())

    def where(self) -> dict[str, Any]:
        import ray

        context = ray.get_runtime_context()
        return {"node_id": context.get_node_id(), "ip": ray.util.get_node_ip_address(),
                "pid": os.getpid(),
                "accelerators": context.get_accelerator_ids()}

    def decide(self, number: int, answer: str) -> None:
        """The driver's answer (continue, prune, pause) to the report trial ``number`` waits on;
        a pause is asked before the report returns, so the trial checkpoints at that step."""
        waiting = self._answers.get(number)
        if waiting is not None:
            if answer == "pause":
                self.control.request_interrupt(number, "paused")
            waiting[1].append(answer == "prune")
            waiting[0].set()

    def interrupt(self, number: int, reason: str) -> None:
        """Ask trial ``number`` to checkpoint at its next step boundary and stop (pause, handover)."""
        self.control.request_interrupt(number, reason)

    def run(self, task: dict) -> Iterator[list[dict]]:
        trial = TrialTask(**task)
        events: queue.SimpleQueue = queue.SimpleQueue()
        thread = threading.Thread(target=self._train, args=(trial, events), daemon=True,
                                  name=f"trial-{trial.number}")
        thread.start()
        while True:
            batch = [events.get()]
            deadline = time.monotonic() + FLUSH_SECONDS
            while batch[-1]["type"] not in FINAL and not batch[-1].get("awaits"):
                try:
                    batch.append(events.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            yield batch
            if batch[-1]["type"] in FINAL:
                break
        thread.join()
        self.control.clear(trial.number)

    def _train(self, trial: TrialTask, events: queue.SimpleQueue) -> None:
        objective = set(trial.objective_metrics)

        def emit(event: dict) -> bool:
            awaits = (trial.wait_for_pruning and event["type"] == "report"
                      and not objective.isdisjoint(event["metrics"]))
            if not awaits:
                events.put(event)
                return False
            answer: tuple[threading.Event, list] = (threading.Event(), [])
            self._answers[trial.number] = answer
            events.put(dict(event, awaits=True))
            answer[0].wait()
            del self._answers[trial.number]
            return bool(answer[1][0])

        try:
            fn = resolve_trainable(trial.trainable)
            context = TrialContext(trial, emit, self.control)
            events.put({"type": "placed", **self.where()})
            # Whatever the outcome, the last checkpoint is durable and announced before it.
            try:
                returned = fn(context)
            except BaseException:
                _close_after_error(context)
                raise
            context.close()
            values = context.final_values()
            if isinstance(returned, dict):
                values.update({k: float(v) for k, v in returned.items()})
            events.put({"type": "done", "values": values, "checkpoint": context.final_checkpoint})
        except TrialPruned as exc:
            events.put({"type": "pruned", "reason": str(exc)})
        except TrialInterrupted as exc:
            events.put({"type": "interrupted", "reason": str(exc)})
        except SupersededError as exc:  # another worker runs this trial now: stop, record nothing
            events.put({"type": "superseded", "reason": str(exc)})
        except BaseException as exc:  # the trainable's own error: record it, keep the worker
            events.put({"type": "failed", "error": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc()})


def _close_after_error(context: TrialContext) -> None:
    """Finish the save in flight of a trial that raised: its outcome (pruned, failed, interrupted)
    stands, unless another worker has claimed the trial meanwhile (SupersededError)."""
    try:
        context.close()
    except SupersededError:
        raise
    except Exception:
        logger.warning("trial %d: its last checkpoint failed", context.number, exc_info=True)


def task_payload(task: TrialTask) -> dict:
    return asdict(task)
