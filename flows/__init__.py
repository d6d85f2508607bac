"""Prefect flows that drive the DVC stages of dvc.yaml (see docs/pipeline.md).

`flows.pipeline`: the `r2d2-pipeline` flow (one task per stage); `flows.schedule`: its cron
deployment. The flows hold no stage logic: they call `r2d2.pipeline`.
"""
