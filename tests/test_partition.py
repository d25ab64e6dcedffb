"""Invariants of the client partitioners and the TED-LIUM 3 paper map importer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fedspeech.data.partition import (
    ClientIndex,
    DirichletPartitioner,
    GroupedSpeakersPartitioner,
    IidPartitioner,
    PartitionError,
    SizeSkewPartitioner,
    SpeakerPartitioner,
    TedliumPaperPartitioner,
    client_rows,
    map_statistics,
    paper_eval_ids,
    paper_eval_sets,
    read_paper_map,
    read_partition,
    write_partition,
)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PAPER_MAP = SHARED_DATA / "tedlium3_paper_clients"
COMPACT = PAPER_MAP / "all_clients.csv.gz"
ORIGINAL = PAPER_MAP / "original_format_sample"
needs_map = pytest.mark.skipif(not COMPACT.is_file() or not ORIGINAL.is_dir(),
                               reason=f"TED-LIUM paper client map not found under {PAPER_MAP}")


def make_manifest(seed: int = 0, speakers: int = 16) -> pd.DataFrame:
    """A manifest with uneven speakers, attributes with a missing value, and all three splits."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(speakers):
        gender = ["female", "male", ""][s % 3]
        accent = ["us", "uk", "in", "au", "ca"][s % 5]
        for u in range(10 + 7 * s):
            rows.append({"id": f"spk{s:02d}-{u:04d}", "audio": f"/audio/spk{s:02d}/{u}.flac", "start": 0.0,
                         "end": np.nan, "duration": round(float(rng.uniform(0.5, 16.0)), 2),
                         "speaker": f"spk{s:02d}", "text": "hello", "gender": gender,
                         "accent": accent if u % 4 else ["us", "uk", "in", "au", "ca"][u % 5],
                         "client_id": f"cv{s // 2:02d}",
                         "split": "train" if u % 10 < 8 else ("dev" if u % 10 == 8 else "test")})
    return pd.DataFrame(rows)


def all_partitioners() -> list:
    return [SpeakerPartitioner(), SpeakerPartitioner(key="client_id", name="speaker_cv"),
            GroupedSpeakersPartitioner(num_clients=4), IidPartitioner(num_clients=7),
            DirichletPartitioner(num_clients=5, attribute="accent", alpha=0.5),
            SizeSkewPartitioner(num_clients=6, exponent=1.2)]


@pytest.mark.parametrize("partitioner", all_partitioners(), ids=lambda p: p.name)
def test_every_train_utterance_exactly_once(partitioner, tmp_path):
    manifest = make_manifest()
    train_ids = set(manifest.loc[manifest["split"] == "train", "id"])
    summary = write_partition(manifest, partitioner, 3, tmp_path)
    clients = read_partition(tmp_path)
    assert len(clients) == len(train_ids) and set(clients["id"]) == train_ids
    assert sorted(clients["client"].unique()) == list(range(summary["num_clients"]))
    assert summary["totals"]["utterances"] == len(train_ids)
    assert summary["totals"]["non_train_rows_ignored"] == len(manifest) - len(train_ids)
    per = summary["clients"]
    assert sum(c["utterances"] for c in per) == len(train_ids)
    seconds = manifest.set_index("id").loc[clients["id"], "duration"].groupby(clients["client"].to_numpy()).sum()
    assert np.allclose([c["seconds"] for c in per], seconds.to_numpy(), atol=1e-3)
    assert summary["partitioner"]["name"] == partitioner.name and summary["seed"] == 3
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert (tmp_path / "client_sizes.png").stat().st_size > 1000
    assert pd.read_csv(tmp_path / "excluded.csv").empty
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp files left behind"


def test_assign_is_index_aligned_and_rejects_other_splits():
    manifest = make_manifest()
    train = manifest[manifest["split"] == "train"]
    labels = IidPartitioner(num_clients=3).assign(train, seed=1).labels
    assert labels.index.equals(train.index) and labels.notna().all()
    with pytest.raises(PartitionError, match="train rows only"):
        IidPartitioner(num_clients=3).assign(manifest, seed=1)


