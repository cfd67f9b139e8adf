"""The database layer: models, engine set-up, migrations and compare-and-set transitions."""
