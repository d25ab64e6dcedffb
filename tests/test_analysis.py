"""Analysis of real finished runs: plots, the printed summary and the multirun sweep table.

One tiny federated run (with user-level DP, so epsilon.png is drawn) and one 2-job multirun
(`seed=1,2`) are made once per module through `python -m fedspeech.main`; every test reads them.
Participation and seen/unseen are checked against the partition and the manifest directly, not
through the analysis code.
"""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import TINY_CORPUS, TINY_RUN, read_history, run_module
from fedspeech.analysis.dp_tradeoff import write_tradeoff
from fedspeech.analysis.plots import plot_run
from fedspeech.analysis.results_table import results_table
from fedspeech.analysis.summary import RunDirError, load_run, spearman, summarize_run
from fedspeech.analysis.sweep import collect, short_keys, write_sweep
from fedspeech.federation.privacy_accounting import UserLevelAccountant

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RUN_PLOTS = ("wer.png", "speakers.png", "speakers_hist.png", "client_sizes.png", "epsilon.png")
COMMON = [*TINY_CORPUS, *TINY_RUN, "num_rounds=2", "strategy.num_train_nodes=2", "client_resources.num_cpus=1"]
SWEEP_COMMON = [o if o != "num_rounds=2" else "num_rounds=1" for o in COMMON]


def assert_png(path: Path) -> None:
    assert path.is_file(), f"missing {path}"
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert len(data) > 1024, f"{path} is only {len(data)} bytes"
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.size[0] >= 300 and img.size[1] >= 200, f"{path}: {img.size}"


@pytest.fixture(scope="module")
def run_dir(tiny_data, tmp_path_factory) -> Path:
    """A finished 2-round federated run with DP on (the Gaussian mechanism reports epsilon), with a
    virtual cohort."""
    out = tmp_path_factory.mktemp("analysis") / "run"
    # noise and epsilon of a simulated deployment of 100 clients a round out of 10000
    run_module("fedspeech.main", f"paths.data={tiny_data}", *COMMON, "strategy/dp=gaussian",
               "strategy.dp.virtual_cohort=100", "strategy.dp.virtual_population=10000",
               f"hydra.run.dir={out}")
    return out


@pytest.fixture(scope="module")
def sweep_dir(tiny_data, tmp_path_factory) -> Path:
    """A finished 2-job, 1-round multirun over seeds."""
    out = tmp_path_factory.mktemp("analysis") / "sweep"
    # job folders named by number: the default `<num>_<override_dirname>` of these many overrides is
    # longer than a file name may be
    run_module("fedspeech.main", "--multirun", f"paths.data={tiny_data}", *SWEEP_COMMON, "seed=1,2",
               f"hydra.sweep.dir={out}", "hydra.sweep.subdir=${hydra.job.num}")
    return out


def partition_speakers(tiny_data: Path) -> tuple[dict[int, set[str]], Counter, pd.DataFrame]:
    """client -> speakers and train utterances per speaker, from clients.csv + manifest."""
    prepared = tiny_data / "synthetic"
    manifest = pd.read_csv(prepared / "manifest.csv", dtype={"id": str, "speaker": str})
    clients = pd.read_csv(prepared / "partitions" / "speaker" / "clients.csv", dtype={"id": str})
    speaker_of = manifest.set_index("id")["speaker"]
    by_client: dict[int, set[str]] = defaultdict(set)
    train_utts: Counter = Counter()
    for utt, client in zip(clients["id"], clients["client"]):
        by_client[int(client)].add(speaker_of[utt])
        train_utts[speaker_of[utt]] += 1
    return by_client, train_utts, manifest


@pytest.mark.slow     # uses a real run through main
def test_run_plots_exist_and_are_pngs(run_dir):
    for name in RUN_PLOTS:
        assert_png(run_dir / "plots" / name)


@pytest.mark.slow     # uses a real run through main
def test_participation_matches_history(run_dir, tiny_data):
    history = read_history(run_dir)
    by_client, _, _ = partition_speakers(tiny_data)
    expected: Counter = Counter()
    for h in history[1:]:
        assert len(h["participants"]) == h["clients_replied"]
        for spk in set().union(*(by_client[p] for p in h["participants"])):
            expected[spk] += 1
    speakers = pd.read_csv(run_dir / "speakers.csv", dtype={"speaker": str})
    got = dict(zip(speakers["speaker"], speakers["rounds_participated"]))
    assert set(expected) <= set(got) and got == {s: expected.get(s, 0) for s in got}
    assert sum(got.values()) == sum(len(h["participants"]) for h in history[1:])  # one speaker per client


