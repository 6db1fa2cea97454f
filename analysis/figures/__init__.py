"""Figure builders, one module per topic; each registers with :mod:`analysis.registry`."""
