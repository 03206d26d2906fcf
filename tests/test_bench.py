"""Smoke test of the benchmark command: tiny sizes, two models, every field sane."""

import datetime
import json

import pytest
import torch

from benchmarks.cost import main
from benchmarks.models import build_model
from benchmarks.pareto import pareto_front
from benchmarks.profile import profile_modules


def test_benchmark_writes_every_field(tmp_path):
    report = main([
        "--models", "tokenseg", "unet", "--sizes", "32", "48", "--demo-patch", "32", "32", "32",
        "--volumes", "48x40x32", "--window", "32", "32", "32", "--repeats", "1", "--out", str(tmp_path),
    ])
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["results"] == report["results"]
    assert {"cpu", "threads", "torch", "device"} <= set(saved["machine"])
    measured = [r for r in saved["results"] if "skipped" not in r]
    assert len(measured) == len(saved["results"]) == 2 * 2 * 2 + 2  # 2 models x 2 sizes x (infer, train) + sliding
    for r in measured:
        assert r["seconds_median"] > 0 and r["peak_memory_mib"] > 0 and r["params_m"] > 0
    for model in ("tokenseg", "unet"):
        flops = {r["size"][0]: r["gflops_forward"] for r in measured if r["model"] == model and r["mode"] == "infer"}
        assert flops[48] > flops[32] > 0
    assert set(saved["ratios"]["32x32x32"]["unet"]) == {"latency", "infer_memory", "train_step", "train_memory"}
    for model in ("tokenseg", "unet"):
        for mode in ("infer", "train"):
            grown = saved["growth"][model][mode]
            small, large = (next(r for r in measured if r["model"] == model and r["mode"] == mode and r["size"][0] == s)
                            for s in (32, 48))
            mvoxels = (48**3 - 32**3) / 1e6  # two sizes: the slope is the difference quotient
            assert grown["sizes"] == [32, 48]
            assert grown["mib_per_mvoxel"] == pytest.approx(
                (large["peak_memory_mib"] - small["peak_memory_mib"]) / mvoxels, abs=0.1)
            assert grown["seconds_per_mvoxel"] == pytest.approx(
                (large["seconds_median"] - small["seconds_median"]) / mvoxels, abs=0.001)
        # the growth target compares TokenSeg's slope with the baselines' (here only UNet)
        target = next(t for t in saved["targets"] if t["target"].startswith(f"{mode} memory growth"))
        ours, theirs = saved["growth"]["tokenseg"][mode]["mib_per_mvoxel"], saved["growth"]["unet"][mode]["mib_per_mvoxel"]
        assert target["measured"] == ours and target["met"] == (ours < theirs)
    assert (tmp_path / "scaling_infer.png").stat().st_size > 0 and (tmp_path / "scaling_train.png").stat().st_size > 0
    assert "TokenSeg / baseline" in (tmp_path / "bench.md").read_text()


def test_report_only_adds_the_dice_memory_plot_without_measuring(tmp_path):
    with pytest.raises(SystemExit):  # nothing measured yet in this folder
        main(["--report-only", "--out", str(tmp_path)])
    measured = main(["--models", "tokenseg", "unet", "--sizes", "32", "--demo-patch", "32", "32", "32",
                     "--volumes", "--repeats", "1", "--out", str(tmp_path)])
    # --update measures again what its command line names and merges it: UNet's inference replaced in place,
    # SegResNet's added, and the ratios follow
    updated = main(["--update", "--models", "unet", "segresnet", "--sizes", "32", "--demo-patch", "32", "32", "32",
                    "--volumes", "--modes", "infer", "--repeats", "1", "--out", str(tmp_path)])
    keys = [(r["model"], r["mode"]) for r in updated["results"]]
    assert keys == [(r["model"], r["mode"]) for r in measured["results"]] + [("segresnet", "infer")]
    unet_before, unet_after = (next(r for r in report["results"] if r["model"] == "unet" and r["mode"] == "infer")
                               for report in (measured, updated))
    assert unet_after["seconds_all"] != unet_before["seconds_all"]  # measured again
    assert updated["models"] == ["tokenseg", "unet", "segresnet"]
    assert set(updated["ratios"]["32x32x32"]["segresnet"]) == {"latency", "infer_memory"}
    measured = updated
    accuracy = tmp_path / "accuracy.json"
    scores = {"tokenseg": 0.795, "unet": 0.8}
    accuracy.write_text(json.dumps({
        "dataset": "demo", "patch_size": [32, 32, 32], "epochs": 2, "optimisation_steps": 8, "patches_per_step": 4,
        "models": {m: {"test_dice": d, "test_iou": d / (2 - d), "test_hd95_mm": 2.0, "train_seconds": 10.0}
                   for m, d in scores.items()},
    }))
    remade = main(["--report-only", "--accuracy", str(accuracy), "--out", str(tmp_path)])
    assert remade["results"] == measured["results"]
    assert "pareto_dice_memory.png" in remade["plots"] and (tmp_path / "pareto_dice_memory.png").stat().st_size > 0
    dice_target = next(t for t in remade["targets"] if t["target"].startswith("test Dice"))
    assert dice_target["measured"] == 0.795 and dice_target["met"]  # within the 0.01 margin of UNet's 0.8
    assert "| tokenseg | 0.795 |" in (tmp_path / "bench.md").read_text()


