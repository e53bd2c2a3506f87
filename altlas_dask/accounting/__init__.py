"""Accounting: the SQLite store of final task records, API keys and usage reports (the only SQL)."""
