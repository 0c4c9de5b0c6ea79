"""Test helpers: a dagster dev server, the Docker image, a PostgreSQL server, the instance history probe."""
