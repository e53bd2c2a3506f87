"""The console's pages: one module per page, each with a ``render()`` that altlas_dask/console/app.py navigates to."""
