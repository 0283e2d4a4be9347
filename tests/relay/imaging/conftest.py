"""Fixtures of the imaging tests: one real Orthanc for the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import require_component
from tests.relay.imaging.orthanc_server import (
    ORTHANC,
    PLUGIN_CANDIDATES,
    OrthancServer,
    dicomweb_plugin,
    orthanc_server,
)


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """A throw-away Orthanc with the DICOMweb plugin, on a free loopback port."""
    require_component(ORTHANC, "orthanc")
    require_component(dicomweb_plugin() or PLUGIN_CANDIDATES[0], "orthanc-dicomweb")
    with orthanc_server(tmp_path_factory.mktemp("orthanc")) as server:
        yield server
