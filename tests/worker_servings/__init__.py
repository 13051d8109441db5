"""Toy servings that worker subprocesses started by tests load.

A worker discovers this package when ``MLSERVICES_EXTRA_SERVINGS=tests.worker_servings``
(see webapp.worker); options come from ``MLSERVICES_CONFIG`` like any serving's.
"""
