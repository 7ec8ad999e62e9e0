"""Submit and finalize logic: what happens to a task, independent of Celery, kombu and HTTP."""
