"""Asynchronous portrait jobs: their records and the stores that keep them."""
