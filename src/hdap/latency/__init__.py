"""Latency: device performance models, layer profiling, and the surrogates the search differentiates.

As in nn-Meter, predicting (`surrogate`, `fleet_cost`) is kept apart from building predictors
(`profiling`, `backends/`).
"""
