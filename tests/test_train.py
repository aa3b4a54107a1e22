"""The sharded training step: 8 devices vs 1, shardings, bounds, gradients, non-finite steps."""

import functools
import json
import logging
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.traverse_util import flatten_dict
from jax.sharding import PartitionSpec

from focusclip_jax import evaluators, losses, optim, sharding, train, workdir_lock
from focusclip_jax.models import towers
from focusclip_jax.setup import ModelSetup
from input_pipeline import heatmaps, pipeline, sources, tokenizers
from input_pipeline.heatmaps import HeatmapSettings
from tests.conftest import tiny_config

PARTS = heatmaps.PAPER  # MPII's parts, the tiny configs' skeleton


def _batch(config) -> dict[str, np.ndarray]:
    tokenizer = pipeline.create_tokenizer(config)
    return next(pipeline.train_iterator(config, tokenizer)), tokenizer.vocab_size


def _run_steps(config, mesh, batch, vocab_size, steps):
    trainer = train.Trainer(config, mesh, vocab_size=vocab_size)
    state = trainer.init_state()
    initial = jax.device_get(state.params)
    global_batch = pipeline.to_global_arrays(batch, sharding.batch_sharding(mesh))
    losses = []
    for _ in range(steps):
        state, metrics = trainer.step(state, global_batch)
        losses.append(float(metrics["loss"]))
    return trainer, state, initial, losses


@pytest.fixture(scope="module")
def eight_and_one():
    """Two steps of the same batch on a 4×2 (data × fsdp) mesh of 8 devices and on 1 device.

    With the paper's NT-Xent, whose 2B-sample negatives span every shard of the batch.
    """
    config = tiny_config()
    config.loss.kind = "nt_xent"
    batch, vocab_size = _batch(config)
    mesh8 = sharding.create_mesh({"data": 4, "fsdp": 2})
    mesh1 = sharding.create_mesh({"data": 1, "fsdp": 1})
    return (
        _run_steps(config, mesh8, batch, vocab_size, 2),
        _run_steps(config, mesh1, batch, vocab_size, 2),
    )


def test_eight_devices_match_one_device(eight_and_one) -> None:
    """Same losses (rtol 1e-5) and same updated parameters (atol 1e-5) on 8 devices as on 1."""
    (_, state8, init8, losses8), (_, state1, init1, losses1) = eight_and_one
    np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
    for (path, a), (_, b) in zip(
        sorted(flatten_dict(init8).items()), sorted(flatten_dict(init1).items()), strict=True
    ):
        np.testing.assert_array_equal(a, b, err_msg=str(path))  # same initialisation
    params8 = flatten_dict(jax.device_get(state8.params))
    params1 = flatten_dict(jax.device_get(state1.params))
    assert params8.keys() == params1.keys()
    moved = 0
    for path in params8:
        np.testing.assert_allclose(params8[path], params1[path], atol=1e-5, err_msg=str(path))
        moved += not np.allclose(params1[path], flatten_dict(init1)[path])
    assert moved > len(params1) // 2  # the step really updated parameters
    assert losses1[1] < losses1[0]


def test_parameters_and_batch_carry_expected_shardings(eight_and_one) -> None:
    (trainer, state8, _, _), _ = eight_and_one
    params = flatten_dict(state8.params)
    # Logical 'embed' → mesh 'fsdp': the patch embedding kernel [patch, embed] splits its columns.
    patch_kernel = next(v for k, v in params.items() if "patch_embed" in k and k[-1] == "kernel")
    assert patch_kernel.sharding.spec == PartitionSpec(None, "fsdp")
    assert len(patch_kernel.addressable_shards) == 8
    assert patch_kernel.addressable_shards[0].data.shape[1] == patch_kernel.shape[1] // 2
    assert params[("alpha",)].sharding.spec == PartitionSpec()
    # Optimiser state follows the parameters.
    moments = [
        leaf
        for leaf in jax.tree.leaves(state8.opt_state)
        if getattr(leaf, "shape", None) == patch_kernel.shape
    ]
    assert moments and all(m.sharding.spec == PartitionSpec(None, "fsdp") for m in moments)
    assert sharding.batch_sharding(trainer.setup.mesh).spec == PartitionSpec(("data", "fsdp"))