@pytest.mark.parametrize("partitioner", all_partitioners(), ids=lambda p: p.name)
def test_deterministic_per_seed_and_seed_matters_where_random(partitioner, tmp_path):
    manifest = make_manifest()
    write_partition(manifest, partitioner, 5, tmp_path / "a")
    write_partition(manifest.sample(frac=1.0, random_state=1), partitioner, 5, tmp_path / "b")
    write_partition(manifest, partitioner, 6, tmp_path / "c")
    a, b, c = ((tmp_path / d / "clients.csv").read_bytes() for d in "abc")
    assert a == b, "same seed (and shuffled manifest rows) must give the same partition"
    assert (a != c) == partitioner.uses_seed


def test_speaker_partition_is_one_speaker_per_client(tmp_path):
    manifest = make_manifest()
    summary = write_partition(manifest, SpeakerPartitioner(), 0, tmp_path)
    assert summary["num_clients"] == manifest["speaker"].nunique()
    assert all(c["speakers"] == [c["label"]] for c in summary["clients"])
    cv = write_partition(manifest, SpeakerPartitioner(key="client_id"), 0, tmp_path / "cv")
    assert cv["num_clients"] == manifest["client_id"].nunique()
    assert [c["label"] for c in cv["clients"]] == sorted(manifest["client_id"].unique())


def test_grouped_speakers_balanced_in_seconds(tmp_path):
    manifest = make_manifest(speakers=30)
    train = manifest[manifest["split"] == "train"]
    summary = write_partition(manifest, GroupedSpeakersPartitioner(num_clients=6), 0, tmp_path)
    seconds = [c["seconds"] for c in summary["clients"]]
    largest_speaker = train.groupby("speaker")["duration"].sum().max()
    assert max(seconds) - min(seconds) <= largest_speaker + 1e-6
    assert (max(seconds) - min(seconds)) / np.mean(seconds) < 0.1  # round-robin dealing gives ~0.28 here
    per_speaker = train.groupby("speaker")["duration"].sum()
    for client in summary["clients"]:  # greedy: a client's last (smallest) speaker went to the lightest client
        assert client["seconds"] - per_speaker[client["speakers"]].min() <= min(seconds) + 1e-6
    owners = [s for c in summary["clients"] for s in c["speakers"]]
    assert sorted(owners) == sorted(train["speaker"].unique()), "each speaker in exactly one client"


def _skew(manifest: pd.DataFrame, clients: pd.DataFrame, attribute: str) -> float:
    """Size-weighted mean total-variation distance of client attribute mix from the global mix."""
    rows = manifest.set_index("id").loc[clients["id"]]
    table = pd.crosstab(clients["client"].to_numpy(), rows[attribute].to_numpy())
    overall = table.sum() / table.to_numpy().sum()
    mix = table.div(table.sum(axis=1), axis=0)
    tv = 0.5 * (mix - overall).abs().sum(axis=1)
    return float(np.average(tv, weights=table.sum(axis=1)))


def test_dirichlet_skew_grows_as_alpha_shrinks(tmp_path):
    manifest = make_manifest(speakers=20)
    skew = {}
    for alpha in (0.05, 1.0, 100.0):
        values = []
        for seed in range(3):
            part = DirichletPartitioner(num_clients=5, attribute="accent", alpha=alpha, min_partition_size=0)
            out = tmp_path / f"{alpha}_{seed}"
            write_partition(manifest, part, seed, out)
            values.append(_skew(manifest, read_partition(out), "accent"))
        skew[alpha] = np.mean(values)
    assert skew[0.05] > skew[1.0] > skew[100.0]
    assert skew[100.0] < 0.1 and skew[0.05] > 0.4


def test_dirichlet_missing_values_kept_or_excluded(tmp_path):
    manifest = make_manifest()
    train = manifest[manifest["split"] == "train"]
    n_missing = int((train["gender"] == "").sum())
    keep = write_partition(manifest, DirichletPartitioner(3, "gender", 1.0), 0, tmp_path / "keep")
    assert keep["totals"]["utterances"] == len(train)
    drop = write_partition(manifest, DirichletPartitioner(3, "gender", 1.0, missing="exclude"), 0, tmp_path / "drop")
    assert drop["totals"]["excluded_by_reason"] == {"missing_gender": n_missing}
    assert drop["totals"]["utterances"] == len(train) - n_missing


