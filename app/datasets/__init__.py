"""Datasets: uploads, parsing, Hub datasets, listing and deletion."""
