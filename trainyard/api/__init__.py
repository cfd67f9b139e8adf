"""The REST API (FastAPI): jobs, logs, nodes and pools over the database."""
