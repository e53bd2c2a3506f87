"""The console's pages: one module per page, each with a ``render()`` that app/console.py navigates to."""