def test_alpha_moves_and_stays_in_bounds(eight_and_one) -> None:
    _, (trainer, state1, init1, _) = eight_and_one
    alpha = float(state1.params["alpha"])
    assert 0.0 <= alpha <= 1.0 and alpha != pytest.approx(float(init1["alpha"]), abs=1e-7)
    assert trainer.setup.bounds == {("alpha",): (0.0, 1.0), ("logit_scale",): (0.0, math.log(100))}
    projected = train.project_to_bounds(
        {"alpha": jnp.asarray(1.7), "logit_scale": jnp.asarray(9.0), "w": jnp.asarray(-5.0)},
        trainer.setup.bounds,
    )
    assert float(projected["alpha"]) == 1.0
    assert float(projected["logit_scale"]) == pytest.approx(math.log(100))
    assert float(projected["w"]) == -5.0


def test_gradients_reach_alpha_and_temperature() -> None:
    config = tiny_config("modern")  # learnable temperature
    batch, vocab_size = _batch(config)
    trainer = train.Trainer(config, sharding.create_mesh({"data": 1}), vocab_size=vocab_size)
    params = nnx.to_pure_dict(nnx.state(trainer.setup.new_model(), nnx.Param))

    def loss(p, loss_config=config.loss, heatmap=PARTS):
        return train.compute_loss(
            p, batch, graphdef=trainer.setup.graphdef, loss_config=loss_config, heatmap=heatmap
        )[0]

    parts_loss, grads = jax.jit(jax.value_and_grad(loss))(params)
    assert abs(float(grads["alpha"])) > 1e-6
    assert abs(float(grads["logit_scale"])) > 1e-6
    # The per-joint heatmap mode reaches the renderer: another finite loss.
    joints = jax.jit(
        functools.partial(loss, heatmap=HeatmapSettings(mode="joints", joint_sigma=2.0))
    )(params)
    assert np.isfinite(float(joints)) and float(joints) != pytest.approx(float(parts_loss))
    # Without the focused pairs (CLIP baseline), alpha gets no gradient at all.
    clip_config = tiny_config("clip,modern")
    clip_grads = jax.jit(jax.grad(functools.partial(loss, loss_config=clip_config.loss)))(params)
    assert float(clip_grads["alpha"]) == 0.0


class _DivergedLoss(losses.ContrastiveLoss):
    """A loss that is NaN from the first step: what a diverging run meets (a config cannot
    ask for one: NaN weights or rates are refused)."""

    def __call__(self, a: jax.Array, b: jax.Array, scalars: losses.Scalars) -> jax.Array:
        return jnp.mean(a * b) * jnp.nan


def test_nonfinite_loss_skips_the_update_and_names_the_step(monkeypatch) -> None:
    monkeypatch.setitem(losses.LOSSES, "diverged", _DivergedLoss)
    config = tiny_config()
    config.loss.kind = "diverged"
    batch, vocab_size = _batch(config)
    _, state, initial, step_losses = _run_steps(
        config, sharding.create_mesh({"data": 1}), batch, vocab_size, 1
    )
    assert math.isnan(step_losses[0])
    assert int(state.nonfinite_count) == 1 and int(state.first_nonfinite_step) == 0
    for path, value in flatten_dict(jax.device_get(state.params)).items():
        np.testing.assert_array_equal(value, flatten_dict(initial)[path], err_msg=str(path))
    with pytest.raises(train.NonFiniteLossError, match="step 0"):
        train.check_finite({"nonfinite_count": 1.0, "first_nonfinite_step": 0.0})
    train.check_finite({"nonfinite_count": 1.0, "first_nonfinite_step": 0.0}, "skip")  # goes on


