"""The champion gate, lineage tags, registration and promotion (embedded SQLite registry).

The first half is pure (no MLflow import): `decide_promotion` on every edge of the rule,
metric flattening, lineage hashing. The second half registers real versions of a tiny random
R2D2 into a fresh `sqlite:///` store and promotes them through the library and the CLI,
including two promoter processes racing.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from r2d2.registry.lineage import dvc_md5, git_state, lineage_tags, params_hash, validation_result
from r2d2.registry.promote import decide_promotion, flatten_eval_metrics, metrics_from_tags, primary_metric


def m(**kw: float) -> dict[str, float]:
    """`m(a_mr=30)` -> {"a.mr": 30.0}: dataset and metric joined by the first underscore."""
    return {k.replace("_", ".", 1): float(v) for k, v in kw.items()}


# --------------------------------------------------------------------------- decide_promotion (pure)


def test_no_champion_promotes_whatever_the_numbers() -> None:
    d = decide_promotion(None, m(a_mr=1.0))
    assert d.promote and "no champion" in d.reason and d.primary_challenger == 1.0


@pytest.mark.parametrize(("delta", "promoted"), [(0.5, True), (0.49, False), (0.0, False), (-3.0, False), (10.0, True)])
def test_margin_is_inclusive_and_strict_below(delta: float, promoted: bool) -> None:
    champ = m(a_mr=30.1, b_mr=50.3)
    chall = m(a_mr=30.1 + delta, b_mr=50.3 + delta)
    d = decide_promotion(champ, chall, margin=0.5, tolerance=1.0)
    assert d.promote is promoted, d.reason
    assert d.primary_delta == pytest.approx(delta)
    if not promoted:
        assert "margin" in d.reason


def test_regression_beyond_tolerance_blocks_and_at_tolerance_does_not() -> None:
    champ = m(a_mr=30, a_t2i_r1=20, icm_auc=80)
    assert decide_promotion(champ, m(a_mr=35, a_t2i_r1=21, icm_auc=79.0), 0.5, 1.0).promote  # -1.0: allowed
    d = decide_promotion(champ, m(a_mr=35, a_t2i_r1=21, icm_auc=78.9), 0.5, 1.0)  # -1.1: blocked
    assert not d.promote and d.regressions == ["icm.auc"] and "icm.auc" in d.reason
    assert decide_promotion(champ, m(a_mr=35, a_t2i_r1=21, icm_auc=78.9), 0.5, 1.2).promote


def test_one_dataset_regressing_blocks_even_when_the_mean_improves() -> None:
    d = decide_promotion(m(a_mr=30, b_mr=60), m(a_mr=36, b_mr=58), margin=0.5, tolerance=1.0)
    assert d.primary_delta == pytest.approx(2.0)  # (36+58)/2 - (30+60)/2
    assert not d.promote and d.regressions == ["b.mr"]


def test_primary_uses_only_datasets_both_report() -> None:
    # The challenger skipped hard dataset b: over all its datasets it would look +15 better.
    champ, chall = m(a_mr=40, b_mr=10), m(a_mr=40.2)
    d = decide_promotion(champ, chall)
    assert d.datasets == ["a"] and d.primary_champion == 40 and d.primary_delta == pytest.approx(0.2)
    assert not d.promote
    assert [r.status for r in d.rows if r.metric == "b.mr"] == ["missing"]  # shown, not decisive
    assert decide_promotion(m(a_mr=40, b_mr=10), m(a_mr=41, c_mr=0)).promote  # a new dataset never blocks


def test_no_shared_retrieval_dataset_cannot_promote() -> None:
    d = decide_promotion(m(a_mr=40), m(b_mr=90, icm_auc=99))
    assert not d.promote and d.primary_delta is None and "cannot be compared" in d.reason


def test_invalid_margins_are_rejected_and_table_shows_every_metric() -> None:
    with pytest.raises(ValueError):
        decide_promotion(m(a_mr=1), m(a_mr=2), margin=-0.1)
    with pytest.raises(ValueError):
        decide_promotion(m(a_mr=1), m(a_mr=2), tolerance=-1)
    table = decide_promotion(m(a_mr=30, icm_auc=70), m(a_mr=31, icm_auc=69.5)).table()
    assert "primary (mean MR over 1 datasets)  30.00     31.00       +1.00" in table
    assert "icm.auc" in table and "-0.50" in table and "worse" in table and "PROMOTE" in table


def test_flatten_real_evaluate_json_and_tags_roundtrip() -> None:
    doc = {"retrieval": {"t2i": {"r1": 50.0, "r5": 75.0, "r10": 100.0, "num_queries": 4},
                         "i2t": {"r1": 25.0, "r5": 50.0, "r10": 75.0, "num_queries": 4}, "mr": 62.5},
           "matching": {"auc": 81.25, "accuracy": None, "num_pairs": 8}}
    flat = flatten_eval_metrics(doc, "Flickr30k CN")
    assert flat == {"Flickr30k_CN.t2i.r1": 50.0, "Flickr30k_CN.t2i.r5": 75.0, "Flickr30k_CN.t2i.r10": 100.0,
                    "Flickr30k_CN.i2t.r1": 25.0, "Flickr30k_CN.i2t.r5": 50.0, "Flickr30k_CN.i2t.r10": 75.0,
                    "Flickr30k_CN.mr": 62.5, "Flickr30k_CN.auc": 81.25}
    tags = {f"metric.{k}": repr(v) for k, v in flat.items()} | {"lineage.git_commit": "abc"}
    assert metrics_from_tags(tags) == flat
    assert primary_metric({**flat, "x.mr": 37.5}) == 50.0


# --------------------------------------------------------------------------- lineage (pure)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_lineage_tags_from_a_real_checkout(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    assert git_state(repo) == {"git_commit": "none", "git_dirty": "none"}
    _git(repo, "init", "-q")
    (repo / "params.yaml").write_text("# lr\npretrain: {lr: 0.001, batch_size: 8}\nservices: {s3: {port: 1}}\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "x")
    head = _git(repo, "rev-parse", "HEAD")
    assert git_state(repo) == {"git_commit": head, "git_dirty": "false"}

    h = params_hash(repo / "params.yaml")
    (repo / "params.yaml").write_text("services: {s3: {port: 2}}\npretrain:\n  batch_size: 8\n  lr: 0.001\n")
    assert params_hash(repo / "params.yaml") == h  # order, comments, non-model sections: same recipe
    assert git_state(repo)["git_dirty"] == "true"
    (repo / "params.yaml").write_text("pretrain: {lr: 0.002, batch_size: 8}\n")
    assert params_hash(repo / "params.yaml") != h

    assert dvc_md5(repo / "data.dvc") == "none"
    (repo / "data.dvc").write_text("outs:\n- md5: 0123abcd.dir\n  size: 10\n  nfiles: 2\n  path: data\n")
    assert dvc_md5(repo / "data.dvc") == "0123abcd.dir"

    snap = repo / "snapshot.json"
    snap.write_text(json.dumps({"snapshot_hash": "s1", "shards": 2}))
    (repo / "validate.json").write_text(json.dumps({"status": "passed", "gx": {"success": False}}))
    tags = lineage_tags(repo, snapshot_manifest="snapshot.json", validation="validate.json")
    assert tags["lineage.git_commit"] == head and tags["lineage.git_dirty"] == "true"
    assert tags["lineage.data_dvc_md5"] == "0123abcd.dir"
    assert tags["lineage.snapshot_manifest_sha256"] == hashlib.sha256(snap.read_bytes()).hexdigest()
    assert tags["lineage.snapshot_hash"] == "s1"
    assert tags["lineage.gx_success"] == "false"  # the GX flag wins over the overall status
    assert tags["lineage.params_sha256"] == params_hash(repo / "params.yaml")
    assert tags["lineage.version.torch"].startswith("2.") and tags["lineage.version.r2d2"] != ""
    assert lineage_tags(repo)["lineage.snapshot_manifest_sha256"] == "none"
    assert lineage_tags(repo)["lineage.gx_success"] == "none"


def test_validation_result_formats(tmp_path: Path) -> None:
    p = tmp_path / "v.json"
    for doc, want in [({"success": True}, "true"), ({"gx": {"success": True}}, "true"), ({"status": "failed"}, "false"),
                      ({"gx": None, "status": "passed"}, "true")]:
        p.write_text(json.dumps(doc))
        assert validation_result(p) == want, doc
    p.write_text("{}")
    with pytest.raises(ValueError, match="not a validation result"):
        validation_result(p)


# --------------------------------------------------------------------------- registry (embedded SQLite)


def eval_json(path: Path, mr: float | None = None, auc: float | None = None) -> Path:
    """An `r2d2 evaluate`-shaped JSON whose six recalls all equal `mr` (so their mean is `mr`)."""
    doc: dict = {"model": "x"}
    if mr is not None:
        doc["retrieval"] = {d: {"r1": mr, "r5": mr, "r10": mr, "num_queries": 16} for d in ("t2i", "i2t")} | {"mr": mr}
    if auc is not None:
        doc["matching"] = {"auc": auc, "accuracy": 50.0, "num_pairs": 32, "num_positive": 16}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import torch

    from r2d2.config import model_config
    from r2d2.model.io import save_pretrained
    from r2d2.model.r2d2 import build_model

    work = tmp_path_factory.mktemp("registry")
    torch.manual_seed(0)
    save_pretrained(build_model(model_config(size="tiny")), work / "model")
    return {"work": work, "uri": f"sqlite:///{work / 'mlflow.db'}"}


def register(store: dict, tag: str, mr: float, auc: float) -> str:
    from r2d2.registry.register import register_model

    w = store["work"] / tag
    files = {"flickr": eval_json(w / "flickr.json", mr=mr), "icm": eval_json(w / "icm.json", auc=auc)}
    return register_model(store["work"] / "model", files, "R2D2", tracking_uri=store["uri"], repo=store["work"]).version


def version_tags(store: dict, version: str) -> dict[str, str]:
    from r2d2.registry.tracking import client_for

    return dict(client_for(store["uri"]).get_model_version("R2D2", version).tags)


def alias(store: dict, name: str) -> str:
    from r2d2.registry.tracking import client_for

    return str(client_for(store["uri"]).get_model_version_by_alias("R2D2", name).version)


def test_register_cli_tags_lineage_and_first_promotion(store: dict, capsys: pytest.CaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from r2d2.cli import main

    w = store["work"]
    monkeypatch.chdir(w)  # the project root lineage is read from (no git, no data.dvc here)
    snap = w / "snap" / "snapshot.json"
    snap.parent.mkdir()
    snap.write_text('{"snapshot_hash": "abc"}')
    (w / "validate.json").write_text('{"gx": {"success": true}}')
    flickr, icm = eval_json(w / "v1/flickr.json", mr=30.0), eval_json(w / "v1/icm/metrics.json", auc=70.0)
    t0 = time.perf_counter()
    assert main(["register", "--model", str(w / "model"), "--metrics", f"flickr={flickr}", str(icm), "--name", "R2D2",
                 "--snapshot-manifest", str(snap), "--validation", str(w / "validate.json"),
                 "--tracking-uri", store["uri"], "--params", str(w / "none.yaml")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == "1" and "alias challenger" in out[0]
    print(f"register via CLI: {time.perf_counter() - t0:.1f}s")
    tags = version_tags(store, "1")
    assert tags["metric.flickr.mr"] == "30.0" and tags["metric.icm.auc"] == "70.0" and tags["metric.flickr.i2t.r10"] == "30.0"
    assert tags["lineage.snapshot_manifest_sha256"] == hashlib.sha256(snap.read_bytes()).hexdigest()
    assert tags["lineage.gx_success"] == "true" and tags["lineage.data_dvc_md5"] == "none"
    assert tags["lineage.params_sha256"] == "none" and tags["primary_metric"] == "30.0000"
    assert {"lineage.git_commit", "lineage.git_dirty", "lineage.version.mlflow", "lineage.version.transformers"} <= set(tags)
    assert alias(store, "challenger") == "1"

    from r2d2.registry.promote import promote

    res = promote("R2D2", tracking_uri=store["uri"])
    assert res.decision.promote and res.champion_before is None and res.champion_after == "1"
    tags = version_tags(store, "1")
    assert tags["promotion.decision"] == "promoted" and tags["previous_champion"] == "none" and "promoted_at" in tags


def test_better_by_less_than_margin_or_regressing_is_not_promoted(store: dict) -> None:
    from r2d2.registry.promote import promote

    v2 = register(store, "v2", mr=30.4, auc=70.0)  # +0.4 < margin 0.5
    assert alias(store, "challenger") == v2
    res = promote("R2D2", margin=0.5, tolerance=1.0, tracking_uri=store["uri"])
    assert not res.decision.promote and res.decision.primary_delta == pytest.approx(0.4)
    assert alias(store, "champion") == "1"
    tags = version_tags(store, v2)
    assert tags["promotion.decision"] == "rejected" and "margin" in tags["promotion.reason"]
    assert tags["promotion.compared_with"] == "1" and "promoted_at" not in tags
    assert json.loads(tags["promotion.comparison"])[0]["delta"] == pytest.approx(0.4)

    v3 = register(store, "v3", mr=33.0, auc=68.5)  # primary +3, but AUC -1.5 > tolerance 1.0
    res = promote("R2D2", tracking_uri=store["uri"])
    assert not res.decision.promote and res.decision.regressions == ["icm.auc"]
    assert alias(store, "champion") == "1" and version_tags(store, v3)["promotion.regressions"] == "icm.auc"


def test_dry_run_changes_nothing_then_cli_promotes(store: dict, capsys: pytest.CaptureFixture) -> None:
    from r2d2.cli import main

    v4 = register(store, "v4", mr=32.0, auc=69.2)  # +2 and AUC -0.8, within tolerance
    before = version_tags(store, v4)
    assert main(["promote", "--name", "R2D2", "--dry-run", "--tracking-uri", store["uri"], "--params", "none.yaml"]) == 0
    out = capsys.readouterr().out
    assert "primary (mean MR over 1 datasets)  30.00     32.00       +2.00" in out
    assert "icm.auc" in out and "-0.80" in out and "would become: version 4" in out
    assert version_tags(store, v4) == before and alias(store, "champion") == "1"

    assert main(["promote", "--name", "R2D2", "--tracking-uri", store["uri"], "--params", "none.yaml"]) == 0
    assert "champion is now: version 4" in capsys.readouterr().out
    assert alias(store, "champion") == v4
    tags = version_tags(store, v4)
    assert tags["promotion.decision"] == "promoted" and tags["previous_champion"] == "1" and tags["promoted_at"]
    assert tags["promotion.primary_delta"] == "2.0000" and version_tags(store, "1")["superseded_by"] == v4
    assert main(["promote", "--name", "R2D2", "--tracking-uri", store["uri"], "--params", "none.yaml",
                 "--fail-if-rejected"]) == 3  # already champion: nothing to do
    assert "already the champion" in capsys.readouterr().out


RACER = r"""
import json, sys, time
from pathlib import Path
import r2d2.registry.promote as P
import mlflow  # noqa: F401  (imported before the start line so both racers start together)

