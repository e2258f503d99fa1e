"""The job spec and what API and worker share about it: adapters, rows -> examples, labels, lineage."""