def test_bfloat16_compute_keeps_float32_parameters_and_close_loss(eight_and_one) -> None:
    """bf16 activations, f32 parameters and optimiser state; the first loss within 2%."""
    _, (_, _, _, losses_f32) = eight_and_one
    config = tiny_config()
    config.loss.kind = "nt_xent"
    config.model.dtype = "bfloat16"
    batch, vocab_size = _batch(config)
    _, state, _, losses = _run_steps(
        config, sharding.create_mesh({"data": 1}), batch, vocab_size, 1
    )
    assert losses[0] == pytest.approx(losses_f32[0], rel=2e-2)
    assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}


def test_weight_decay_skips_biases_norms_alpha_and_temperature() -> None:
    params = {
        "alpha": jnp.zeros(()),
        "logit_scale": jnp.zeros(()),
        "proj": {"kernel": jnp.zeros((4, 3)), "bias": jnp.zeros(3)},
        "norm": {"scale": jnp.zeros(4)},
        "embed": {"embedding": jnp.zeros((10, 4))},
        "blocks": {"attn": {"query": {"bias": jnp.zeros((2, 4, 8))}}},  # scanned: layer axis
    }
    assert optim.decay_mask(params) == {
        "alpha": False,
        "logit_scale": False,
        "proj": {"kernel": True, "bias": False},
        "norm": {"scale": False},
        "embed": {"embedding": True},
        "blocks": {"attn": {"query": {"bias": False}}},
    }


def test_text_dropout_draws_in_the_step_from_seed_and_step() -> None:
    """configs/pretrain.py's BERT dropout reaches the jitted step (a key from the seed folded
    with the step number); the tiny config's 0 leaves the step without random draws."""
    batch, vocab_size = _batch(tiny_config())

    def random_draws(text_dropout: float) -> int:
        config = tiny_config()
        config.model.text.dropout = text_dropout
        trainer = train.Trainer(config, sharding.create_mesh({"data": 1}), vocab_size=vocab_size)
        jaxpr = jax.make_jaxpr(trainer.step)(trainer.abstract_state, batch)
        return str(jaxpr).count("random_bits")

    assert random_draws(0.0) == 0 < random_draws(0.1)


def test_a_run_stopped_by_a_nonfinite_loss_closes_what_it_opened(
    tmp_path, monkeypatch, caplog
) -> None:
    """An error inside the loop still waits for checkpoint saves, closes the data workers and
    the metric writers, releases the workdir's lock and gives SIGTERM its handler back. (The run
    first writes its parameter table and logs one line of it.)"""
    import signal

    from focusclip_jax.checkpoint import Checkpointer
    from focusclip_jax.logs import MetricWriter

    closed = []
    for cls in (Checkpointer, MetricWriter):
        original = cls.close
        monkeypatch.setattr(
            cls, "close", lambda self, o=original, c=cls: (closed.append(c.__name__), o(self))
        )
    handler = signal.getsignal(signal.SIGTERM)
    config = tiny_config()
    config.mesh.data = 1
    config.evals.zero_shot.datasets = ()
    monkeypatch.setitem(losses.LOSSES, "diverged", _DivergedLoss)
    config.loss.kind = "diverged"
    with caplog.at_level(logging.INFO), pytest.raises(train.NonFiniteLossError, match="step 0"):
        train.train_and_evaluate(config, tmp_path)
    assert sorted(closed) == ["Checkpointer", "MetricWriter"]
    assert not (workdir_lock.lock_path(tmp_path)).exists()
    setup = ModelSetup.create(config, sharding.create_mesh({"data": 1}), vocab_size=9)
    summary = next(r.getMessage() for r in caplog.records if "parameters in" in r.getMessage())
    table = (tmp_path / "parameters.txt").read_text().splitlines()
    rows = {line.split()[0]: line.split() for line in table[1:-1]}
    assert "alpha" in rows and "logit_scale" in rows
    kernel = setup.abstract_params["text_proj"]["kernel"].shape
    assert rows["text_proj/kernel"][-1] == f"{kernel[0] * kernel[1]:,}"
    total = sum(int(row[-1].replace(",", "")) for row in rows.values())
    assert table[-1].split()[-1] == f"{total:,}" and summary.startswith(f"{total:,} parameters")
    assert signal.getsignal(signal.SIGTERM) is handler


