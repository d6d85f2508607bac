"""dvc.yaml: stage definitions, a full `dvc repro` on a tiny demo, no-op re-runs, param changes, metrics/plots, data.dvc."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import time
from pathlib import Path

import pipeline_helpers as h
import pytest
import yaml

from r2d2.errors import UserError
from r2d2.pipeline.data import DATA_DVC, data_md5, ensure_data
from r2d2.pipeline.dvc import run_dvc, stage_graph

ALL_STAGES = ["ingest", "validate", "snapshot", "pretrain", "untrained", "finetune@demo-retrieval",
              "finetune@demo-matching", "evaluate_untrained@demo-retrieval", "evaluate_untrained@demo-matching",
              "evaluate@demo-retrieval", "evaluate@demo-matching", "report", "register", "promote"]
# Not listed as code deps on purpose: command dispatch, servers, MLflow logging (they do not change outputs).
INFRA = ("r2d2.cli", "r2d2.services", "r2d2.registry.tracking", "r2d2.registry.plots", "r2d2.data.scale",
         "r2d2.commands", "r2d2.errors")


def _module_file(mod: str) -> Path | None:
    p = h.REPO / Path(*mod.split("."))
    if (p / "__init__.py").is_file():
        return p / "__init__.py"
    return p.with_suffix(".py") if p.with_suffix(".py").is_file() else None


def import_closure(module: str) -> set[str]:
    """Files of the r2d2 modules `module` imports (anywhere in a file, lazily too), infrastructure excluded."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        mod = todo.pop()
        if not mod.startswith("r2d2") or mod in seen or (mod != module and mod.startswith(INFRA)):
            continue
        f = _module_file(mod)
        if f is None:
            continue
        seen[mod] = f
        pkg = mod if f.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join([*parts, *([base] if base else [])])
                todo += [base, *(f"{base}.{a.name}" for a in node.names)]
    return {f.relative_to(h.REPO).as_posix() for f in seen.values() if f.name != "__init__.py"}


def _lock(root: Path) -> dict:
    return yaml.safe_load((root / "dvc.lock").read_text(encoding="utf-8"))["stages"]


# ---------------------------------------------------------------------------------------------- static


def test_every_stage_runs_one_r2d2_command_with_its_code_and_params() -> None:
    graph = stage_graph(h.REPO)
    assert list(graph) == ALL_STAGES or set(graph) == set(ALL_STAGES)
    lock_free = yaml.safe_load((h.REPO / "dvc.yaml").read_text(encoding="utf-8"))
    params = yaml.safe_load((h.REPO / "params.yaml").read_text(encoding="utf-8"))
    commands = {"ingest": "ingest", "validate": "validate", "snapshot": "snapshot", "pretrain": "train",
                "finetune": "train", "evaluate": "evaluate", "report": "pipeline", "register": "register",
                "promote": "promote", "untrained": "init_model", "evaluate_untrained": "evaluate"}
    prefixes = {"report": "pipeline report", "untrained": "init-model", "evaluate_untrained": "evaluate"}
    for name, info in graph.items():
        cmd = " ".join(info.cmd.split())
        assert cmd.startswith(f"r2d2 {prefixes.get(info.group, info.group)} "), cmd
        assert not any(sep in cmd for sep in ("&&", ";", "||", "|")), f"{name}: more than one command: {cmd}"
        spec = lock_free["stages"][info.group]
        spec = spec.get("do", spec)
        deps = [str(d) for d in spec["deps"]]
        code = [d for d in deps if d.startswith("r2d2/")]
        # `r2d2 pipeline report` runs r2d2.pipeline.report; the other `pipeline` sub-commands are not this stage
        module = "r2d2.pipeline.report" if info.group == "report" else f"r2d2.commands.{commands[info.group]}"
        assert f"r2d2/commands/{commands[info.group]}.py" in code, f"{name}: its command module is not a dep"
        covered = set()
        for d in code:
            path = h.REPO / d
            assert path.exists(), f"{name}: code dep {d} does not exist"
            covered |= {p.relative_to(h.REPO).as_posix() for p in ([path] if path.is_file() else path.rglob("*.py"))}
        missing = import_closure(module) - covered
        if info.group in ("finetune", "evaluate", "evaluate_untrained", "untrained", "register", "promote"):  # they read a model / registry, not corpora
            missing = {m for m in missing if not m.startswith(("r2d2/data/adapters", "r2d2/data/ingest",
                                                               "r2d2/data/manifest", "r2d2/data/validation",
                                                               "r2d2/data/shards", "r2d2/data/pairs_snapshot"))}
        assert not missing, f"{name}: runs {sorted(missing)} but does not list them as deps"
        for key in spec.get("params", []):
            cur = params
            for part in str(key).split("."):
                assert isinstance(cur, dict) and part in cur, f"{name}: params key {key} is not in params.yaml"
                cur = cur[part]
    listed = {g: sorted(map(str, (lock_free["stages"][g].get("do") or lock_free["stages"][g]).get("params", [])))
              for g in ("pretrain", "finetune", "evaluate", "ingest")}
    assert listed == {"pretrain": ["model", "pretrain"], "finetune": ["finetune"], "evaluate": ["evaluate"],
                      "ingest": ["ingest"]}


