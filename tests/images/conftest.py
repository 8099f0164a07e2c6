from __future__ import annotations

from tests.support.images_fixtures import built_images  # noqa: F401 - fixture
from tests.trainer.conftest import tiny_data, tiny_model  # noqa: F401 - fixtures