class _BiasedCosine(losses.ContrastiveLoss):
    """A loss written outside the package: a squared error of `scale * cos + bias` against the
    identity, with a learnable bias in [-2, 2] that starts at 1."""

    scalars: ClassVar[dict[str, losses.Scalar]] = {"test_bias": losses.Scalar(1.0, (-2.0, 2.0))}

    def __call__(self, a, b, scalars):
        logits = jnp.exp(scalars["logit_scale"]) * a @ b.T + scalars["test_bias"]
        return jnp.mean((logits - jnp.eye(a.shape[0])) ** 2)

    def metrics(self, scalars):
        return {"test_bias": scalars["test_bias"]}


def test_a_registered_loss_brings_its_scalars_and_metrics(monkeypatch) -> None:
    """One registry line adds a loss: the model carries its scalar (bounded, trained, in the
    step's metrics) and no training code names the kind."""
    monkeypatch.setitem(losses.LOSSES, "biased_cosine", _BiasedCosine)
    config = tiny_config()
    config.loss.kind = "biased_cosine"
    batch, vocab_size = _batch(config)
    trainer, state, initial, step_losses = _run_steps(
        config, sharding.create_mesh({"data": 1}), batch, vocab_size, 2
    )
    assert float(initial["test_bias"]) == 1.0
    assert trainer.setup.bounds[("test_bias",)] == (-2.0, 2.0)
    assert float(state.params["test_bias"]) != 1.0  # it gets gradients and moves
    assert all(np.isfinite(step_losses))
    state, metrics = trainer.step(
        state, pipeline.to_global_arrays(batch, sharding.batch_sharding(trainer.setup.mesh))
    )
    assert "temperature" not in metrics
    assert float(metrics["test_bias"]) == pytest.approx(float(state.params["test_bias"]))


class _AlphaProbe(evaluators.Evaluator):
    """An evaluator written outside the package: it reports the focus weight alpha."""

    def run(self, params):
        return evaluators.Results({"probe/alpha": float(params["alpha"])})


class _Letters(tokenizers.TokenizerKind):
    """A tokenizer kind written outside the package: one token per lower-case letter."""

    def create(self, section, *, corpus, workdir, fit):
        return tokenizers.WordTokenizer(list("abcdefghijklmnopqrstuvwxyz"))


def test_a_loss_evaluator_data_source_tower_and_tokenizer_from_tests_train_together(
    tmp_path, monkeypatch, caplog
) -> None:
    """Five extensions written outside the package, one registry line each, train through
    `train_and_evaluate` with nothing else changed: the toy data source (COCO's 17 joints) feeds
    the steps, the toy tokenizer sizes the text tower, the toy image tower encodes the images,
    the toy loss trains its bias, and the evaluator type runs every `every_steps` and at the end,
    its metrics logged and returned."""
    from tests.test_sources import _Coco17
    from tests.test_towers import MeanColourTower

    monkeypatch.setitem(losses.LOSSES, "biased_cosine", _BiasedCosine)
    monkeypatch.setitem(evaluators.EVALUATORS, "alpha_probe", _AlphaProbe)
    source, streamed = _Coco17(), []
    records = source.train_source
    monkeypatch.setattr(source, "train_source", lambda data: streamed.append(1) or records(data))
    monkeypatch.setitem(sources.DATA_SOURCES, "coco17", source)
    tower = towers.TowerKind(MeanColourTower, {"s": {"width": 8}})
    monkeypatch.setitem(towers.IMAGE_TOWERS, "mean_colour", tower)
    monkeypatch.setitem(tokenizers.TOKENIZERS, "letters", _Letters())
    config = tiny_config()  # 4 steps
    config.mesh.data = 1
    config.train.batch_size = 4
    config.loss.kind = "biased_cosine"
    config.data.name = "coco17"
    config.tokenizer.kind = "letters"
    config.evals.zero_shot.datasets = ()
    with config.unlocked():
        config.data.prepared = str(tmp_path)
        config.model.image = {"name": "mean_colour", "size": "s"}
        config.evals.probe = {"type": "alpha_probe", "every_steps": 3}
    with caplog.at_level(logging.INFO):
        results = train.train_and_evaluate(config, tmp_path / "run")
    assert streamed  # the steps read the toy source's records
    table = (tmp_path / "run" / "parameters.txt").read_text()
    assert "\nimage_tower/colour/kernel " in table and "image_tower/blocks" not in table
    embedding = next(line for line in table.splitlines() if "text_tower/token_embed" in line)
    assert f"({4 + 26}, " in embedding  # the specials and the letters
    lines = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    key = "eval/probe/alpha"
    probed = {line["step"]: line[key] for line in lines if key in line}
    assert sorted(probed) == [3, 4]
    assert results == {"probe/alpha": pytest.approx(probed[4])}
    assert probed[3] != probed[4]  # alpha moved between the two runs
    biases = [line["test_bias"] for line in lines if "test_bias" in line]
    assert len(biases) == 4 and biases[-1] != 1.0 and all(-2.0 <= b <= 2.0 for b in biases)
    assert all(np.isfinite(line["loss"]) for line in lines if "loss" in line)


