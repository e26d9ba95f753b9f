"""Experiment runs (runner) and the dashboard generated from them."""