def test_pareto_front_keeps_points_nothing_beats():
    points = {"a": (100.0, 0.9), "b": (200.0, 0.95), "c": (300.0, 0.93), "d": (50.0, 0.5), "e": (100.0, 0.8)}
    assert pareto_front(points) == ["d", "a", "b"]


def test_profile_times_every_part_of_tokenseg():
    model = build_model("tokenseg", 1, 2, (32, 32, 32))
    figures = profile_modules(model, torch.randn(1, 1, 32, 32, 32), repeats=1)
    parts = ["encoder.0", "encoder.1", "encoder.2", "encoder.3", "tokenizer", "mixer", "decoder", "head"]
    assert list(figures["modules_ms"]) == parts
    assert all(ms > 0 for ms in figures["modules_ms"].values())
    assert sum(figures["modules_ms"].values()) <= figures["total_ms"]
    assert "conv" in figures["operators"]  # slow_conv3d_forward or mkldnn_convolution, by input size


def test_accuracy_over_seeds_reports_mean_and_spread(tmp_path):
    from benchmarks.accuracy import summarise, validation_curves, write_report
    from benchmarks.tables import accuracy_table

    per_seed = {str(s): {"test_dice": d, "test_iou": d - 0.1, "test_hd95_mm": 2.0, "train_seconds": 10.0,
                         "val_curve": [[60, d - 0.2], [120, d - 0.1]], "val_seconds": [[5.0, d - 0.2], [9.0, d - 0.1]]}
                for s, d in enumerate([0.80, 0.83, 0.89])}
    result = summarise(per_seed)
    assert result["test_dice"] == pytest.approx(0.84) and result["test_dice_sd"] == pytest.approx(0.0458, abs=1e-4)
    assert result["per_seed"] == per_seed and "val_curve" not in result  # curves stay per seed
    # a model that reaches UNet's best validation Dice (0.74 on average) sooner in two seeds, never in one
    faster = {str(s): {**per_seed[str(s)], "test_dice": per_seed[str(s)]["test_dice"] + 0.02,
                       "val_seconds": [[2.0, top - 0.1], [4.0, top]]} for s, top in enumerate([0.70, 0.75, 0.76])}
    report = {"dataset": "small", "patch_size": [64, 64, 16], "epochs": 25, "seeds": [0, 1, 2],
              "optimisation_steps": 150, "patches_per_step": 4,
              "models": {"unet": result, "tokenseg": summarise(faster)}}
    write_report(report, tmp_path)
    assert report["reference_val_dice"] == {"model": "unet", "best_val_dice": pytest.approx(0.74)}
    assert [r["seconds_to_reference"] for r in report["models"]["tokenseg"]["per_seed"].values()] == [None, 4.0, 4.0]
    assert [r["seconds_to_reference"] for r in report["models"]["unet"]["per_seed"].values()] == [None, None, 9.0]
    # a later run summarises seeds that carry them (as --update reads the report back)
    assert "seconds_to_reference" not in summarise(report["models"]["tokenseg"]["per_seed"])
    table = accuracy_table(report)
    assert "3 seed(s)" in table[0] and any(line.startswith("| unet | 0.840 ± 0.046 |") for line in table)
    assert any(line.startswith("| tokenseg | 0.860 ± 0.046 |") and "| -, 4, 4 |" in line for line in table)
    assert "| tokenseg | +0.020, +0.020, +0.020 | +0.020 |" in table
    assert (tmp_path / "accuracy_val_curves.png").stat().st_size > 0
    assert (tmp_path / "accuracy_val_seconds.png").stat().st_size > 0
    # the curves come from the bundle log's validation lines and their time stamps
    start = datetime.datetime(2026, 1, 1, 10, 0, 0).timestamp()
    log = ("2026-01-01 10:00:30,500 - ignite.engine.engine.SupervisedEvaluator - INFO - Epoch[5] Metrics -- "
           "val_mean_dice: 0.5000 val_mean_iou: 0.4000\n"
           "2026-01-01 10:01:00,000 - ignite.engine.engine.SupervisedEvaluator - INFO - Epoch[10] Metrics -- "
           "val_mean_dice: 0.7000 val_mean_iou: 0.6000\n")
    assert validation_curves(log, start, iterations=6) == ([[30, 0.5], [60, 0.7]], [[30.5, 0.5], [60.0, 0.7]])


