"""Compare training runs over several seeds: ``python -m icasc.compare``.

Trains each named run (an experiment preset or any set of Hydra overrides of ``conf/train.yaml``) once per
seed, scores each best checkpoint (chosen on validation) on the held-out test split, and reports every metric
as mean ± sample standard deviation over the seeds, with a paired comparison (by seed) against a reference
run. The seed varies the initialisation, data order and augmentation; the data itself (``data.seed``) stays
the same, so the runs are compared on identical data.

    python -m icasc.compare                                  # synthetic_baseline / _icasc_gradcam / _icasc
    python -m icasc.compare --run base=experiment=synthetic_baseline \\
        --run w01="experiment=synthetic_icasc model.loss.weights.consistency=0.1" \\
        --reference base --seeds 0,1,2,3 trainer.max_epochs=8

Stdout carries the Markdown tables and, as its last line, one JSON object; progress (one line per run) and
the train task's output go to stderr. ``<out>/summary.md`` and ``<out>/summary.json`` hold the same. Every
finished run is saved at once (``<out>/results.json`` and its folder ``<out>/runs/<name>/seed<k>/``), so a
second call with the same ``--out`` trains only what is missing: finished runs are reused, interrupted ones
resume from their ``last.ckpt``.

Modules: :mod:`~icasc.compare.plan` (what to run, checked before anything runs),
:mod:`~icasc.compare.store` (the folders and ``results.json``), :mod:`~icasc.compare.runner` (the loop),
:mod:`~icasc.compare.stats` (mean ± std, paired differences), :mod:`~icasc.compare.report` (JSON, Markdown);
composing the configs and training is :mod:`icasc.tasks.compare`.
"""
