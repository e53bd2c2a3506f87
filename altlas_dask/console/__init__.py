"""The web console (Streamlit): ``altlas-dask console`` runs :data:`APP` (``app.py``) with the ``views`` pages."""

from pathlib import Path

APP = Path(__file__).resolve().parent / "app.py"
