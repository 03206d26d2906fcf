"""The annotation-loop benchmark at its smallest size: two rounds through the real server, for every strategy."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import pytest

from benchmarks.annotation_loop import STRATEGIES, epochs_for, main
from benchmarks.annotation_loop import report as main_report
from tokenseg.data.cohort import cohort_difficulty, make_cohort_case


def test_cohort_cases_vary_in_difficulty_as_drawn():
    draws = [cohort_difficulty(seed) for seed in range(40)]
    assert {d["lesions"] for d in draws} == {0, 1, 2, 3}
    shares = [d["lesion_share"] for d in draws if d["lesions"]]
    assert 5e-4 <= min(shares) < 2e-3 and 1e-2 < max(shares) <= 2e-2
    assert min(d["cnr"] for d in draws) < 2.5 and max(d["cnr"] for d in draws) > 4
    assert any(d["strong_bias"] for d in draws) and any(d["noise_burst"] for d in draws)
    for seed in (0, 9):
        image, label = make_cohort_case(seed)
        assert abs(label.mean() - draws[seed]["lesion_share"]) < 0.5 * draws[seed]["lesion_share"]
        assert np.array_equal(make_cohort_case(seed)[0], image)  # reproducible by seed


def test_retraining_epochs_follow_the_labelled_count():
    assert epochs_for(2, 60, 0.2) == 60  # two images train (none kept for validation): one step an epoch
    assert epochs_for(10, 60, 0.2) == 15  # eight train: four steps an epoch
    assert epochs_for(40, 60, 0.2) == 4


def test_two_rounds_through_the_server_for_every_strategy(tmp_path):
    out = tmp_path / "loop"
    main(["--strategies", *STRATEGIES, "--seeds", "0", "--initial", "2", "--step", "2", "--labels", "4",
          "--steps-per-round", "1", "--pool", "6", "--test", "2", "--shape", "32", "32", "16", "--patch", "32", "32", "16",
          "--epistemic-samples", "2", "--val-split", "0.5", "--no-full-pool", "--out", str(out)])
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    data = next(out.glob("cohort_*"))
    for strategy in STRATEGIES:
        first, second = [r for r in rounds if r["strategy"] == strategy]
        assert (first["labels"], second["labels"]) == (2, 4)
        # every strategy answered with images that had no label yet
        assert len(second["chosen"]) == 2 and not set(second["chosen"]) & set(first["labelled"])
        assert sorted(first["labelled"] + second["chosen"]) == second["labelled"]
        # retrained between the rounds
        assert second["checkpoint_mtime"] > first["checkpoint_mtime"]
        # the strategy's scores were made by the checkpoint the first round trained
        if STRATEGIES[strategy]:
            assert second["scored_with"] == [int(first["checkpoint_mtime"])], (strategy, second["scored_with"])
        # the labels saved are on disk as they were submitted, none lost
        final = out / strategy / "seed_0" / "studies" / "labels" / "final"
        assert sorted(p.name.removesuffix(".nii.gz") for p in final.glob("*.nii.gz")) == second["labelled"]
        for image in second["labelled"]:
            saved = np.asarray(nib.load(final / f"{image}.nii.gz").dataobj)
            assert np.array_equal(saved, np.asarray(nib.load(data / "labelsTr" / f"{image}.nii.gz").dataobj))
        assert 0 <= second["test_dice"] <= 1 and len(second["test_dice_per_case"]) == 2
    report = json.loads((out / "report.json").read_text())
    assert set(report["strategies"]) == set(STRATEGIES) and (out / "dice_vs_labels.png").stat().st_size > 0
    # what each order chose, profiled by the cohort's draws: the two images of its second round
    assert report["pool_profile"]["images"] == 6
    assert all(entry["chosen_profile"]["images"] == 2 for entry in report["strategies"].values())


def test_report_pairs_each_strategy_with_random_seed_by_seed(tmp_path):
    def loop(strategy, seed, dice_by_labels, early_stop=0):
        return [{"strategy": strategy, "seed": seed, "labels": n, "test_dice": d, "score_seconds": 1.0,
                 "train_seconds": 10.0 - 5.0 * bool(early_stop), "early_stop": early_stop}
                for n, d in dice_by_labels.items()]

    rounds = loop("full_pool", 0, {40: 0.5}) + loop("full_pool", 1, {40: 0.4})
    rounds += loop("random", 0, {2: 0.0, 4: 0.2, 6: 0.3}) + loop("random", 1, {2: 0.0, 4: 0.1, 6: 0.2})
    rounds += loop("tokenseg_uncertain_volume", 0, {2: 0.0, 4: 0.3, 6: 0.5})
    rounds += loop("tokenseg_uncertain_volume", 1, {2: 0.0, 4: 0.2, 6: 0.4})
    # random order retrained with early stopping: a curve of its own, paired with random's fixed retraining
    rounds += loop("random", 0, {2: 0.0, 4: 0.1, 6: 0.3}, early_stop=3)
    rounds += loop("random", 1, {2: 0.0, 4: 0.1, 6: 0.2}, early_stop=3)
    summary = main_report(rounds, tmp_path)
    ours, random_order = summary["strategies"]["tokenseg_uncertain_volume"], summary["strategies"]["random"]
    assert random_order["area"] == pytest.approx({0: 0.175, 1: 0.1})  # trapezoids over 2..6 labels, divided by 4
    assert ours["area_minus_random_by_seed"] == pytest.approx({0: 0.275 - 0.175, 1: 0.2 - 0.1})
    assert ours["labels_to_95"] == {0: 6, 1: 6} and random_order["labels_to_95"] == {0: None, 1: None}
    assert ours["labels_to_random_final"] == {0: 4, 1: 4}  # random ends at 0.3 and 0.2
    assert "| tokenseg_uncertain_volume |" in (tmp_path / "report.md").read_text()
    stopped = summary["strategies"]["random, early stop 3"]
    assert stopped["area_minus_random_by_seed"] == pytest.approx({0: 0.125 - 0.175, 1: 0.0})
    assert stopped["round_seconds"]["training"] == 5.0 and random_order["round_seconds"]["training"] == 10.0


def test_a_loop_stopped_with_sigterm_leaves_no_server(tmp_path):
    out = tmp_path / "loop"
    loop = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.annotation_loop", "--strategies", "random", "--seeds", "0", "--labels", "4",
         "--steps-per-round", "1", "--pool", "4", "--test", "1", "--shape", "32", "32", "16", "--patch", "32", "32", "16",
         "--val-split", "0.5", "--no-full-pool", "--out", str(out)],
        cwd=Path(__file__).resolve().parents[1])
    server_log = out / "random" / "seed_0" / "server.log"
    deadline = time.time() + 300
    while not (server_log.exists() and "Train request" in server_log.read_text()) and time.time() < deadline:
        assert loop.poll() is None, "the loop ended before its first training"
        time.sleep(1)
    server_pids = [p.pid for p in psutil.process_iter(["cmdline"]) if str(out) in " ".join(p.info["cmdline"] or [])
                   and "monailabel" in " ".join(p.info["cmdline"] or [])]
    assert server_pids, "the loop's server was not found running"
    loop.send_signal(signal.SIGTERM)
    try:
        assert loop.wait(timeout=60) == 128 + signal.SIGTERM
        time.sleep(2)
        left = [pid for pid in server_pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
        assert not left, "the loop's server outlived it"
    finally:  # whatever failed, no server of this test stays behind
        loop.kill()
        for pid in server_pids:
            if psutil.pid_exists(pid):
                psutil.Process(pid).kill()
