"""Project-wide pytest settings. The harness plugin itself loads through its
``pytest11`` entry point (see pyproject.toml), so that ``pytest scenarios/``
works from any folder once the project is installed."""

# Folders that hold no tests; some hold files pytest must not import.
collect_ignore = ["docker", "reports", ".venv", "bench"]
