"""Train state, the jitted and sharded step, and the training loop (evals, checkpoints, logs).

The model is split once into a static graph and a pure dict of parameters; the step is one pure
function compiled with `jax.jit` (explicit in/out shardings, donated state): no per-step graph
walks.
"""

import contextlib
import functools
import logging
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from clu import metrics as clu_metrics
from flax import nnx
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from focusclip_jax import (
    config_checks,
    evaluators,
    flops,
    logs,
    losses,
    optim,
    run_record,
    sharding,
    targets,
    weights,
    workdir_lock,
)
from focusclip_jax.checkpoint import Checkpointer
from focusclip_jax.logs import MetricWriter
from focusclip_jax.models import layers
from focusclip_jax.setup import ModelSetup
from input_pipeline import device_crop, heatmaps, pipeline, sources
from input_pipeline.errors import InputDataError, config_errors
from input_pipeline.tokenizers import Tokenizer


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any  # pure nested dict of arrays (nnx.to_pure_dict of the model's nnx.Param state)
    opt_state: Any
    nonfinite_count: jax.Array  # steps whose loss or gradient was not finite (update skipped)
    first_nonfinite_step: jax.Array  # -1 while every step has been finite


def project_to_bounds(params: Any, bounds: Mapping[tuple[str, ...], tuple[float, float]]) -> Any:
    """Clip bounded parameters back into their box after an update."""
    if not bounds:
        return params
    flat = flatten_dict(params)
    for path, (lo, hi) in bounds.items():
        flat[path] = jnp.clip(flat[path], lo, hi)
    return unflatten_dict(flat)


def needed_modalities(pairs: Any) -> tuple[str, ...]:
    return tuple(sorted({m for pair in pairs for m in pair}))


