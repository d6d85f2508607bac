"""`r2d2 reproduce MODEL@ALIAS`: lineage -> git worktree -> dvc repro -> metrics compared with the registry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pipeline_helpers as h
import pytest

from r2d2.errors import UserError
from r2d2.pipeline.reproduce import compare, parse_model_ref, registered_version


def _reproduce(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "r2d2.cli", "reproduce", "R2D2@champion", *args], cwd=root,
                          env=h.env(), capture_output=True, text=True, timeout=900)


def test_model_refs() -> None:
    assert parse_model_ref("R2D2@champion") == ("R2D2", "champion", None)
    assert parse_model_ref("models:/R2D2/3") == ("R2D2", None, "3")
    with pytest.raises(UserError):
        parse_model_ref("R2D2")


def test_reproduce_from_lineage(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Worktree at the registered commit, data from data.dvc, DVC's run cache: metrics identical; a changed one is caught."""
    root = h.clone_template(tmp_path_factory, "reproduce")
    out = root.parent / "reproduce.json"
    proc = _reproduce(root, "--use-run-cache", "--json", str(out))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "IDENTICAL" in proc.stdout
    res = json.loads(out.read_text())
    commit = h.git(root, "rev-list", "--max-parents=0", "HEAD")  # registered from the first commit (dirty: no dvc.lock yet)
    assert res["commit"] == commit and res["identical"]
    assert {r["metric"] for r in res["rows"]} >= {"demo-retrieval.mr", "demo-retrieval.t2i.r1", "demo-matching.auc"}
    assert any("uncommitted changes" in w for w in res["warnings"])
    assert not Path(res["worktree"]).exists()  # removed after a match
    assert len(h.git(root, "worktree", "list").splitlines()) == 1

    _, _, tags = registered_version("R2D2@champion", root)
    reproduced = {r["metric"]: r["reproduced"] for r in res["rows"]}
    reproduced["demo-retrieval.mr"] += 1e-9
    rows = compare(tags, reproduced)
    bad = [r for r in rows if r.delta]
    assert [r.metric for r in bad] == ["demo-retrieval.mr"]


@pytest.mark.slow
def test_reproduce_recomputes_bit_identically(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every stage up to the evaluations re-executed at the registered commit: bit-identical metrics on CPU."""
    root = h.clone_template(tmp_path_factory, "reproduce-force")
    out = root.parent / "reproduce.json"
    proc = _reproduce(root, "--json", str(out))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    res = json.loads(out.read_text())
    assert res["identical"]
    assert {"pretrain", "finetune@demo-retrieval", "evaluate@demo-retrieval", "evaluate@demo-matching"} <= set(res["stages_ran"])