decide = P.decide_promotion
def slow_decide(*args, **kwargs):  # widen the read-decide-move window to 1.5 s
    time.sleep(1.5)
    return decide(*args, **kwargs)
P.decide_promotion = slow_decide
uri, version, ready, go = sys.argv[1:5]
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.005)
res = P.promote("R2D2", version=version, tracking_uri=uri)
print(json.dumps({"version": version, "before": res.champion_before, "after": res.champion_after,
                  "promoted": res.decision.promote}))
"""


def test_two_racing_promotions_leave_one_champion_decided_in_order(store: dict) -> None:
    """Best (40) and second best (35) race against champion v4 (32), each decision taking 1.5 s.
    Serialised, the later promoter compares against the earlier one's result and the best one
    ends as champion in either order. Control run (each racer with its own lock file): both
    decided against v4, the assertion on `later["before"]` failed."""
    best = register(store, "best", mr=40.0, auc=70.0)
    second = register(store, "second", mr=35.0, auc=70.0)
    w = store["work"]
    go = w / "go"
    procs = []
    for v in (best, second):
        procs.append(subprocess.Popen([sys.executable, "-c", RACER, store["uri"], v, str(w / f"ready{v}"), str(go)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    deadline = time.monotonic() + 120
    while not all((w / f"ready{v}").exists() for v in (best, second)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.05)
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    first, later = sorted(results, key=lambda r: r["before"] != "4")
    assert first["before"] == "4" and first["promoted"]
    assert later["before"] == first["version"]  # the second promoter saw the first one's move
    assert alias(store, "champion") == best
    tags = version_tags(store, second)
    assert tags["promotion.compared_with"] in ("4", best)
