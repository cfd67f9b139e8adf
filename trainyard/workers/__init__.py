"""Workers: one `trainyard worker` per node — a Celery worker plus the node agent and launchers."""
