"""A user's script with its logger in it and no ``if __name__ == "__main__":`` guard: importing
it (as the logger's process does) starts a sweep. ``python -m tests.unguarded_script RUN_DIR``."""

import sys

from runner import run
from runner.loggers import Logger


class Mine(Logger):
    pass


run({"name": "unguarded", "trainable": "tests.trainables:quadratic",
     "objective": {"metric": "loss"},
     "budget": {"steps": 4, "report_every": 2, "checkpoint_every": 4},
     "search": {"sampler": "random", "seed": 0, "n_trials": 1},
     "hyperparams": {"learning_rate": {"kind": "constant", "value": 0.01}},
     "storage": sys.argv[1] if len(sys.argv) > 1 else "unused",
     "loggers": ["tests.unguarded_script:Mine"]})
