"""The training recipe, usable without Celery: `run(spec, dataset_path, out_dir, report)`."""
