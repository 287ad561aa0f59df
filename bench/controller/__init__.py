"""Does the S-SCU make the initial learning rate stop mattering, on tasks nobody tuned it
on, and at what cost?

LoRA tasks on tiny pretrained bases, each trained through the product's own ``Run`` (same
``Trainer``, same divergence guard and rollback, same knob path), several arms, the initial
learning rate at {0.1, 0.3, 1, 3, 10} x a tuned base, paired seeds:

- ``demo-lora`` (the embedded demo) and ``completions`` (a Llama base, ``completions.py``):
  tuning tasks, already looked at while tuning the S-SCU;
- ``json``, ``sort-text`` (tuning) and ``arith-chat``, ``sql``, ``docs-text``,
  ``code-completions`` (test): data from ``lora_tasks.py`` on bases from ``bases.py``
  (Gemma and Phi-3 pre-trained on Python's own standard library) and the two above; the
  split is fixed in ``tasks.TASKS`` and written in docs/benchmarks.md;
- ``synthetic`` and ``synthetic-long`` (on request): next-token prediction on a known
  order-2 Markov chain, learnt by a fresh n-gram MLP; extra tuning tasks, not LoRA.

Arms are data (``arms.ARM_SPECS``, one entry each): ``constant``, ``cosine``, ``plateau``,
``wsd`` (no controller), ``scu`` (the S-SCU in auto mode on the presets' base, ``wsd``),
``placebo`` (as many random LR changes as the paired ``scu`` run), ``schedule_free`` and
``prodigy`` (other optimizers, when the product has ``training.optimizer``), and
measured-only variants (the S-SCU on cosine and on a constant base, with other control
frequencies, on the other optimizers).

Per task, the oracle is the lowest seed-mean final val loss of any arm at any LR; the
report gives each arm's gap to it by LR, a headline over the test tasks and a verdict per
target.

    python -m bench.controller --jobs 2        # the full benchmark; writes docs/benchmarks.md
    python -m bench.controller --quick         # 2 seeds, shorter runs: for iteration
    python -m bench.controller --smoke         # 2 tasks x 2 arms x 2 LRs x 1 seed x 24 steps
    python -m bench.controller --tasks synthetic --seeds 3 --no-write
    python -m bench.controller --sweep         # the base-LR sweep (cosine arm) of the tasks
    python -m bench.controller --long-demo 3000   # the shipped demo, with and without S-SCU
    python -m bench.controller --report-only RAW.jsonl   # re-render saved results

Progress goes to stderr, the tables to stdout; ``docs/benchmarks.md`` gets the section
between its ``controller`` markers (the sweep and the long run have their own sections).

Modules, one job each: ``tasks`` (the tasks and their split; the synthetic one passes its
model and data to ``Run`` through a loader), ``bases`` (the pretrained bases, cached),
``lora_tasks`` (the new tasks' data), ``completions`` (the Llama base and its data),
``arms`` (schedules, the S-SCU, the placebo), ``running`` (the grid of runs, in parallel
processes with ``--jobs``, raw results, the sweep), ``long_run`` (the long demo run),
``analysis`` (scores, regret, steps to target, reversals, cost), ``report`` (tables,
plot, verdict) and ``__main__`` (the flags).
"""

import scu_tui  # noqa: F401  (loads the system OpenBLAS before mlx, as the app does)