def test_siglip_chunked_and_accumulated_on_eight_devices_trains_like_one_device() -> None:
    """`:siglip` with `loss.chunked` and `train.accumulate_steps=2` inside the sharded step
    (4 × 2 data × fsdp, chunks of 8): the losses of the gathered loss on one batch on one
    device, and the bias it carries moves from -10 alike."""
    config = tiny_config("siglip")
    config.loss.chunked = True
    config.train.accumulate_steps = 2
    batch, vocab_size = _batch(config)
    mesh8 = sharding.create_mesh({"data": 4, "fsdp": 2})
    _, state8, initial, losses8 = _run_steps(config, mesh8, batch, vocab_size, 2)
    config.loss.chunked = False
    config.train.accumulate_steps = 1
    mesh1 = sharding.create_mesh({"data": 1, "fsdp": 1})
    _, state1, _, losses1 = _run_steps(config, mesh1, batch, vocab_size, 2)
    np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
    assert float(initial["logit_bias"]) == -10.0
    assert float(initial["logit_scale"]) == pytest.approx(math.log(10.0))
    bias8, bias1 = float(state8.params["logit_bias"]), float(state1.params["logit_bias"])
    assert bias8 != -10.0 and bias8 == pytest.approx(bias1, abs=1e-5)


def test_frozen_parameters_stay_bit_identical_and_hold_no_state() -> None:
    """LiT's lock (`train.frozen`): the image tower and its projection keep their exact bits
    through three sharded steps (4 × 2 data × fsdp) and have no optimiser state; the rest
    trains, its state sharded like its parameters."""
    config = tiny_config()
    config.train.frozen = ("image_tower/.*", "image_proj/.*")
    batch, vocab_size = _batch(config)
    mesh = sharding.create_mesh({"data": 4, "fsdp": 2})
    _, state, initial, _ = _run_steps(config, mesh, batch, vocab_size, 3)
    final = flatten_dict(jax.device_get(state.params))
    for path, before in flatten_dict(initial).items():
        after = np.asarray(final[path])
        if path[0] in ("image_tower", "image_proj"):
            assert after.tobytes() == np.asarray(before).tobytes(), path
        elif path[-1] == "kernel":
            assert not np.array_equal(after, before), path
    state_paths = [
        jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state.opt_state)
    ]
    assert state_paths and not any("image_" in p for p in state_paths)
    kernel = state.params["text_proj"]["kernel"]
    moments = [
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(state.opt_state)
        if "text_proj" in jax.tree_util.keystr(path) and leaf.shape == kernel.shape
    ]
    assert moments and all(m.sharding == kernel.sharding for m in moments)
    assert kernel.sharding.spec[0] == "fsdp"


