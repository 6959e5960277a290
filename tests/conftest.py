# --- pull tests: session-wide registries (see tests/registry_fixtures.py) ---
try:
    from registry_fixtures import (pull_registry, pull_registry_basic,  # noqa: F401
                                   pull_registry_token)
except ImportError:  # tests/ imported as a package
    from tests.registry_fixtures import (pull_registry, pull_registry_basic,  # noqa: F401
                                         pull_registry_token)


import pytest  # noqa: E402
from pathlib import Path  # noqa: E402


@pytest.fixture(scope="session")
def debs_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store for pinned Debian .debs that image scripts fetch (kept in pytest's cache
    between runs when there is one: the debs are checked against their sha256 anyway)."""
    try:
        return Path(request.config.cache.mkdir("cmbuild-debs"))
    except AttributeError:
        return tmp_path_factory.mktemp("debs")
