"""Loggers (the ``dbtk.loggers`` entry-point group).

A logger is built as ``factory(run_dir=Path, **recipe_params)`` and must provide:

- ``start(info: dict)`` — once, with ``recipe`` (TOML text), ``total_steps``, ``start_step`` (> 0 on resume);
- ``log(step: int, metrics: dict[str, float])`` — every ``train.log_every`` optimizer steps and after each
  validation; ``step`` is strictly increasing across the whole run, resume included;
- ``close()`` — once, also after errors and Ctrl-C.

Loggers receive plain Python floats: the training loop synchronises with the device once per log call, never
inside the step.
"""
