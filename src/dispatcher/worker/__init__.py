"""Celery wiring: the app, its thin tasks and bootsteps. Logic lives in `dispatcher.core`."""
