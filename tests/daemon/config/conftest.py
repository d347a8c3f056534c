"""What the configuration tests share: a minimal valid configuration and the problems
``parse_config`` reports for a text."""

import pytest

from daemon.config import parse_config
from daemon.errors import ConfigError
from tests.helpers.configs import finetuned_config

MINIMAL = finetuned_config(labels=("card_arrival", "card_linking"))


def problems(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="driftd.yaml", environ=environ)
    return caught.value.problems
