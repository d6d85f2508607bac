"""MLflow side of the pipeline: tracking, the registered pyfunc model, registration and promotion.

    tracking   runs for `r2d2 pretrain/finetune/evaluate` (rank 0; embedded SQLite or a server)
    pyfunc     the registered model: text/image -> embeddings, pairs -> match scores
    lineage    git / DVC / snapshot / validation / params / package tags (no MLflow needed)
    register   `register_model(...)`: new version + lineage + metrics tags + alias `challenger`
    promote    `decide_promotion(...)` (pure) and `promote(...)` (moves `champion`, locked)

MLflow is imported lazily by the functions that need it. Nothing is re-exported here: a
function `promote` would shadow the module `r2d2.registry.promote`. See docs/registry.md.
"""
