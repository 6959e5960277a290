# --- pull tests: session-wide registries (see tests/registry_fixtures.py) ---
try:
    from registry_fixtures import (pull_registry, pull_registry_basic,  # noqa: F401
                                   pull_registry_token)
except ImportError:  # tests/ imported as a package
    from tests.registry_fixtures import (pull_registry, pull_registry_basic,  # noqa: F401
                                         pull_registry_token)
