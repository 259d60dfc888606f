"""The eval_sparse.py application: checkpoints in, accuracy vs sparsity out.

Built on the pruning library (`ffcv_cram.sparsity`), the loaders (`ffcv_cram.data`) and the shared
runtime (`ffcv_cram.runtime`): `job` checks the arguments and runs the sweep, `points` measures one
point (prune, evaluate, tune batch norm, evaluate), `checkpoints` reads weights in every format we
accept, `report` writes the table, JSON, CSV and plot.
"""
