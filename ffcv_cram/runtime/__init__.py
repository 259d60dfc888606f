"""What the trainer and the pruning sweep both run on: device choice, the torchrun process group
(`dist`, `group_store`) and evaluation (`evaluate`). Below both applications; imports neither."""
