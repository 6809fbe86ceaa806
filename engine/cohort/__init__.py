"""Cohorts: many slides → tile scores and embeddings → phenotype clusters → a patient table for survival.

The workflow of REFERENCE.md §2: tiles → learned features (a registered model's penultimate layer) →
phenotype clusters (MiniBatchKMeans, K = 50 by default, fitted on a discovery subset and applied
unchanged to the rest) → per-patient cluster proportions and slide-score summaries → the clinical
join → Cox / risk score / Kaplan–Meier on the Cohort survival page.

* :mod:`engine.cohort.pipeline` — :class:`CohortSpec`, :func:`run_cohort`, :func:`load_result`;
* :mod:`engine.cohort.worker` — the heavy part (one :class:`TileWorker` per worker slot);
* :mod:`engine.cohort.executor` / :mod:`engine.cohort.ray_executor` — in process, or Ray actors;
* :mod:`engine.cohort.store` (embeddings per slide), :mod:`engine.cohort.clusters`,
  :mod:`engine.cohort.patients`, :mod:`engine.cohort.synthetic` (slides of known composition);
* :mod:`engine.cohort.job` — job kind ``cohort``; :mod:`engine.cli.cohort` — ``python -m engine cohort``.

Nothing here imports Ray or TensorFlow at import time.
"""

from engine.cohort.pipeline import CohortSpec, load_result, run_cohort

__all__ = ["CohortSpec", "load_result", "run_cohort"]
