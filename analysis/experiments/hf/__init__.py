"""The paper's transformer runs with PEFT LoRA and ``transformers.Trainer`` (issue 10).

* :mod:`.glue` — RoBERTa on GLUE (Fig 4, reference/paper.md §9.5);
* :mod:`.mnli_ablation` — Scaled PSI-LoRA metric / damping ablations on MNLI (Fig 3, §9.6);
* :mod:`.clm` — GPT-2 causal language modelling (Fig 2, §9.8);
* :mod:`.common` — methods and their paper settings, Trainer arguments (clipping done once),
  the JSON-lines log; :mod:`.tiny` — tiny local models and data for offline runs.

Each is a script (``python -m analysis.experiments.hf.glue --help``).  They need the ``hf``
extra (transformers, peft, datasets, accelerate); importing this package does not.
"""