def test_resenc_m_is_planned_like_nnunet_for_thick_slices():
    from benchmarks.nnunet import plan_resenc_m

    # 0.8 x 0.8 x 5 mm: in-plane pooling and in-plane kernels until the spacing is within a factor 2, then 3D
    plan = plan_resenc_m((64, 64, 16), (0.8, 0.8, 5.0))
    assert plan["strides"] == [[1, 1, 1], [2, 2, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2]]
    assert plan["kernel_sizes"][:2] == [[3, 3, 1], [3, 3, 1]] and plan["kernel_sizes"][2:] == [[3, 3, 3]] * 3
    assert plan["features_per_stage"] == [32, 64, 128, 256, 320] and plan["n_blocks_per_stage"] == [1, 3, 4, 6, 6]
    # isotropic: pooled on every axis until the feature map would drop below 4 voxels
    assert plan_resenc_m((96, 96, 96), (1.0, 1.0, 1.0))["strides"] == [[1, 1, 1]] + [[2, 2, 2]] * 4
    network = build_model("resenc_m", 1, 2, (32, 32, 16), spacing=(0.8, 0.8, 5.0)).eval()
    with torch.no_grad():
        assert network(torch.randn(1, 1, 32, 32, 16)).shape == (1, 2, 32, 32, 16)


def test_accuracy_overrides_build_each_baseline_through_the_bundle_config(tmp_path):
    # the overrides a baseline's bundle run gets resolve, in MONAI's config parser, to that network and DiceCE
    from monai.bundle import ConfigParser
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    from benchmarks.accuracy import REPO, overrides

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundle" / "configs" / "train.json"))
    parser.update(overrides("unet", tmp_path, "small_targets", str(tmp_path), 1, 1, 0))
    assert isinstance(parser.get_parsed_content("network_def"), UNet)
    assert isinstance(parser.get_parsed_content("loss"), DiceCELoss)


def test_pareto_plot_of_dice_against_window_gflops(tmp_path, monkeypatch):
    import sys

    from benchmarks import pareto

    report = {"dataset": "TokenSeg small targets: ...", "dataset_name": "small_targets", "patch_size": [32, 32, 16],
              "optimisation_steps": 10, "models": {"tokenseg": {"test_dice": 0.5}, "unet": {"test_dice": 0.4}}}
    (tmp_path / "accuracy.json").write_text(json.dumps(report))
    out = tmp_path / "pareto.png"
    monkeypatch.setattr(sys, "argv", ["pareto", str(tmp_path / "accuracy.json"), "--out", str(out)])
    pareto.main()
    table = out.with_suffix(".md").read_text()
    tokenseg_gflops = pareto.window_gflops("tokenseg", 1, [32, 32, 16])
    unet_gflops = pareto.window_gflops("unet", 1, [32, 32, 16])
    assert f"| tokenseg | 0.500 | {tokenseg_gflops:.2f} |" in table and f"| unet | 0.400 | {unet_gflops:.2f} |" in table
    # the front: TokenSeg is on it (higher Dice); UNet only if it is cheaper
    front = table.splitlines()[-1]
    assert "tokenseg" in front and ("unet" in front) == (unet_gflops < tokenseg_gflops)
    assert out.stat().st_size > 0


def test_cost_model_of_the_shipped_model_on_the_demo_test_windows(tmp_path):
    # benchmarks.kept_compute on the shipped checkpoint: per-part FLOPs add up, the kept tokens are K per window,
    # and as trained the model does at most UNet's work per window, at the demo patch and at 96^3
    from benchmarks.kept_compute import cost_table, trained_cost
    from tokenseg.data.demo import ensure_demo_dataset

    from bundle_helpers import copy_bundle

    bundle = copy_bundle(tmp_path / "bundle", with_models=True)
    ensure_demo_dataset(bundle / "data" / "demo")
    report = trained_cost(bundle, "test")
    assert report["cases"] == 4 and report["windows"] == len(report["per_window"]) > 0
    for key in ("gflops_by_part", "large_gflops_by_part"):
        parts = report[key]
        assert sum(v for k, v in parts.items() if k != "total") == pytest.approx(parts["total"], rel=1e-6)
        assert parts["other"] == pytest.approx(0.0, abs=1e-6)  # every FLOP belongs to a named part
    assert sum(report["kept_per_level"]) == pytest.approx(100)
    assert report["gflops_by_part"]["total"] <= report["unet_gflops"]
    assert report["large_gflops_by_part"]["total"] <= report["large_unet_gflops"]
    assert any(line.startswith("| TokenSeg / UNet |") for line in cost_table([report]))


def test_learning_summary_gives_the_sample_standard_deviation():
    from benchmarks.learning import summarise

    two_seeds = {"unet": {"0": [[50, 0.1], [100, 0.5]], "1": [[50, 0.3], [100, 0.7]]}}
    assert "| unet | 0.200 ± 0.141 | 0.600 ± 0.141 | 100, 100 | -, - |" in summarise(two_seeds)
    assert "| unet | 0.100 ± 0.000 | 0.500 ± 0.000 | 100 | - |" in summarise({"unet": {"0": [[50, 0.1], [100, 0.5]]}})