@pytest.mark.slow     # uses a real run through main
def test_unseen_speakers_have_no_training_audio(run_dir, tiny_data):
    _, train_utts, manifest = partition_speakers(tiny_data)
    speakers = pd.read_csv(run_dir / "speakers.csv", dtype={"speaker": str})
    evaluated = set(manifest.loc[manifest["split"] == "test", "speaker"])
    assert set(speakers["speaker"]) == evaluated
    unseen = set(speakers.loc[~speakers["seen_in_training"], "speaker"])
    assert unseen == {s for s in evaluated if train_utts[s] == 0}
    assert len(unseen) == 1
    assert dict(zip(speakers["speaker"], speakers["train_utts"])) == {s: train_utts[s] for s in evaluated}


@pytest.mark.slow     # uses a real run through main
def test_summary_numbers_come_from_the_files(run_dir):
    history = read_history(run_dir)
    s = summarize_run(run_dir)
    assert s["rounds"] == 2 and s["final_round"] == 2
    assert s["final_wer"] == pytest.approx(history[-1]["wer"])
    assert s["best_wer"] == pytest.approx(min(h["wer"] for h in history))
    assert s["train_seconds"] == pytest.approx(sum(h["train_seconds"] for h in history))
    assert s["bytes_up"] == sum(h["bytes_up"] for h in history) > 0
    assert s["epsilon"] == pytest.approx(history[-1]["epsilon"]) and s["epsilon"] > 0
    assert s["speakers_seen"] == 3 and s["speakers_unseen"] == 1
    speakers = load_run(run_dir).speakers
    assert s["mean_wer_unseen"] == pytest.approx(speakers.loc[~speakers["seen_in_training"], "wer"].mean())


@pytest.mark.slow     # uses a real run through main
def test_cli_redraws_plots_on_a_copy(run_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "plots")
    history = read_history(copy)
    proc = run_module("fedspeech.analysis", str(copy), "--baseline", "0.5")
    for name in RUN_PLOTS:
        assert_png(copy / "plots" / name)
    out = proc.stdout
    assert "final WER / CER" in out and f"{100 * history[-1]['wer']:.2f} %" in out
    assert f"epsilon {history[-1]['epsilon']:.3f}" in out
    assert "baseline" in out and "50.00 %" in out
    assert "per-speaker WER by rounds participated" in out


@pytest.mark.slow     # uses a real run through main
def test_plots_survive_one_round_nan_and_no_unseen(run_dir, tmp_path):
    copy = tmp_path / "edge"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "plots")
    history = read_history(copy)
    edited = [dict(history[0]), dict(history[1])]
    edited[1]["wer"] = float("nan")          # an evaluation that produced no score
    for h in edited:
        h.pop("epsilon", None)
    (copy / "history.json").write_text(json.dumps(edited))
    speakers = pd.read_csv(copy / "speakers.csv", dtype={"speaker": str})
    seen = speakers[speakers["seen_in_training"]].copy()
    seen.loc[seen.index[0], "wer"] = float("nan")
    seen.to_csv(copy / "speakers.csv", index=False)
    skipped: dict[str, str] = {}
    made = {p.name for p in plot_run(copy, baseline=run_dir, skipped=skipped)}
    assert made == set(RUN_PLOTS) - {"epsilon.png"} and "epsilon.png" in skipped
    for name in made:
        assert_png(copy / "plots" / name)
    s = summarize_run(copy)
    assert s["best_wer_round"] == 0 and math.isnan(s["final_wer"]) and math.isnan(s["mean_wer_unseen"])
    # a history of round 0 alone still plots
    (copy / "history.json").write_text(json.dumps(history[:1]))
    assert "wer.png" in {p.name for p in plot_run(copy)}