@pytest.mark.parametrize("kind", ["nt_xent", "clip", "siglip"])
def test_accumulated_gradient_is_the_whole_batch_gradient(kind) -> None:
    """Four chunks of 4 (towers run per chunk, the loss over all 16): the loss and the
    gradient of one batch of 16, for each loss."""
    config = tiny_config()
    config.loss.kind = kind
    batch, vocab_size = _batch(config)
    setup = ModelSetup.create(config, sharding.create_mesh({"data": 1}), vocab_size=vocab_size)
    params = nnx.to_pure_dict(nnx.state(setup.new_model(), nnx.Param))
    options = dict(graphdef=setup.graphdef, loss_config=config.loss, heatmap=PARTS)
    whole = functools.partial(train.compute_loss, batch=batch, **options)
    (loss, per_pair), grads = jax.jit(jax.value_and_grad(whole, has_aux=True))(params)
    accumulated = jax.jit(
        functools.partial(train.accumulated_loss_and_grads, accumulate_steps=4, **options)
    )
    (chunked_loss, chunked_pairs), chunked_grads = accumulated(params, batch)
    assert float(chunked_loss) == pytest.approx(float(loss), rel=1e-5)
    assert chunked_pairs.keys() == per_pair.keys()
    flat, chunked_flat = flatten_dict(grads), flatten_dict(chunked_grads)
    for path, grad in flat.items():
        np.testing.assert_allclose(
            chunked_flat[path], grad, rtol=1e-4, atol=1e-5, err_msg=str(path)
        )
    assert float(optax.global_norm(grads)) > 0


def test_metric_window_means_over_steps_and_keeps_last_values() -> None:
    """The logging window (clu.metrics on the device): per-pair losses averaged over the steps,
    counters and schedules at their last step, a fresh window after each read."""
    rng = np.random.default_rng(0)
    steps = [
        {
            "loss": jnp.float32(rng.normal()),
            "loss/focused_text": jnp.float32(rng.normal()),
            "learning_rate": jnp.float32(0.1 * i),
            "nonfinite_count": jnp.int32(i // 2),
        }
        for i in range(3)
    ]
    window = train.MetricWindow()
    for metrics in steps:
        window.add(metrics)
    summary = window.pop()
    assert set(summary) == set(steps[0])
    for name in ("loss", "loss/focused_text"):
        expected = np.mean([float(m[name]) for m in steps])
        np.testing.assert_allclose(summary[name], expected, rtol=1e-6)
    assert summary["learning_rate"] == pytest.approx(0.2) and summary["nonfinite_count"] == 1
    window.add(steps[0])
    assert window.pop()["loss"] == pytest.approx(float(steps[0]["loss"]))


def test_the_progress_line_and_mfu(monkeypatch) -> None:
    """The log line carries what a user needs to trust a run; MFU is the analytic FLOPs over the
    mesh's listed peak (none on a CPU)."""
    from focusclip_jax import flops, targets

    config = tiny_config()
    mesh = sharding.create_mesh({"data": 1})
    assert train._mfu_of_one_step_per_s(config, mesh) is None  # a CPU: no listed peak
    monkeypatch.setattr(targets, "chip_for_device_kind", lambda kind: targets.TPUS["v5e"])
    per_step = train._mfu_of_one_step_per_s(config, mesh)
    assert per_step == pytest.approx(  # model.dtype 'auto' computes in bfloat16 on a TPU
        flops.train_step_flops(config)["total"] / targets.TPUS["v5e"].peak_bf16
    )
    config.model.dtype = "float32"
    assert train._mfu_of_one_step_per_s(config, mesh) == pytest.approx(
        flops.train_step_flops(config)["total"] / targets.TPUS["v5e"].peak_f32
    )
    summary = {
        "loss": 1.5, "loss/image_text": 1.5, "alpha": 0.5, "temperature": 0.07,
        "learning_rate": 1e-3, "grad_norm": 2.0, "images_per_s": 100.0,
        "data_wait_fraction": 0.1, "mfu": 0.4,
    }  # fmt: skip
    line = train._progress_line(10, 20, summary, step_s=6.0)
    assert line == (
        "step 10/20 | loss 1.5000 (image_text=1.5000) | alpha 0.500 | temperature 0.07 | "
        "lr 0.001 | grad norm 2 | 100.0 img/s | data wait 10% | MFU 40.0% | ETA 1m00s"
    )
