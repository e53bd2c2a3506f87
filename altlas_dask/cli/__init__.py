"""The ``altlas-dask`` command line: one module per command group."""
