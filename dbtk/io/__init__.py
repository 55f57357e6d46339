"""The I/O layer below both training and inference: checkpoint files, atomic writes, device resolution.

It may import only the core (``dbtk.errors``, ``dbtk.recipe``) and third-party libraries, so the engine and
inference can both stand on it without importing each other (docs/architecture.md).
"""
