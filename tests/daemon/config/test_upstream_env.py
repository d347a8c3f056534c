"""An upstream's base URL from the environment (``upstream.base_url_env``, ``OPENAI_BASE_URL``
by default), as OpenAI's SDKs read it: a shipped configuration points at a local server without
an edit."""

from __future__ import annotations

import pytest

from daemon.config import parse_config
from daemon.errors import ConfigError
from tests.helpers.configs import finetuned_config, minimal_config

PROMPTED = minimal_config()


def test_an_unset_base_url_is_read_from_openai_base_url() -> None:
    config = parse_config(PROMPTED, environ={"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    (deployment,) = config.deployments
    assert deployment.upstream.base_url == "http://127.0.0.1:9/v1"
    assert deployment.proxied
    assert parse_config(PROMPTED, environ={}).deployments[0].upstream.base_url is None


def test_a_written_base_url_wins_and_the_variable_can_be_renamed() -> None:
    written = PROMPTED + "    upstream: {base_url: 'http://127.0.0.1:7/v1'}\n"
    env = {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "DRIFTD_BOT_URL": "http://127.0.0.1:8/v1"}
    assert parse_config(written, environ=env).deployments[0].upstream.base_url == (
        "http://127.0.0.1:7/v1"
    )
    renamed = PROMPTED + "    upstream: {base_url_env: DRIFTD_BOT_URL}\n"
    assert parse_config(renamed, environ=env).deployments[0].upstream.base_url == (
        "http://127.0.0.1:8/v1"
    )


def test_a_url_from_the_environment_does_not_make_a_deployment_proxied() -> None:
    config = parse_config(finetuned_config(), environ={"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    assert not config.deployments[0].proxied


def test_a_variable_that_is_not_a_url_is_named_with_its_place() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(PROMPTED, environ={"OPENAI_BASE_URL": "127.0.0.1:9"})
    (problem,) = raised.value.problems
    assert "deployments[0].upstream.base_url_env" in problem
    assert "OPENAI_BASE_URL holds '127.0.0.1:9', not an http:// or https:// URL" in problem


@pytest.mark.parametrize("name", ["HOME", "DRIFTD_ADMIN_TOKENS", "openai_base_url"])
def test_the_variable_is_openai_base_url_or_a_driftd_one_but_no_credential(name: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(PROMPTED + f"    upstream: {{base_url_env: {name}}}\n", environ={})
    assert "base_url_env" in raised.value.problems[0]
