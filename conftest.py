# Fixtures for tests/ and for each component's own test under components/.
pytest_plugins = ["tests.fixtures"]