@pytest.mark.slow     # uses a real run through main
def test_sweep_summary_on_a_real_multirun(sweep_dir):
    proc = run_module("fedspeech.analysis.sweep", str(sweep_dir))
    for name in ("summary.csv", "summary.md"):
        assert (sweep_dir / name).stat().st_size > 0
    assert_png(sweep_dir / "comparison.png")
    table = pd.read_csv(sweep_dir / "summary.csv")
    jobs = table[table["row"] == "job"]
    assert sorted(jobs["seed"].astype(int)) == [1, 2]
    finals = [read_history(sweep_dir / str(j))[-1]["wer"] for j in (0, 1)]
    for j in (0, 1):                      # each job's console in its own main.log
        log = (sweep_dir / str(j) / "main.log").read_text()
        assert "[round 1/1]" in log and f"-> {sweep_dir / str(j)}" in log
    assert sorted(jobs["final_wer"]) == pytest.approx(sorted(finals))
    conf = table[table["row"] == "configuration"]
    assert len(conf) == 1 and int(conf["n_jobs"].iloc[0]) == 2
    assert conf["final_wer"].iloc[0] == pytest.approx(sum(finals) / 2)
    assert conf["final_wer_std"].iloc[0] == pytest.approx(pd.Series(finals).std(ddof=1), abs=1e-6)
    md = (sweep_dir / "summary.md").read_text()
    assert "mean ± std (2 seeds)" in md and "seed=1" in str(jobs["overrides"].iloc[0])
    assert "summary.csv" in proc.stdout


