"""GPU-aware scheduling for AI inference and batch jobs, built on Dask."""
