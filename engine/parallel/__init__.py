"""More than one process: torchrun's process group (DDP) and FSDP sharding, with their
checkpoints and teardown.

May import engine.speed and every layer below it."""