def test_size_skew_power_law(tmp_path):
    manifest = make_manifest()
    n_train = int((manifest["split"] == "train").sum())
    flat = SizeSkewPartitioner(num_clients=6, exponent=0.0).sizes(n_train)
    assert flat.sum() == n_train and flat.max() - flat.min() <= 1
    steep = SizeSkewPartitioner(num_clients=6, exponent=1.5).sizes(n_train)
    assert steep.sum() == n_train and all(np.diff(steep) <= 0)
    assert steep[0] / steep[-1] == pytest.approx(6 ** 1.5, rel=0.15)
    summary = write_partition(manifest, SizeSkewPartitioner(num_clients=6, exponent=1.5), 0, tmp_path)
    assert [c["utterances"] for c in summary["clients"]] == steep.tolist()


def test_filters_are_reported_not_dropped(tmp_path):
    manifest = make_manifest()
    manifest.loc[3, "duration"] = np.nan
    train = manifest[manifest["split"] == "train"]
    part = SpeakerPartitioner(min_duration=2.0, max_duration=14.0, min_utterances=20)
    summary = write_partition(manifest, part, 0, tmp_path)
    excluded = pd.read_csv(tmp_path / "excluded.csv", keep_default_na=False)
    clients = read_partition(tmp_path)
    assert set(excluded["id"]) | set(clients["id"]) == set(train["id"])
    assert not set(excluded["id"]) & set(clients["id"])
    d = train["duration"]
    in_range = train[(d >= 2.0) & (d <= 14.0)]
    small = in_range.groupby("speaker").size().loc[lambda s: s < 20]
    expected = {"duration_missing": 1, "duration_below_min": int((d < 2.0).sum()),
                "duration_above_max": int((d > 14.0).sum()), "client_below_min_utterances": int(small.sum())}
    assert summary["totals"]["excluded_by_reason"] == expected
    assert summary["num_clients"] == in_range["speaker"].nunique() - len(small)
    assert set(excluded.loc[excluded["reason"] == "client_below_min_utterances", "client"]) == set(small.index)


def test_read_partition_and_client_rows(tmp_path):
    manifest = make_manifest()
    write_partition(manifest, GroupedSpeakersPartitioner(num_clients=3), 0, tmp_path)
    clients = read_partition(tmp_path / "clients.csv")
    rows = client_rows(manifest, clients, 1)
    assert set(rows["id"]) == set(clients.loc[clients["client"] == 1, "id"])
    assert (rows["split"] == "train").all()
    with pytest.raises(PartitionError, match="not in the partition"):
        client_rows(manifest, clients, 3)
    with pytest.raises(PartitionError, match="not in this manifest"):
        client_rows(manifest[manifest["id"] != rows["id"].iloc[0]], clients, 1)
    pd.concat([clients, clients.head(1)]).to_csv(tmp_path / "clients.csv", index=False)
    with pytest.raises(PartitionError, match="more than once"):
        read_partition(tmp_path)


def test_client_index_matches_per_client_lookup(tmp_path):
    """One join gives every client the rows and sizes a scan per client gives."""
    manifest = make_manifest().sample(frac=1.0, random_state=0)       # not in client order
    write_partition(manifest, GroupedSpeakersPartitioner(num_clients=3), 0, tmp_path)
    clients = read_partition(tmp_path / "clients.csv")
    index = ClientIndex(manifest, clients)
    for client in range(3):
        ids = set(clients.loc[clients["client"] == client, "id"])
        scanned = manifest[manifest["id"].isin(ids)]                 # manifest order
        pd.testing.assert_frame_equal(index.rows(client), scanned)
        assert index.sizes(client) == {"num-examples": float(len(scanned)),
                                       "num-seconds": float(scanned["duration"].sum())}
    with pytest.raises(PartitionError, match="not in the partition"):
        index.sizes(3)
    gone, lost = clients["id"].iloc[0], int(clients["client"].iloc[0])
    short = ClientIndex(manifest[manifest["id"] != gone], clients)
    with pytest.raises(PartitionError, match="1 of its .* utterances are not in this manifest"):
        short.sizes(lost)


