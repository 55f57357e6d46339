"""``dbtk doctor`` internals: probes (subprocesses with timeouts) and rules (findings with fixes)."""
