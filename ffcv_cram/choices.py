"""The values of the command-line tools' choice options, in a module that imports nothing: the
tools check their arguments before torch is loaded (a bad argument is refused in a fraction of a
second). The modules that act on a choice import their list from here."""

METHODS = ("sgd", "sam", "cram", "cram_nm")
CRAM_METHODS = ("cram", "cram_nm")  # the two-pass compressing methods: CrAM's own options
AMP_MODES = ("none", "bf16", "fp16")
LR_SCHEDULES = ("cosine", "step", "cyclic")
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
GRAPH_COMPILE_MODES = ("reduce-overhead",)  # CUDA-graph replay: training on CUDA only
TRAIN_COMPILE_MODES = COMPILE_MODES + GRAPH_COMPILE_MODES