def test_report_adds_paper_numbers_where_they_apply(tmp_path: Path) -> None:
    from r2d2.pipeline.report import markdown, write_report

    ev = {"retrieval": {"t2i": {"r1": 50.0, "r5": 80.0, "r10": 90.0}, "i2t": {"r1": 60.0, "r5": 85.0, "r10": 95.0},
                        "mr": 76.66666666666667}}
    (tmp_path / "flickr.json").write_text(json.dumps(ev))
    (tmp_path / "icm.json").write_text(json.dumps({"matching": {"auc": 81.5, "accuracy": 75.0}}))
    base = {"retrieval": {"t2i": {"r1": 1.0, "r5": 5.0, "r10": 10.0}, "i2t": {"r1": 2.0, "r5": 6.0, "r10": 11.0},
                          "mr": 5.8333}}
    (tmp_path / "flickr_untrained.json").write_text(json.dumps(base))
    report = write_report(tmp_path / "out", {"flickr30k-cn": tmp_path / "flickr.json", "icm": tmp_path / "icm.json"},
                          baselines={"flickr30k-cn": tmp_path / "flickr_untrained.json"})
    md = markdown(report)
    assert "| flickr30k-cn | retrieval | T→I R@1 | 50.00 | 1.00 | 84.40 |" in md
    assert "| icm | matching | AUC | 81.50 | — | — |" in md
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["primary"]["mean_retrieval_mr"] == pytest.approx(76.6666, abs=1e-3)
    assert metrics["datasets"]["flickr30k-cn"]["paper"]["t2i"]["r1"] == 84.4
    assert metrics["datasets"]["flickr30k-cn"]["untrained"]["t2i"]["r1"] == 1.0
    assert (tmp_path / "out" / "plots" / "recall_flickr30k-cn.csv").read_text().splitlines()[1] == "1,50.0,60.0"
    assert (tmp_path / "out" / "plots" / "summary.png").stat().st_size > 1000


def test_committed_data_dvc_regenerates_bit_identically(tmp_path: Path) -> None:
    """A fresh clone has no data/ and no remote objects: the demo corpus is regenerated and its md5 verified."""
    if not (h.REPO / DATA_DVC).is_file():
        pytest.skip("no data.dvc committed")
    root = tmp_path / "clone"
    root.mkdir()
    h.git(root, "init", "-q")
    assert run_dvc(["init", "-q"], root).returncode == 0
    shutil.copy2(h.REPO / DATA_DVC, root / DATA_DVC)
    state = ensure_data(root, echo=lambda _: None)
    assert state.action == "regenerated" and state.md5 == data_md5(h.REPO)


# ---------------------------------------------------------------------------------------------- dvc repro


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return h.tiny_repo_template(tmp_path_factory)


