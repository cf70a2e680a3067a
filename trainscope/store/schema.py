"""The run-store format: table names, columns and dtypes (see docs/run-store.md).

Bump SCHEMA_VERSION on any incompatible change; the reader refuses newer majors.
"""
from __future__ import annotations

SCHEMA_VERSION = "1.1"  # 1.1: attempt column, chunk manifest with checksums; issue-8 probe evidence (pre-clip norms,
#                         batch targets, parameter status, eval forwards, foreign weights)

# Each table is a folder of Parquet chunks: RUN/<table>/r<rank>-a<attempt>-<seq>-p<pid>.parquet
# (schema 1.0: r<rank>-<seq>.parquet), listed with their SHA-256 in RUN/chunks-r<rank>.json.
# pandas reads a whole table with pd.read_parquet("RUN/<table>").
SCALARS = "scalars"
LAYERS = "layers"
EVENTS = "events"
INIT = "init"
TABLES = (SCALARS, LAYERS, EVENTS, INIT)

META_FILE = "meta.json"  # rank 0; other ranks write meta-r<rank>.json

# column -> pandas dtype
SCALAR_COLUMNS: dict[str, str] = {
    "step": "int64",
    "name": "string",
    "value": "float64",
    "epoch": "float64",  # NaN where unknown
    "rank": "int32",
    "time": "float64",  # seconds since the probe started
    "attempt": "int32",  # which run of the script wrote the row (0, 1, ...; see docs/run-store.md)
}

# Stat columns are NaN where they do not apply to a kind.
LAYER_STATS = (
    "norm",  # L2 norm of the tensor
    "mean",
    "std",
    "max_abs",
    "frac_zero",  # fraction of elements exactly 0
    "nonfinite",  # count of NaN/Inf elements
    "numel",
    "frac_dead",  # activation: fraction of units <= 0 for the whole batch
    "frac_saturated",  # activation of bounded nonlinearities (sigmoid/tanh/softmax)
    "ratio",  # update: ||dW|| / ||W||
)
LAYER_COLUMNS: dict[str, str] = {
    "step": "int64",
    "layer": "string",  # module name as in model.named_modules()
    "kind": "string",  # grad | activation | weight | update | grad_norm
    "module_type": "string",  # e.g. Linear, ReLU
    "order": "int32",  # forward execution order (input -> output), -1 if unknown
    **{s: "float64" for s in LAYER_STATS},
    "rank": "int32",
    "attempt": "int32",
}
LAYER_KINDS = ("grad", "activation", "weight", "update", "grad_norm")  # grad_norm: only norm and numel

EVENT_COLUMNS: dict[str, str] = {
    "step": "int64",
    "kind": "string",  # see docs/run-store.md for the event kinds
    "layer": "string",  # "" when not about a layer
    "value": "float64",
    "detail": "string",  # JSON object with kind-specific fields
    "rank": "int32",
    "attempt": "int32",
}

INIT_COLUMNS: dict[str, str] = {
    "layer": "string",
    "param": "string",  # parameter name, e.g. "0.weight"
    "module_type": "string",
    "order": "int32",
    "fan_in": "int64",
    "fan_out": "int64",
    "var": "float64",
    "mean": "float64",
    "nonlinearity": "string",  # the nonlinearity that follows: relu, tanh, sigmoid, linear, ...
    "target_scheme": "string",  # he | xavier
    "target_var": "float64",
    "ratio": "float64",  # var / target_var
    "scheme": "string",  # the scheme that best explains var (e.g. torch_default, he_normal)
    "normalized_after": "bool",  # a normalization layer sits between it and the nonlinearity
    "rank": "int32",
    "attempt": "int32",
}

COLUMNS = {SCALARS: SCALAR_COLUMNS, LAYERS: LAYER_COLUMNS, EVENTS: EVENT_COLUMNS, INIT: INIT_COLUMNS}

# Event kinds the probe writes (detail fields in docs/run-store.md).
EVENT_KINDS = (
    "nonfinite",  # first NaN/Inf: layer, detail.tensor in {loss, activation, grad, weight}
    "criterion_input",  # what reached the loss: detail.{criterion, producer, is_prob, is_log_prob, num_classes, ...}
    "criterion_input_eval",  # the same facts for the first grad-disabled (validation) call of each loss module
    "model_output",  # last op of the model output: detail.{producer, min, max, row_sum_mean}
    "input_scale",  # first-layer input statistics: detail.{mean, std, min, max, feature_std_max}
    "batchnorm_batch",  # smallest batch a BatchNorm layer saw in train mode: value, layer
    "mode",  # model.training changed: value 1 train / 0 eval (at the step it was seen)
    "epoch",  # epoch boundary: value = epoch
    "hook_error",  # a probe hook failed and disabled itself: detail.{hook, error}
    "run",  # lifecycle: detail.{what: start|close}
    "eval_forward",  # grad-disabled forward of the watched model: value 1.0 if model.training; detail.{training,
    #                  has_dropout, has_batchnorm, step}; the first one and each change of the training flag;
    #                  also (grad_enabled: true, forwards: N) for N>=2 train-mode forwards no backward reached
    "parameter_status",  # after step 2 and at close: detail.{never_grad, all_zero_grad, not_in_optimizer,
    #                      unchanged: [parameter names], optimizer_foreign, n_trainable: counts}
    "anomaly_capture",  # the loss or the global grad norm jumped (> 10x its running median, or NaN/Inf): the steps
    #                     recorded in full for it; value = the value, detail.{trigger, metric, value, median, factor,
    #                     nonfinite, steps, late} (trainscope/probe/anomaly.py)
    "foreign_weight",  # first forward: a weight op used a grad-requiring leaf that is not a model parameter:
    #                    detail.{op, shapes, count}
)

# Scalar names the probe writes itself (user metrics keep their own names).
LR_PREFIX = "lr/"  # lr/<group index>
MOMENTUM_PREFIX = "momentum/"  # momentum or beta1 per group
GRAD_NORM = "grad_norm"  # global L2 norm of all gradients before clipping (after GradScaler unscale), tied params once
GRAD_NORM_CLIPPED = "grad_norm_clipped"  # the same norm after clip_grad_norm_, on steps where clipping was seen
CLIP_MAX_NORM = "clip/max_norm"  # max_norm passed to clip_grad_norm_ (steps where it was called)
LOOP_CLIPPED = "loop/clipped"  # 1.0 if the step's pre-clip norm exceeded max_norm (the clip was active), else 0.0
LOOP_TRAINING = "loop/training"  # 1.0 if the model was in train mode at optimizer.step
LOOP_GRAD_RESET = "loop/grad_reset"  # 1.0 if .grad was reset (None/zero) before the first backward of the step
LOOP_BACKWARDS = "loop/backwards"  # backward passes since the previous optimizer step
LOOP_SCHEDULER_STEPS = "loop/scheduler_steps"  # cumulative scheduler.step() calls at this optimizer step
LOOP_BATCH_SIZE = "loop/batch_size"  # batch size of the model input
BATCH_TARGET_MODE_FRAC = "batch/target_mode_frac"  # fraction of the batch's class targets equal to its commonest class
BATCH_TARGET_MODE = "batch/target_mode"  # that class (first 200 steps and recorded steps)
BATCH_TARGET_MEAN = "batch/target_mean"  # mean of float targets (first 200 steps and recorded steps)
# Prefixes of scalar names the probe writes itself (not user metrics).
PROBE_PREFIXES = (LR_PREFIX, MOMENTUM_PREFIX, "loop/", "batch/", "clip/")
