"""``scu-tui check``: will this fine-tune fit, and how long will it take, before it starts.

What the model's ``config.json`` determines is derived (parameters, weight bytes at their
bits, LoRA parameters, optimizer state); what depends on this machine and this MLX build
(activation memory per token, attention memory, seconds per step) is measured by a short
probe through the run's own ``Trainer``. Modules, by job:

- ``environment``: backend, BLAS, versions, the machine's memory and the budget a run gets;
- ``watchdog``: the memory watchdog a run consults after each step;
- ``model_facts``: parameters and bytes from a loaded model or from ``config.json`` alone;
- ``memory``: the peak-memory estimate, split into terms by how they grow;
- ``data_report``: rows, token lengths, truncation, dropped rows, padding;
- ``probe``: timed real steps and the memory calibration;
- ``find_lr``: the LR range test;
- ``report``: the verdict, text and JSON (``units``: GB and durations as people read them);
- ``runner``: puts them together for the command line;
- ``cache``: each check's summary per settings, for the app's preset picker.
"""

from __future__ import annotations
