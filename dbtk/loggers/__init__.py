"""Loggers (the ``dbtk.loggers`` entry-point group).

A logger is built as ``factory(run_dir=Path, **recipe_params)`` and must provide:

- ``start(info: dict)`` — once, with ``recipe`` (TOML text), ``total_steps`` (None under ``train.time_budget``
  until the run has measured itself: a ``planned_steps`` metric then gives the count), ``start_step`` (> 0 on resume);
- ``log(step: int, metrics: dict[str, float])`` — every ``train.log_every`` optimizer steps and after each
  validation; ``step`` never decreases across the whole run, resume included, but it may repeat: a validation
  is logged at the step of the optimizer step it follows, so one step can get a training call and then a
  separate validation call (``val/…`` metrics; both carry ``elapsed_seconds``). Never assume one call per step;
- ``close()`` — once, also after errors and Ctrl-C.

Loggers receive plain Python floats: the training loop synchronises with the device once per log call, never
inside the step.
"""
