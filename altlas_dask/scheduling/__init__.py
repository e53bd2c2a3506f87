"""The scheduling core: policy with no Dask import and no I/O, driven by events, answering with actions."""