def test_full_repro_runs_every_stage(template: dict) -> None:
    root = template["root"]
    assert sorted(template["first"].ran) == sorted(ALL_STAGES), template["first"].output
    assert set(_lock(root)) == set(ALL_STAGES)
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    mr = metrics["datasets"]["demo-retrieval"]["mr"]
    assert metrics["primary"]["mean_retrieval_mr"] == mr and 0 <= mr <= 100
    assert 0 <= metrics["datasets"]["demo-matching"]["auc"] <= 100
    registered = json.loads((root / "reports" / "registered.json").read_text())
    assert registered["version"] == "1" and registered["tags"]["lineage.data_dvc_md5"] == data_md5(root)
    promotion = json.loads((root / "reports" / "promotion.json").read_text())
    assert promotion["changed"] and promotion["champion_after"] == "1"
    print(f"full tiny dvc repro: {template['first_seconds']:.1f}s")


def test_second_repro_is_a_noop(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = h.clone_template(tmp_path_factory, "noop")
    before = (root / "dvc.lock").read_text()
    res, seconds = h.repro(root)
    assert "Data and pipelines are up to date." in res.output
    assert res.ran == [] and res.restored == []
    assert (root / "dvc.lock").read_text() == before
    assert seconds < 30, f"a no-op repro took {seconds:.1f}s"
    print(f"no-op dvc repro: {seconds:.1f}s")


def test_param_change_reruns_only_its_dependants(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = h.clone_template(tmp_path_factory, "params")
    h.write_params(root, {"finetune": {"lr": 0.0004}})
    res = run_dvc(["status", "--json"], root)
    changed = json.loads(res.output[res.output.index("{"):])
    # the stages that read finetune.* (register hashes every model-shaping section into the lineage);
    # `dvc repro` then also re-runs what consumes their outputs, and nothing upstream
    assert sorted(changed) == ["finetune@demo-matching", "finetune@demo-retrieval", "register"], changed
    assert all(v == [{"changed deps": {"params.yaml": {"finetune": "modified"}}}] for v in changed.values()), changed
    h.git(root, "checkout", "params.yaml")
    h.write_params(root, {"promote": {"margin": 0.25}})
    res, _ = h.repro(root)
    assert res.ran == ["promote"], res.output
    assert _lock(root)["promote"]["params"]["params.yaml"]["promote"]["margin"] == 0.25


def test_metrics_and_plots_show(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = h.clone_template(tmp_path_factory, "show")
    res = run_dvc(["metrics", "show", "--json"], root)
    assert res.returncode == 0, res.output
    shown = json.loads(res.output[res.output.index("{"):])
    files = shown[""]["data"] if "" in shown else next(iter(shown.values()))["data"]
    assert files["reports/metrics.json"]["data"]["primary"]["mean_retrieval_mr"] is not None
    assert "auc" in json.dumps(files["artifacts/eval/demo-matching/metrics.json"]["data"])
    assert "steps" in files["artifacts/pretrain/train_metrics.json"]["data"]
    out = root / "plots-html"
    res = run_dvc(["plots", "show", "-o", str(out)], root)
    assert res.returncode == 0, res.output
    html = (out / "index.html").read_text(encoding="utf-8")
    for title in ("Loss", "Recall@K", "Matching ROC"):
        assert title in html
    assert "[]" not in (root / "reports" / "plots" / "roc_demo-matching.csv").read_text()


def test_fresh_clone_gets_data_and_refuses_to_overwrite_edits(tmp_path_factory: pytest.TempPathFactory) -> None:
    src = h.tiny_repo_template(tmp_path_factory)["root"]
    root = tmp_path_factory.mktemp("fresh") / "repo"
    subprocess.run(["git", "clone", "-q", str(src), str(root)], check=True)
    assert not (root / "data").exists()
    start = time.perf_counter()
    state = ensure_data(root, echo=lambda _: None)
    assert state.action == "regenerated" and state.md5 == data_md5(src)
    assert run_dvc(["status", "--quiet", DATA_DVC], root).returncode == 0
    print(f"fresh clone: data regenerated and verified in {time.perf_counter() - start:.1f}s")
    zero = root / "data" / "demo" / "zero" / "zero_demo.json"
    zero.write_text(zero.read_text(encoding="utf-8").replace("背景", "底色", 1), encoding="utf-8")
    with pytest.raises(UserError, match="pipeline data --add"):
        ensure_data(root, echo=lambda _: None)
