"""``driftd.yaml``: its models, and the loader that validates a file into them."""

from daemon.config.loader import ENV_STORAGE_URL, load_config, parse_config
from daemon.config.models import Config, Deployment

__all__ = ["ENV_STORAGE_URL", "Config", "Deployment", "load_config", "parse_config"]
