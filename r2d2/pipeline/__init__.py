"""Library glue between the stage DAG (`dvc.yaml`) and its drivers (`dvc repro`, the Prefect flow).

- `r2d2.pipeline.dvc`: run one DVC stage as a subprocess (`dvc repro --single-item`), read the
  stage graph of `dvc.yaml`, classify failures as transient or not.
- `r2d2.pipeline.data`: make `data/` match `data.dvc` (cache, remote, or regenerate the demo
  corpus and verify its md5), record a new data version.
- `r2d2.pipeline.report`: the `report` stage (one JSON, one markdown table, plot data).
- `r2d2.pipeline.summary`: the champion, its metrics and where to browse everything.
- `r2d2.pipeline.reproduce`: rebuild a registered model from its lineage in a git worktree.

Nothing here imports Prefect: the flows in `flows/` call these functions, and so do the CLIs.
"""