@pytest.mark.slow     # uses a real run through main
def test_sweep_groups_configurations_and_reports_skipped_jobs(sweep_dir, tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(sweep_dir, copy)
    # a third job of another configuration (same files, another cohort size in its overrides)
    shutil.copytree(copy / "0", copy / "2")
    overrides = (copy / "2" / ".hydra" / "overrides.yaml").read_text()
    (copy / "2" / ".hydra" / "overrides.yaml").write_text(
        overrides.replace("strategy.num_train_nodes=2", "strategy.num_train_nodes=3"))
    # and a job that failed before writing a history
    shutil.copytree(copy / "1" / ".hydra", copy / "3" / ".hydra")
    sweep, written = write_sweep(copy)
    assert [p.name for p in written] == ["summary.csv", "summary.md", "comparison.png"]
    assert sweep.skipped == [("3", "no history.json (job failed or still running)")]
    assert list(sweep.configs["configuration"]) == ["strategy.num_train_nodes=2", "strategy.num_train_nodes=3"]
    assert list(sweep.configs["n_jobs"]) == [2, 1]
    assert math.isnan(sweep.configs["final_wer_std"].iloc[1])
    assert "Skipped jobs" in (copy / "summary.md").read_text()
    assert collect(copy).common.get("num_rounds") == "1"


def write_job(folder: Path, overrides: list[str], config: dict, strategy: str, wer: float) -> None:
    """A finished job's files as Hydra and the recorder write them (2 rounds, given final WER)."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(
        {"hydra": {"runtime": {"choices": {"strategy": strategy, "model": "tiny"}},
                   "job": {"config": {"override_dirname": {"exclude_keys": ["paths.data"]}}}}}))
    history = [{"round": 0, "wer": 1.0, "elapsed_s": 1.0},
               {"round": 2, "wer": wer, "wer_unseen": wer + 0.1, "elapsed_s": 120.0}]
    (folder / "history.json").write_text(json.dumps(history))


def test_sweep_labels_name_what_each_job_ran_not_unset(tmp_path):
    """A job that did not override a key is labelled by its config's value (30 rounds, not 'unset')."""
    cfg = {"seed": 0, "federated": True, "strategy": {"name": "fedavg", "fraction_train": 0.1}}
    write_job(tmp_path / "0_fedavg", ["strategy=fedavg"], {**cfg, "num_rounds": 30}, "fedavg", 0.3)
    write_job(tmp_path / "1_fedadam", ["num_rounds=30", "strategy=fedadam", "paths.data=/x"],
              {**cfg, "num_rounds": 30, "strategy": {"name": "fedadam", "fraction_train": 0.1}}, "fedadam", 0.6)
    sweep = collect(tmp_path)
    assert list(sweep.configs["configuration"]) == ["strategy=fedavg", "strategy=fedadam"]
    assert sweep.common == {"num_rounds": "30"}
    # a third job that ran the config's default of 35 rounds (and spelt the others' fraction
    # 0.1 as 1e-1): num_rounds now differs between jobs, fraction_train does not
    write_job(tmp_path / "2_fedavg35", ["strategy.fraction_train=1e-1"], {**cfg, "num_rounds": 35},
              "fedavg", 0.2)
    sweep = collect(tmp_path)
    assert list(sweep.configs["configuration"]) == [
        "num_rounds=30,strategy=fedavg", "num_rounds=30,strategy=fedadam", "num_rounds=35,strategy=fedavg"]
    assert sweep.common == {"strategy.fraction_train": "0.1"}
    # one value spelt two ways is one configuration
    write_job(tmp_path / "4_fedavg35", ["num_rounds=35.0"], {**cfg, "num_rounds": 35}, "fedavg", 0.4)
    sweep = collect(tmp_path)
    assert list(sweep.configs["n_jobs"]) == [1, 1, 2]
    shutil.rmtree(tmp_path / "4_fedavg35")
    # a key only one job has (`+key`) names that job only: the others do not have it at all
    write_job(tmp_path / "3_extra", ["+train.extra=2"], {**cfg, "num_rounds": 35}, "fedavg", 0.2)
    assert list(collect(tmp_path).configs["configuration"]) == [
        "num_rounds=30,strategy=fedavg", "num_rounds=30,strategy=fedadam", "num_rounds=35,strategy=fedavg",
        "num_rounds=35,strategy=fedavg,train.extra=2"]


def test_sweep_spells_booleans_as_configs_do(tmp_path):
    """Hydra keeps an override as typed (`federated=False`); the name says false, as the config."""
    cfg = {"seed": 0, "num_rounds": 2, "strategy": {"name": "fedavg"}}
    write_job(tmp_path / "0", ["federated=False"], {**cfg, "federated": False}, "fedavg", 0.1)
    write_job(tmp_path / "1", [], {**cfg, "federated": True}, "fedavg", 0.3)
    sweep = collect(tmp_path)
    assert list(sweep.configs["configuration"]) == ["federated=false", "federated=true"]
    assert list(sweep.labels.values()) == ["federated=false", "federated=true"]


def test_sweep_plot_labels_drop_the_prefix_keys_share():
    assert short_keys(["strategy", "strategy.builder.eta.value", "strategy.builder.tau",
                       "strategy.dp.noise_multiplier", "num_rounds"]) == {
        "strategy": "strategy", "strategy.builder.eta.value": "eta.value", "strategy.builder.tau": "tau",
        "strategy.dp.noise_multiplier": "strategy.dp.noise_multiplier", "num_rounds": "num_rounds"}


def test_results_table_from_hand_written_jobs_groups_by_all_but_the_seed(tmp_path):
    cfg = {"federated": True, "num_rounds": 2, "strategy": {"name": "fedavgm"}}
    for seed, wer in enumerate([0.2, 0.3, 0.5]):
        write_job(tmp_path / "fl" / str(seed), [f"seed={seed}", "strategy=fedavgm"],
                  {**cfg, "seed": seed}, "fedavgm", wer)
    write_job(tmp_path / "central" / "0", ["federated=false"],
              {**cfg, "seed": 0, "federated": False}, "fedavg", 0.1)
    table = results_table([("FedAvgM", tmp_path / "fl"), ("centralised", tmp_path / "central")])
    assert list(table.columns) == ["run", "strategy", "seeds", "wer_mean", "wer_std", "wer_unseen_mean",
                                   "wer_unseen_std", "wall_min"]
    fl, central = table.to_dict("records")
    assert (fl["run"], fl["strategy"], fl["seeds"]) == ("FedAvgM", "fedavgm", "0 1 2")
    assert fl["wer_mean"] == pytest.approx(1 / 3) and fl["wer_std"] == pytest.approx(0.152752523)
    assert fl["wer_unseen_mean"] == pytest.approx(1 / 3 + 0.1) and fl["wall_min"] == pytest.approx(2.0)
    assert central["strategy"] == "centralised" and math.isnan(central["wer_std"])


@pytest.mark.slow     # uses a real run through main
def test_results_table_from_a_real_two_seed_multirun(sweep_dir, tmp_path):
    out = tmp_path / "summary.csv"
    run_module("fedspeech.analysis.results_table", f"tiny={sweep_dir}", "--out", str(out))
    table = pd.read_csv(out)
    assert list(table.columns) == ["run", "strategy", "seeds", "wer_mean", "wer_std", "wer_unseen_mean",
                                   "wer_unseen_std", "wall_min"]
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["run"], row["strategy"], str(row["seeds"])) == ("tiny", "fedavg", "1 2")
    runs = [read_history(sweep_dir / str(j))[-1] for j in (0, 1)]
    assert all(r["round"] == 1 for r in runs)
    for col, key in (("wer", "wer"), ("wer_unseen", "wer_unseen")):
        values = pd.Series([r[key] for r in runs])
        assert row[f"{col}_mean"] == pytest.approx(values.mean(), abs=1e-6)
        assert row[f"{col}_std"] == pytest.approx(values.std(ddof=1), abs=1e-6)
    assert row["wall_min"] == pytest.approx(sum(r["elapsed_s"] for r in runs) / 2 / 60, abs=1e-5)
    assert "| tiny | fedavg | 1 2 |" in out.with_suffix(".md").read_text()


