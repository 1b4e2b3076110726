"""Arrow checkpoints of a trial's whole training state: saved atomically, restored exactly.

One Arrow IPC file per checkpoint (schema: README, "Checkpoint schema"). Tensors are rows of raw,
aligned bytes, loaded zero-copy from a private memory map; schedule state dicts are typed rows that
DuckDB or pyarrow can query; every byte is covered by a checksum or the file digest.

    store = CheckpointStore("s3://bucket/sweep/trial-7", keep_last=2, keep_best=1, metric="loss")
    store.save(step, {"model": model.state_dict(), "optim": opt.state_dict()}, metrics={"loss": l})
    ckpt = store.latest(map_location="cuda:0")
"""

from runner.checkpoint._format import SCHEMA_VERSION, CheckpointError
from runner.checkpoint._store import (CHECKPOINT_NAME, Checkpoint, CheckpointStore,
                                      SupersededError, read_checkpoint, read_metadata,
                                      write_checkpoint)

__all__ = ["CHECKPOINT_NAME", "SCHEMA_VERSION", "Checkpoint", "CheckpointError", "CheckpointStore",
           "SupersededError", "read_checkpoint", "read_metadata", "write_checkpoint"]