def embed_batch(
    params: Any,
    batch: Mapping[str, jax.Array],
    *,
    graphdef: nnx.GraphDef,
    modalities: tuple[str, ...],
    heatmap: heatmaps.HeatmapSettings,
    rng: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """The batch's embeddings of `modalities`; heatmaps are rendered here, on the device."""
    model = nnx.merge(graphdef, params)
    images = batch["image"].astype(jnp.float32) / 255.0
    focus_maps = None
    if "focused" in modalities:
        focus_maps = heatmaps.render_heatmaps(
            batch["keypoints"],
            batch["visible"],
            batch["person_mask"],
            images.shape[1],
            images.shape[2],
            heatmap,
        )
    return model.embed(
        images=images,
        heatmaps=focus_maps,
        tokens=batch["tokens"],
        mask=batch["mask"],
        modalities=modalities,
        rng=rng,
    )


def contrastive_loss(
    embeddings: Mapping[str, jax.Array], params: Any, loss_config: ml_collections.ConfigDict
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The configured loss over the pairs, its scalars read from the parameters."""
    loss = losses.create(loss_config)
    return losses.focusclip_loss(
        embeddings,
        losses.scalars_of(params, loss),
        pairs=[tuple(p) for p in loss_config.pairs],
        weights=loss_config.weights,
        loss=loss,
    )


def compute_loss(
    params: Any,
    batch: Mapping[str, jax.Array],
    *,
    graphdef: nnx.GraphDef,
    loss_config: ml_collections.ConfigDict,
    heatmap: heatmaps.HeatmapSettings,
    rng: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The FocusCLIP objective on a batch. `rng`: the key of the step's dropout (none: no
    dropout)."""
    embeddings = embed_batch(
        params,
        batch,
        graphdef=graphdef,
        modalities=needed_modalities(loss_config.pairs),
        heatmap=heatmap,
        rng=rng,
    )
    return contrastive_loss(embeddings, params, loss_config)


def accumulated_loss_and_grads(
    params: Any,
    batch: Mapping[str, jax.Array],
    *,
    accumulate_steps: int,
    graphdef: nnx.GraphDef,
    loss_config: ml_collections.ConfigDict,
    heatmap: heatmaps.HeatmapSettings,
    rng: jax.Array | None = None,
) -> tuple[tuple[jax.Array, dict[str, jax.Array]], Any]:
    """The loss over the whole batch and its exact gradient, the towers run on
    `accumulate_steps` chunks at a time (GradCache, open_clip's `--accum-freq`): every chunk's
    embeddings without gradients, then the loss and its gradient with respect to all the
    embeddings (every negative of the whole batch), then each chunk again, pulling its share of
    that gradient back to the parameters. Activations are held for one chunk at a time; the
    towers run forward twice. Chunk k takes rows k, k + K, ... (each chunk stays split over the
    devices, and the chunks' embeddings go back in the batch's order without moving); chunk k's
    dropout draws from the k-th key split from the step's."""
    steps = accumulate_steps
    chunked = jax.tree.map(
        lambda x: x.reshape(x.shape[0] // steps, steps, *x.shape[1:]).swapaxes(0, 1), batch
    )
    keys = None if rng is None else jax.random.split(rng, steps)
    embed = functools.partial(
        embed_batch,
        graphdef=graphdef,
        modalities=needed_modalities(loss_config.pairs),
        heatmap=heatmap,
    )

    def forward(_: None, xs: tuple) -> tuple[None, dict[str, jax.Array]]:
        chunk, key = xs
        return None, jax.lax.stop_gradient(embed(params, chunk, rng=key))

    _, per_chunk = jax.lax.scan(forward, None, (chunked, keys))
    whole = jax.tree.map(lambda e: e.swapaxes(0, 1).reshape(-1, e.shape[-1]), per_chunk)
    (loss, per_pair), (embedding_grads, grads) = jax.value_and_grad(
        lambda e, p: contrastive_loss(e, p, loss_config), argnums=(0, 1), has_aux=True
    )(whole, params)
    cotangents = jax.tree.map(
        lambda g: g.reshape(-1, steps, g.shape[-1]).swapaxes(0, 1), embedding_grads
    )

    def backward(total: Any, xs: tuple) -> tuple[Any, None]:
        chunk, key, cotangent = xs
        _, pull_back = jax.vjp(lambda p: embed(p, chunk, rng=key), params)
        return jax.tree.map(jnp.add, total, pull_back(cotangent)[0]), None

    grads, _ = jax.lax.scan(backward, grads, (chunked, keys, cotangents))
    return (loss, per_pair), grads


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    loss_config: ml_collections.ConfigDict,
    bounds: Mapping[tuple[str, ...], tuple[float, float]],
    heatmap: heatmaps.HeatmapSettings,
    image_size: int = 0,
    seed: int = 0,
    accumulate_steps: int = 1,
    frozen: tuple[str, ...] = (),
    param_shardings: Any = None,
    update_shardings: Any = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One update on a global batch; returns the new state and a flat dict of scalar metrics.
    Dropout draws from the seed folded with the step: a resumed run draws what it would have.
    `accumulate_steps` > 1 runs the towers on that many chunks of the batch at a time, with the
    whole batch's gradient (`accumulated_loss_and_grads`). `frozen` parameters' gradients are left
    out of the logged norm and the finiteness check (and so never computed). `update_shardings`
    (per parameter, those of its optimiser state; with `param_shardings`, the parameters' own) is
    where the gradients, the update and the new parameters are computed before the parameters
    return to their own shardings. A batch of stored images (`device_crop`) is cropped to
    `image_size` first."""
    batch = device_crop.crop_batch(batch, image_size)
    options = dict(
        graphdef=graphdef,
        loss_config=loss_config,
        heatmap=heatmap,
        rng=jax.random.fold_in(jax.random.key(seed), state.step),
    )
    if accumulate_steps > 1:
        (loss, per_pair), grads = accumulated_loss_and_grads(
            state.params, batch, accumulate_steps=accumulate_steps, **options
        )
    else:
        loss_fn = functools.partial(compute_loss, batch=batch, **options)
        (loss, per_pair), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    if frozen:
        mask = optim.frozen_mask(grads, frozen)
        grads = jax.tree.map(lambda g, f: jnp.zeros_like(g) if f else g, grads, mask)
    old_params = state.params
    if update_shardings is not None:
        # Summed whole first: constrained to the slices alone, XLA may gather activations over
        # the batch to compute each slice of a weight's gradient instead.
        grads = jax.lax.with_sharding_constraint(grads, param_shardings)
        grads = jax.lax.with_sharding_constraint(grads, update_shardings)
        old_params = jax.lax.with_sharding_constraint(old_params, update_shardings)
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, old_params)
    params = project_to_bounds(optax.apply_updates(old_params, updates), bounds)

    # A non-finite step leaves parameters and optimiser state untouched (checkpoints never hold
    # NaN); the loop stops on it, naming the step, at the next metrics fetch.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep_if_finite = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    first_bad = jnp.where(
        (state.first_nonfinite_step < 0) & ~finite, state.step, state.first_nonfinite_step
    )
    new_state = TrainState(
        step=state.step + 1,
        params=keep_if_finite(params, old_params),
        opt_state=keep_if_finite(opt_state, state.opt_state),
        nonfinite_count=state.nonfinite_count + (~finite).astype(jnp.int32),
        first_nonfinite_step=first_bad,
    )
    contrastive = losses.create(loss_config)
    metrics = {
        "loss": loss,
        **per_pair,
        "alpha": params["alpha"],
        **contrastive.metrics(losses.scalars_of(params, contrastive)),
        "grad_norm": grad_norm,
        "learning_rate": schedule(state.step),
        "nonfinite_count": new_state.nonfinite_count,
        "first_nonfinite_step": first_bad,
    }
    return new_state, metrics


def _state_shardings(abstract_opt_state: Any, abstract_params: Any, other: Any) -> Any:
    """The optimiser state's shardings: a leaf that ends with a parameter's path and has its
    shape (a moment, a trace) is sharded as that parameter; counters and the rest: `other`.
    By path, so states that leave frozen parameters out (`optax.MaskedNode`) are covered too."""
    by_path = {
        tuple(key.key for key in path): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_params)
    }

    def sharding_of(path: tuple[Any, ...], leaf: Any) -> Any:
        keys: list[Any] = []
        for key in reversed(path):  # the trailing dict keys: the parameter's path, if any
            if not isinstance(key, jax.tree_util.DictKey):
                break
            keys.insert(0, key.key)
        for start in range(len(keys)):
            param = by_path.get(tuple(keys[start:]))
            if param is not None and param.shape == leaf.shape:
                return param.sharding
        return other

    return jax.tree_util.tree_map_with_path(sharding_of, abstract_opt_state)


class Trainer:
    """A `ModelSetup` with the optimiser, the train state's shardings and the jitted step."""

    def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh, *, vocab_size: int):
        """Builds (and so checks, each its own options) everything the step needs: the model,
        loss, optimiser and heatmaps, and the evaluators' entries; a rule broken is a
        `ConfigError` naming its key. Nothing is compiled. (The data's own options are checked
        with its files: `pipeline.check_input_files`.)"""
        self.config = config
        frozen = tuple(config.train.frozen)
        with config_errors():  # the parts that need no model first: their checks cost nothing
            self.tx, self.schedule = optim.make_optimizer(
                config.optimizer, config.train.num_steps, frozen
            )
            heatmap = heatmaps.HeatmapSettings.from_config(
                config.heatmaps, sources.skeleton_of(config.data.name)
            )
            evaluators.check_types(config)
            if config.train.on_nonfinite not in NONFINITE_POLICIES:
                raise ValueError(
                    f"config train.on_nonfinite={config.train.on_nonfinite!r}: expected one of "
                    f"{NONFINITE_POLICIES}"
                )
        self.setup = ModelSetup.create(config, mesh, vocab_size=vocab_size)
        abstract_pure = self.setup.abstract_params
        with config_errors():
            optim.check_frozen(abstract_pure, frozen)
        with config_errors():
            self.optimizer_state = sharding.optimizer_state_layout(
                config.sharding.get("optimizer_state", "auto"), mesh.devices.flat[0].platform
            )
        update_shardings = None
        if self.optimizer_state == "data":
            update_shardings = jax.tree.map(
                lambda leaf: sharding.split_over_data(leaf.sharding, leaf.shape), abstract_pure
            )
        abstract_update = jax.tree.map(
            lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
            abstract_pure,
            self.setup.param_shardings if update_shardings is None else update_shardings,
        )
        abstract_opt_state = jax.eval_shape(self.tx.init, abstract_pure)
        everywhere = sharding.replicated(mesh)
        opt_shardings = _state_shardings(abstract_opt_state, abstract_update, everywhere)
        self.state_shardings = TrainState(
            step=everywhere,
            params=self.setup.param_shardings,
            opt_state=opt_shardings,
            nonfinite_count=everywhere,
            first_nonfinite_step=everywhere,
        )
        self.abstract_state = jax.tree.map(
            lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
            jax.eval_shape(self._init_state),
            self.state_shardings,
        )
        step = functools.partial(
            train_step,
            graphdef=self.setup.graphdef,
            tx=self.tx,
            schedule=self.schedule,
            loss_config=config.loss,
            bounds=self.setup.bounds,
            heatmap=heatmap,
            image_size=config.model.image_size,
            seed=config.seed,
            accumulate_steps=config.train.accumulate_steps,
            frozen=frozen,
            param_shardings=self.setup.param_shardings,
            update_shardings=update_shardings,
        )
        self.step = jax.jit(
            sharding.traced_on(mesh, step),
            in_shardings=(self.state_shardings, sharding.batch_sharding(mesh)),
            out_shardings=(self.state_shardings, everywhere),
            donate_argnums=(0,),
        )

    def _init_state(self, params: Any = None) -> TrainState:
        if params is None:
            params = nnx.to_pure_dict(nnx.state(self.setup.new_model(), nnx.Param))
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=self.tx.init(params),
            nonfinite_count=jnp.zeros((), jnp.int32),
            first_nonfinite_step=jnp.full((), -1, jnp.int32),
        )

    def init_state(self) -> TrainState:
        """The initial state, created directly in its shardings (never whole on one device).

        `config.init` names checkpoints for the towers: they are read on the host and go
        straight to their shards (`focusclip_jax.weights`).
        """
        init = self.config.get("init")
        if not weights.requested(init):
            return jax.jit(self._init_state, out_shardings=self.state_shardings)()
        params = weights.pretrained_params(init, self.setup.new_model, self.setup.param_shardings)
        return jax.jit(self._init_state, out_shardings=self.state_shardings, donate_argnums=0)(
            params
        )


NONFINITE_POLICIES = ("stop", "skip")


class NonFiniteLossError(InputDataError, FloatingPointError):
    """The loss or gradient went NaN/Inf; parameters were kept at their last finite values. Told
    like a user's mistake (one line, exit 2): the cure is in the config or the data."""


def check_finite(metrics: Mapping[str, float], policy: str = "stop") -> None:
    """`train.on_nonfinite`: `stop` raises naming the first bad step; `skip` logs the count.

    Either way the bad updates were already skipped inside the step.
    """
    if metrics["nonfinite_count"] == 0:
        return
    if policy == "skip":
        logging.warning(
            "%d non-finite step(s) skipped so far (first at step %d)",
            int(metrics["nonfinite_count"]),
            int(metrics["first_nonfinite_step"]),
        )
        return
    raise NonFiniteLossError(
        f"non-finite loss or gradient at step {int(metrics['first_nonfinite_step'])}; "
        "the update was skipped and the last checkpoint holds finite parameters"
    )


# Step metrics logged as their value at the window's last step, not averaged over the window.
LAST_VALUE_METRICS = (
    "nonfinite_count",
    "first_nonfinite_step",
    "learning_rate",
    "alpha",
    "temperature",
)


class MetricWindow:
    """The step metrics of one logging window, accumulated on the device as `clu.metrics`: the
    mean over the window's steps, or the last value (`LAST_VALUE_METRICS`). One jitted merge per
    step (no host sync), one transfer per window. The names come from the run's loss and pairs,
    so the clu `Collection` is made for them at the first step."""

    def __init__(self) -> None:
        self._names: dict[str, str] = {}  # Collection field (an identifier) → metric name
        self._merge: Callable | None = None
        self._window: clu_metrics.Collection | None = None

    def _create(self, names: Iterable[str]) -> None:
        fields = {}
        for name in sorted(names):
            field = re.sub(r"\W", "_", name)
            if field in self._names:
                raise ValueError(f"metrics {self._names[field]!r} and {name!r} share one field")
            kind = clu_metrics.LastValue if name in LAST_VALUE_METRICS else clu_metrics.Average
            self._names[field], fields[field] = name, kind.from_output(name)
        collection = clu_metrics.Collection.create(**fields)
        self._empty = collection.empty
        self._merge = jax.jit(
            lambda window, metrics: window.merge(collection.single_from_model_output(**metrics))
        )

    def add(self, metrics: Mapping[str, jax.Array]) -> None:
        if self._merge is None:
            self._create(metrics)
        if self._window is None:
            self._window = self._empty()
        self._window = self._merge(self._window, dict(metrics))

    def pop(self) -> dict[str, float]:
        """The window's values (waits for the device) and a new window."""
        computed = jax.device_get(self._window.compute())
        self._window = None
        return {self._names[field]: float(value) for field, value in computed.items()}


class PreemptionWatcher:
    """SIGTERM (how TPU VMs, SLURM and cloud schedulers preempt) → stop at a step boundary.

    The loop then saves a checkpoint and returns; rerunning with the same workdir resumes. With
    several processes the signal may reach only some of them, so JAX's preemption service (started
    by `jax.distributed.initialize`, which catches SIGTERM itself) picks one step for all of them.
    On one process a Python handler does it; only the main thread can install one.
    """

    def __init__(self) -> None:
        self._requested = False
        self._previous = None
        self._multi_process = jax.process_count() > 1
        if not self._multi_process and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: object) -> None:
        del signum, frame
        self._requested = True

    def reached(self, step: int) -> bool:
        """Whether to save and stop after `step`; every process must call this at every step."""
        if self._multi_process:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._requested

    def release(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def _eta(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"


def build_checked(
    config: ml_collections.ConfigDict, workdir: str | Path
) -> tuple[Tokenizer, Trainer]:
    """Everything a training checks before it writes anything, in the order of their cost: the
    config's own rules, its files (and the data's options), the tokenizer (fitted in memory),
    every component built. A user's mistake is an `InputDataError` (a `ConfigError` naming the
    key); nothing is created, the workdir included. Returns the tokenizer and the trainer."""
    mesh = config_checks.validated_mesh(config)
    with config_errors():
        init_files = weights.required_files(config.get("init"))
    pipeline.check_input_files(config, also=init_files, workdir=str(workdir))
    weights.check_readable(config.get("init"))
    with config_errors():
        tokenizer = pipeline.create_tokenizer(config, workdir=str(workdir))
    return tokenizer, Trainer(config, mesh, vocab_size=tokenizer.vocab_size)


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | Path, *, takeover_lock: bool = False
) -> dict[str, float]:
    """Train to `config.train.num_steps` (resuming from `workdir`), evaluate, return the results.

    Everything is checked before anything is written (`build_checked`); then the workdir's
    lock is taken (`workdir_lock`: one training writes a workdir at a time) and the run
    recorded. `workdir` may be a local folder or a bucket URL such as gs://bucket/run (through
    etils.epath).
    """
    tokenizer, trainer = build_checked(config, workdir)
    root = run_record.workdir_path(workdir)
    # Every exit, errors included, closes what was opened, last first: the signal handler, pending
    # checkpoint saves (waited for), the data workers, the metric writers, the workdir's lock.
    with contextlib.ExitStack() as opened:
        opened.enter_context(workdir_lock.hold(root, takeover=takeover_lock))
        run_record.write(str(workdir), config, tokenizer)
        logging.info("%s", logs.write_parameter_table(trainer.setup.abstract_params, root))
        writer = MetricWriter(workdir)
        opened.callback(writer.close)
        train_iter = pipeline.train_iterator(config, tokenizer)
        opened.callback(train_iter.close)
        checkpointer = Checkpointer(workdir, config.checkpoint)
        opened.callback(checkpointer.close)
        preemption = PreemptionWatcher()
        opened.callback(preemption.release)
        writer.write_hparams(flatten_dict(config.to_dict(), sep="."))
        state = checkpointer.restore(trainer.abstract_state, train_iter, config)
        state = state or trainer.init_state()
        with config_errors():
            due_to_run = evaluators.create(config, trainer.setup, tokenizer)
        return _train_loop(
            config, trainer, state, train_iter, due_to_run, writer, checkpointer, preemption
        )


def _mfu_of_one_step_per_s(config: ml_collections.ConfigDict, mesh: Mesh) -> float | None:
    """The MFU of one step per second: the step's analytic FLOPs (`flops`) over the mesh's dense
    peak; None where the devices have no listed peak (a CPU) or a part declares no FLOP count."""
    chip = targets.chip_for_device_kind(mesh.devices.flat[0].device_kind)
    if chip is None:
        return None
    try:
        step_flops = flops.train_step_flops(config)["total"]
    except ValueError:
        return None
    dtype = layers.compute_dtype(config.model.dtype, chip.platform).name  # 'auto' resolved
    return step_flops / (targets.peak_flops(chip, dtype) * mesh.devices.size)


def _progress_line(step: int, total: int, summary: Mapping[str, float], step_s: float) -> str:
    """What a user needs to trust the run, in one line: the losses (total and per pair), alpha,
    temperature, learning rate, gradient norm, throughput, data wait, MFU where known, ETA."""
    pairs = " ".join(f"{k[5:]}={v:.4f}" for k, v in summary.items() if k.startswith("loss/"))
    parts = [
        f"step {step}/{total}",
        f"loss {summary['loss']:.4f} ({pairs})",
        f"alpha {summary['alpha']:.3f}",
        f"temperature {summary['temperature']:.4g}" if "temperature" in summary else "",
        f"lr {summary['learning_rate']:.3g}",
        f"grad norm {summary['grad_norm']:.3g}",
        f"{summary['images_per_s']:.1f} img/s",
        f"data wait {100 * summary['data_wait_fraction']:.0f}%",
        f"MFU {100 * summary['mfu']:.1f}%" if "mfu" in summary else "",
        f"ETA {_eta((total - step) * step_s)}",
    ]
    return " | ".join(part for part in parts if part)


def _compile(trainer: Trainer, state: TrainState, batch: Any) -> jax.stages.Compiled:
    """The step compiled for the run's shapes (a minute for the paper's model, longer on a
    CPU): said before, timed after, and left out of the first window's images per second."""
    logging.info("Compiling the training step...")
    start = time.perf_counter()
    compiled = trainer.step.lower(state, batch).compile()
    logging.info("Training step compiled in %.1f s", time.perf_counter() - start)
    return compiled


def _train_loop(
    config: ml_collections.ConfigDict,
    trainer: Trainer,
    state: TrainState,
    train_iter: Any,
    evaluations: list[evaluators.Evaluator],
    writer: MetricWriter,
    checkpointer: Checkpointer,
    preemption: PreemptionWatcher,
) -> dict[str, float]:
    """Steps to `train.num_steps` with logging, evaluation, checkpoints and preemption."""
    mesh = trainer.setup.mesh
    batch_rows = sharding.batch_sharding(mesh)
    step = int(state.step)
    total = config.train.num_steps
    if step > total:  # a rerun with fewer steps than the workdir's run took: not silently
        logging.warning(
            "The workdir's checkpoint is at step %d, past config train.num_steps=%d: nothing "
            "to train; the restored model is evaluated as it is",
            step,
            total,
        )
    else:
        logging.info("Training steps %d → %d on %s", step, total, dict(mesh.shape))
    window = MetricWindow()
    window_start, data_wait, window_steps = time.perf_counter(), 0.0, 0
    results: dict[str, float] = {}
    run_step = None
    mfu_of_one_step_per_s = _mfu_of_one_step_per_s(config, mesh)
    while step < total:
        fetch_start = time.perf_counter()
        batch = pipeline.to_global_arrays(next(train_iter), batch_rows)
        data_wait += time.perf_counter() - fetch_start
        if run_step is None:
            run_step = _compile(trainer, state, batch)
            window_start, data_wait = time.perf_counter(), 0.0
        state, metrics = run_step(state, batch)
        step += 1
        window_steps += 1
        window.add(metrics)

        if step % config.log_every_steps == 0 or step == total:
            summary = window.pop()  # waits for the device: the loop's only sync
            check_finite(summary, config.train.get("on_nonfinite", "stop"))
            elapsed = time.perf_counter() - window_start
            images_per_s = window_steps * config.train.batch_size / elapsed
            summary |= {
                "images_per_s": images_per_s,
                "images_per_s_per_device": images_per_s / mesh.devices.size,
                "data_wait_fraction": data_wait / elapsed,
            }
            if mfu_of_one_step_per_s is not None:
                summary["mfu"] = window_steps / elapsed * mfu_of_one_step_per_s
            writer.write(step, summary, echo=False)
            logging.info("%s", _progress_line(step, total, summary, elapsed / window_steps))
            window_start, data_wait, window_steps = time.perf_counter(), 0.0, 0

        found = evaluators.run_due(evaluations, state.params, step, total).metrics
        if found:
            results |= found
            writer.write(step, {f"eval/{k}": v for k, v in found.items()})
        saved = checkpointer.save(step, state, train_iter, force=step == total)
        if saved:
            logging.info("Checkpoint of step %d queued", step)
        if preemption.reached(step) and step < total:
            if not saved:
                checkpointer.save(step, state, train_iter, force=True)
            logging.warning(
                "Preempted: stopping after the checkpoint of step %d; rerun resumes", step
            )
            break
    else:
        if not results and evaluations:  # resumed at the end: evaluate what was restored
            results = evaluators.run_due(evaluations, state.params, total, total).metrics
    return results
