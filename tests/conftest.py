"""Fixtures live in per-topic plugin modules so each area owns its own."""

pytest_plugins = [
    "tests.fixtures_media",
    "tests.fixtures_fakes",
    "tests.fixtures_providers",
    "tests.fixtures_pipeline",
    "tests.fixtures_ui",
    "tests.fixtures_postgres",
]