@pytest.mark.slow     # uses real runs through main
def test_dp_tradeoff_reports_the_deployment_and_the_simulation_epsilon(run_dir, sweep_dir, tmp_path):
    run_module("fedspeech.analysis.dp_tradeoff", str(run_dir), "--baseline", str(sweep_dir / "0"),
               "--out", str(tmp_path))
    table = pd.read_csv(tmp_path / "dp_tradeoff.csv")
    assert len(table) == 1
    row = table.iloc[0]
    history = read_history(run_dir)
    assert (row["cohort"], row["population"], row["virtual_cohort"], row["virtual_population"]) == (2, 3, 100, 10000)
    assert (row["round"], row["rounds_released"]) == (2, 2) and row["wer"] == pytest.approx(history[-1]["wer"])
    # the run's own accounting is of the deployment: q = 100 / 10000 at z = 1
    assert row["epsilon_deployment"] == pytest.approx(history[-1]["epsilon"])
    assert row["epsilon_deployment"] == pytest.approx(
        UserLevelAccountant(1.0, 0.01, 1e-6, "pld").epsilon(2), rel=1e-6)
    # the 3 simulated clients got noise of multiplier 1 * 2 / 100 at q = 2 / 3
    assert row["epsilon_simulation"] == pytest.approx(
        UserLevelAccountant(0.02, 2 / 3, 1e-6, "rdp").epsilon(2), rel=1e-6)
    assert row["epsilon_simulation"] > 100 * row["epsilon_deployment"]
    assert_png(tmp_path / "dp_tradeoff.png")
    md = (tmp_path / "dp_tradeoff.md").read_text()
    assert "| 1 | 100 of 10000 | 2 |" in md and "| no DP |" in md
    # at round 1: one release, and the baseline's round 1
    early, _ = write_tradeoff(run_dir, baseline=sweep_dir / "0", out=tmp_path / "r1", at_round=1)
    assert (early["round"].iloc[0], early["rounds_released"].iloc[0]) == (1, 1)
    assert early["wer"].iloc[0] == pytest.approx(history[1]["wer"])
    assert early["epsilon_deployment"].iloc[0] == pytest.approx(history[1]["epsilon"])
    with pytest.raises(RunDirError, match="round 3"):
        write_tradeoff(run_dir, out=tmp_path / "r3", at_round=3)


def test_spearman_ranks_and_refuses_constant_input():
    rounds = pd.Series([0, 1, 2, 3, 3])
    assert spearman(rounds, pd.Series([0.9, 0.7, 0.5, 0.2, 0.2])) == pytest.approx(-1.0)
    assert spearman(rounds, pd.Series([0.1, 0.3, 0.2, 0.5, 0.4])) == pytest.approx(0.8720815992723809)  # scipy.stats.spearmanr
    assert math.isnan(spearman(rounds, pd.Series([1.0] * 5)))          # every speaker at the same WER
    assert math.isnan(spearman(rounds[:2], pd.Series([0.1, 0.2])))     # too few speakers
