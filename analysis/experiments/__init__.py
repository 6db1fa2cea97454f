"""Experiment run functions behind the figures (numbers only, no plotting)."""