def test_bad_input_gives_clear_errors():
    manifest = make_manifest()
    train = manifest[manifest["split"] == "train"]
    with pytest.raises(PartitionError, match="'dialect' is not in the manifest"):
        DirichletPartitioner(num_clients=3, attribute="dialect", alpha=1.0).assign(train, 0)
    with pytest.raises(PartitionError, match="only 16 speakers"):
        GroupedSpeakersPartitioner(num_clients=17).assign(train, 0)
    for alpha in (0.0, -1.0):
        with pytest.raises(PartitionError, match="alpha must be > 0"):
            DirichletPartitioner(num_clients=3, attribute="gender", alpha=alpha)
    with pytest.raises(PartitionError, match="num_clients must be a positive integer"):
        IidPartitioner(num_clients=0)
    with pytest.raises(PartitionError, match="exponent must be >= 0"):
        SizeSkewPartitioner(num_clients=3, exponent=-1.0)
    with pytest.raises(PartitionError, match="max_duration"):
        SpeakerPartitioner(min_duration=5.0, max_duration=2.0)
    with pytest.raises(PartitionError, match="speaker key column 'client'"):
        SpeakerPartitioner(key="client").assign(train, 0)
    with pytest.raises(PartitionError, match="fewer than 200 utterances"):
        DirichletPartitioner(num_clients=5, attribute="gender", alpha=0.05, min_partition_size=200).assign(train, 0)
    with pytest.raises(PartitionError, match=f"all {len(train)} train utterances were excluded \\({len(train)} "
                                             "client_below_min_utterances\\)"):
        SpeakerPartitioner(min_utterances=1000).assign(train, 0)
    with pytest.raises(PartitionError, match="duplicate utterance ids"):
        IidPartitioner(num_clients=2).assign(pd.concat([train, train.head(2)]), 0)


@pytest.mark.parametrize("config", sorted((REPO / "conf" / "partitioner").glob("*.yaml")), ids=lambda p: p.stem)
def test_hydra_configs_instantiate(config):
    cfg = OmegaConf.merge({"paths": {"shared_data": str(SHARED_DATA)}},
                          {"partitioner": OmegaConf.load(config)})
    partitioner = instantiate(cfg.partitioner)
    assert partitioner.name == config.stem == partitioner.kind
    if config.stem == "tedlium_paper":
        assert Path(partitioner.map_path) == COMPACT


# --------------------------------------------------------------------------- TED-LIUM paper map
def paper_manifest(map_rows: pd.DataFrame, extra: int = 3) -> pd.DataFrame:
    """A TED-LIUM-3-train-like manifest from map rows (all files are TED-LIUM train data), plus
    `extra` utterances of a talk the map does not know."""
    rows = map_rows.drop_duplicates("ID")
    manifest = pd.DataFrame({"id": rows["ID"], "audio": "/ted/sph/" + rows["talk"] + ".sph",
                             "start": rows["start"], "end": rows["end"], "duration": rows["duration"],
                             "speaker": rows["talk"], "text": "x", "split": "train"})
    unknown = pd.DataFrame({"id": [f"NoSuchTalk_2020_{i}_{i + 1}" for i in range(extra)],
                            "audio": "/ted/sph/NoSuchTalk_2020.sph", "start": np.arange(extra, dtype=float),
                            "end": np.arange(extra, dtype=float) + 1, "duration": 1.0,
                            "speaker": "NoSuchTalk_2020", "text": "x", "split": "train"})
    return pd.concat([manifest, unknown], ignore_index=True)


@pytest.fixture(scope="module")
def sample_map() -> pd.DataFrame:
    if not ORIGINAL.is_dir():
        pytest.skip(f"no original-format sample at {ORIGINAL}")
    return read_paper_map(ORIGINAL, verbose=False)


