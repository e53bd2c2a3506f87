"""The client's side: ``altlas_dask.Client``, notebook views, named workloads and runs."""