@pytest.fixture(scope="module")
def small_compact(tmp_path_factory, sample_map) -> Path:
    """The compact map cut down to the sample clients, client_1340 (with held-out 5 minutes) and
    the two clients that share the talk CarolineLavelleFARTHERTHANTHESUN_2005."""
    if not COMPACT.is_file():
        pytest.skip(f"no compact map at {COMPACT}")
    full = pd.read_csv(COMPACT, dtype=str)
    keep = {"client_1340", "client_1500", "client_1888", "client_1961", "client_1982"}
    path = tmp_path_factory.mktemp("map") / "small_clients.csv.gz"
    full[full["client"].isin(keep)].to_csv(path, index=False)
    return path


@needs_map
def test_original_format_reads_like_the_compact_file(sample_map):
    compact = read_paper_map(COMPACT, verbose=False)
    part = compact[compact["client"].isin(["client_1500", "client_1982"])]
    cols = ["client", "file", "ID", "talk", "start", "end", "duration"]
    sort = lambda f: f[cols].sort_values(["client", "file", "ID"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(sort(sample_map), sort(part), check_dtype=False)
    counts = sample_map.groupby(["client", "file"]).size().to_dict()
    assert counts == {("client_1500", "ted_dev"): 9, ("client_1500", "ted_test"): 8, ("client_1500", "ted_train"): 64,
                      ("client_1982", "ted_dev"): 1, ("client_1982", "ted_test"): 1, ("client_1982", "ted_train"): 7}


@needs_map
@pytest.mark.parametrize("source", ["original", "compact"])
def test_tedlium_paper_importer_counts(source, sample_map, tmp_path):
    manifest = paper_manifest(sample_map)
    map_path = ORIGINAL if source == "original" else COMPACT
    summary = write_partition(manifest, TedliumPaperPartitioner(str(map_path)), 0, tmp_path)
    reasons = summary["totals"]["excluded_by_reason"]
    assert summary["num_clients"] == 2 and summary["totals"]["utterances"] == 71
    assert [(c["label"], c["utterances"]) for c in summary["clients"]] == [("client_1500", 64), ("client_1982", 7)]
    assert reasons["map_client_heldout_split"] == 19 and reasons["not_in_map"] == 3
    if source == "compact":  # the whole map is in scope: its other training ids are reported
        assert reasons["map_duplicate_id"] == 973
        assert reasons["map_id_not_in_manifest"] == 214058 - 71
    else:
        assert set(reasons) == {"map_client_heldout_split", "not_in_map"}
    clients = read_partition(tmp_path)
    train_map = sample_map[sample_map["file"] == "ted_train"]
    assert set(clients["id"]) == set(train_map["ID"])

    first = write_partition(manifest, TedliumPaperPartitioner(str(map_path), num_clients=1943), 0, tmp_path / "k")
    assert first["num_clients"] == 1 and first["clients"][0]["label"] == "client_1500"
    assert first["totals"]["excluded_by_reason"]["map_client_beyond_num_clients"] == 7


@needs_map
def test_tedlium_paper_matches_ids_written_differently(small_compact, tmp_path):
    frame = read_paper_map(small_compact, verbose=False)
    manifest = paper_manifest(frame, extra=0)
    cents = lambda t: (t * 100).round().astype(int).astype(str)
    manifest["id"] = manifest["speaker"] + "-" + cents(manifest["start"]) + "-" + cents(manifest["end"])
    manifest.loc[manifest.index[:5], "speaker"] = "renamed"  # falls back to the audio file's stem
    summary = write_partition(manifest, TedliumPaperPartitioner(str(small_compact)), 0, tmp_path)
    info = summary["info"]
    assert info["matched_by_id"] == 0 and info["matched_by_audio_time"] == 5
    assert info["matched_by_speaker_time"] == len(manifest) - 5
    assert "not_in_map" not in summary["totals"]["excluded_by_reason"]
    assert "map_id_not_in_manifest" not in summary["totals"]["excluded_by_reason"]


@needs_map
def test_tedlium_paper_duplicates_and_heldout(small_compact, tmp_path):
    frame = read_paper_map(small_compact, verbose=False)
    manifest = paper_manifest(frame, extra=0)
    train = frame[frame["file"] == "ted_train"]
    shared = set(train.loc[train["client"] == "client_1888", "ID"]) & set(train.loc[train["client"] == "client_1961", "ID"])
    assert shared, "the two clients share utterances in the published map"
    summary = write_partition(manifest, TedliumPaperPartitioner(str(small_compact)), 0, tmp_path)
    excluded = pd.read_csv(tmp_path / "excluded.csv")
    dup = excluded[excluded["reason"] == "map_duplicate_id"]
    assert set(dup["id"]) == shared and set(dup["client"]) == {"client_1961"}
    assert (dup["detail"] == "kept in client_1888").all()
    clients = read_partition(tmp_path)
    assert set(clients["id"]) == set(train["ID"]) and clients["id"].is_unique

    full5 = set(frame.loc[frame["file"] == "ted_train_full5", "ID"])
    assert len(full5) == 49
    held = write_partition(manifest, TedliumPaperPartitioner(str(small_compact), exclude_heldout=True),
                           0, tmp_path / "held")
    assert held["totals"]["excluded_by_reason"]["paper_heldout_5min"] == 49
    assert not full5 & set(read_partition(tmp_path / "held")["id"])
    with pytest.raises(PartitionError, match="the map has 1983 clients"):
        TedliumPaperPartitioner(str(small_compact), num_clients=2000).assign(manifest, 0)


@needs_map
def test_paper_eval_sets():
    sets = paper_eval_sets(COMPACT)
    assert {k: len(v) for k, v in sets.items()} == {"ted_train_full5": 65468, "ted_train_wo5": 116607}
    assert sets["ted_train_full5"]["client"].nunique() == 1341
    full5, wo5 = sets["ted_train_full5"], sets["ted_train_wo5"]
    assert full5.merge(wo5, on=["client", "id"]).empty, "disjoint within each client"
    # across clients they meet only in talks the map gives to two clients (different 5-min picks)
    both = set(full5["id"]) & set(wo5["id"])
    assert len(both) == 145
    assert set(full5.loc[full5["id"].isin(both), "talk"]) == {
        "GretchenCarlsonandDavidBrooks_2017S", "ImamFeisalAbdulRauf_2009P", "SriSwamiDayanandaSaraswati_2009P"}
    minutes = sets["ted_train_full5"].groupby("client")["duration"].sum() / 60
    assert 4.5 < minutes.median() <= 5.0
    assert len(paper_eval_ids(COMPACT, "ted_train_full5", num_clients=10)) == int(
        (sets["ted_train_full5"]["client"].str[7:].astype(int) < 10).sum())
    with pytest.raises(PartitionError, match="unknown held-out set"):
        paper_eval_ids(COMPACT, "ted_dev")


@needs_map
def test_map_statistics_of_the_published_map():
    stats = map_statistics(COMPACT)
    assert stats["clients"] == 1983 and stats["utterances"] == 215031
    assert stats["unique_utterance_ids"] == 214058
    assert stats["hours"] == pytest.approx(363.58, abs=0.01)
    minutes = stats["minutes_per_client"]
    assert minutes["median"] == pytest.approx(10.13, abs=0.01)
    assert minutes["max"] == pytest.approx(102.14, abs=0.01) and minutes["argmax"] == "client_0"
    assert minutes["min"] == pytest.approx(0.35, abs=0.01)
    sample = map_statistics(ORIGINAL)
    assert sample["clients"] == 2 and sample["utterances"] == 71


def test_unreadable_map_gives_clear_error(tmp_path):
    bad = tmp_path / "map.csv"
    pd.DataFrame({"client": ["client_0"], "ID": ["a_1_2"]}).to_csv(bad, index=False)
    with pytest.raises(PartitionError, match="lacks columns"):
        read_paper_map(bad)
    with pytest.raises(FileNotFoundError):
        read_paper_map(tmp_path / "missing.csv.gz")
