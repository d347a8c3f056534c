"""Reading ``driftd.yaml``: YAML with line numbers, secret refusal, environment overrides.

Every problem is reported at once, each as ``FILE:LINE: yaml.path: what was expected``, so that an
operator fixes a broken file in one pass instead of one error per restart.
"""

from __future__ import annotations

import difflib
import re
import shlex
import types
import typing
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from daemon.config.files import Loc, column_problems, data_files
from daemon.config.models import Config
from daemon.config.sections.policy import RETIRED_ACTIONS
from daemon.config.types import ENV_STORAGE_URL
from daemon.errors import ConfigDeprecation, ConfigError

__all__ = ["ENV_STORAGE_URL", "load_config", "parse_config"]

# Key names that hold credentials. `*_env` keys (which name a variable) never match.
_SECRET_KEY = re.compile(
    r"(?:^|_)(?:api_?key|secret|password|passwd|token|access_key|private_key|credentials?)$",
    re.IGNORECASE,
)
# The URL of an incoming webhook is itself the credential: whoever has it may post.
_WEBHOOK_URLS = (
    (
        "a Slack webhook URL",
        re.compile(
            r"\bhooks\.slack(?:-gov)?\.com/(?:services|workflows|triggers)/[^\s/]+", re.IGNORECASE
        ),
    ),
    (
        "a Discord webhook URL",
        re.compile(
            r"\b(?:(?:ptb|canary)\.)?discord(?:app)?\.com/api/(?:v\d+/)?webhooks/\d+/[^\s/]+",
            re.IGNORECASE,
        ),
    ),
)
_SECRET_VALUES = (
    ("an OpenAI-style API key", re.compile(r"\bsk-[A-Za-z0-9_-]{16,}")),
    ("a bearer token", re.compile(r"\bbearer\s+[A-Za-z0-9._~+/=-]{16,}", re.IGNORECASE)),
    ("an AWS access key", re.compile(r"\bAKIA[0-9A-Z]{16}\b")),
    ("a GitHub token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}")),
    ("a Hugging Face token", re.compile(r"\bhf_[A-Za-z0-9]{20,}")),
    ("a Slack token", re.compile(r"\bxox[abpr]-[A-Za-z0-9-]{10,}")),
    ("a private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    ("a JSON Web Token", re.compile(r"\beyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")),
    *_WEBHOOK_URLS,
    # The `secret` group is the part a command may take from its environment instead.
    (
        "a password in a URL",
        re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@]+:(?P<secret>[^/\s@]+)@"),
    ),
)

# Options whose argument is a credential, as curl, wget, httpie and most command-line clients
# spell them. `-p` is left out: it is a port, a parent directory or a publish far more often.
_USER_OPTIONS = frozenset({"-u", "--user", "--auth"})  # USER:PASSWORD
_SECRET_OPTION = re.compile(
    r"--(?!no-)(?:[a-z0-9]+-)*(?:password|passwd|token|api-?key|client-secret)", re.IGNORECASE
)
_UID_GID = re.compile(r"\d+:\d+")  # `docker run --user 1000:1000` names no password
_HEADER = re.compile(r"(?:-H|--header=)?\s*([A-Za-z][A-Za-z0-9_-]*)\s*:\s*(.*)", re.DOTALL)
_AUTH_HEADERS = frozenset({"authorization", "proxy-authorization"})
_COMMAND_HINT = (
    "the command inherits driftd's environment, so read it from a variable there, e.g. "
    "[sh, -c, 'curl -H \"Authorization: Bearer $HOOK_TOKEN\" URL'] (an argument list runs "
    "without a shell, and only a shell expands $HOOK_TOKEN)"
)


def format_loc(loc: Loc) -> str:
    """``('deployments', 1, 'policy', 'cooldown')`` → ``deployments[1].policy.cooldown``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(top level)"


class _Reader:
    """Turns YAML nodes into plain data, recording the line of every path on the way."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: dict[Loc, int] = {}
        self._problems: list[tuple[int, str]] = []
        self._scalars = yaml.SafeLoader("")

    def compose(self, text: str) -> yaml.Node | None:
        try:
            return yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f"{self.source}:{mark.line + 1}" if mark else self.source
            raise ConfigError(self.source, [f"{where}: YAML syntax error: {exc.problem}"]) from None
        except yaml.YAMLError as exc:
            raise ConfigError(self.source, [f"{self.source}: YAML error: {exc}"]) from None

    def construct(self, node: yaml.Node, loc: Loc = ()) -> Any:
        self.lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                line = key_node.start_mark.line + 1
                key = self._scalars.construct_object(key_node, deep=True)
                if not isinstance(key, str | int | float | bool):
                    self.problems.append(
                        f"{self.source}:{line}: {format_loc(loc)}: keys must be words"
                    )
                    continue
                child = (*loc, str(key))
                if str(key) in out:
                    # PyYAML would silently keep the last value; an operator never means that.
                    self._add(
                        line,
                        f"{self.source}:{line}: {format_loc(child)}: duplicate key "
                        f"(first on line {self.lines[child]})",
                    )
                    continue
                self.lines[child] = line
                out[str(key)] = self.construct(value_node, child)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.construct(item, (*loc, i)) for i, item in enumerate(node.value)]
        return self._scalars.construct_object(node, deep=True)

    def line(self, loc: Loc) -> int:
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return 0

    def report(self, loc: Loc, message: str) -> None:
        line = self.line(loc)
        where = f"{self.source}:{line}" if line else self.source
        self._add(line, f"{where}: {format_loc(loc)}: {message}")

    def _add(self, line: int, problem: str) -> None:
        self._problems.append((line, problem))

    @property
    def problems(self) -> list[str]:
        """Every problem found, in the order of the file."""
        return [problem for _, problem in sorted(self._problems, key=lambda p: p[0])]


def _walk(data: Any, loc: Loc = ()) -> Iterator[tuple[Loc, Any]]:
    yield loc, data
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _walk(value, (*loc, str(key)))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _walk(value, (*loc, i))


def _secret_problems(data: Any) -> Iterator[tuple[Loc, str]]:
    found: dict[Loc, str] = {}  # one problem per value, however many patterns it matches
    for loc, value in _walk(data):
        if loc and loc[-1] == "command":
            for where, what in _command_credentials(loc, value):
                found.setdefault(where, _refusal(where, what))
        if not isinstance(value, str) or not value.strip():
            continue
        key = loc[-1] if loc else ""
        if isinstance(key, str) and _SECRET_KEY.search(key):
            found.setdefault(
                loc,
                (
                    "looks like a secret; driftd reads secrets only from the environment: "
                    f"remove it and set '{key}_env' to the variable's name "
                    "(OPENAI_API_KEY or DRIFTD_<NAME>)"
                ),
            )
            continue
        in_command = _in_command(loc)
        for what, pattern in _SECRET_VALUES:
            if any(
                not (in_command and _from_environment(match.groupdict().get("secret", "")))
                for match in pattern.finditer(value)
            ):
                found.setdefault(loc, _refusal(loc, what))
                break
    yield from found.items()


def _refusal(loc: Loc, what: str) -> str:
    """The message for a secret at ``loc``; it names the kind of secret, never its text."""
    return f"contains {what}; secrets never go in the file: {_hint(loc, what)}"


def _hint(loc: Loc, what: str) -> str:
    if loc == ("storage", "url"):
        return f"set the full URL in {ENV_STORAGE_URL} instead"
    if _in_command(loc):
        return _COMMAND_HINT
    if loc[-2:] == ("hooks", "webhook"):
        # The hook's URL is posted to as written; there is no `webhook_env` to move it to.
        return (
            "retune.hooks.webhook has no environment-variable form, so point it at a receiver "
            "whose URL is not itself a credential (e.g. a relay in your network that holds it)"
        )
    if what in {kind for kind, _ in _WEBHOOK_URLS}:
        return (
            "put the URL in an environment variable and name that, as notifications do "
            "(notifications.slack.url_env, notifications.webhook.url_env)"
        )
    return "move it to an environment variable (OPENAI_API_KEY or DRIFTD_<NAME>)"


def _in_command(loc: Loc) -> bool:
    """A command given as one string, or an argument of one given as a list."""
    return bool(loc) and (
        loc[-1] == "command" or (isinstance(loc[-1], int) and loc[-2:-1] == ("command",))
    )


def _from_environment(text: str) -> bool:
    """``$NAME``, ``${NAME}``, ``$(cat FILE)``: a shell supplies the value when the command runs."""
    return text.strip("\"'").startswith("$")


def _command_credentials(loc: Loc, command: Any) -> Iterator[tuple[Loc, str]]:
    """Credentials written into a command (``curl -u admin:PASSWORD``), at the argument that
    holds each, for a command written as an argument list or as one string."""
    if isinstance(command, str):
        args = [(loc, command)]
    elif isinstance(command, list):
        args = [((*loc, i), arg) for i, arg in enumerate(command) if isinstance(arg, str)]
    else:
        return
    # The arguments as driftd passes them, then the words of each argument that is a script of
    # its own (`sh -c 'curl -u ...'`, or a command mistakenly written as one string).
    yield from _credential_arguments(args)
    for where, arg in args:
        if any(char.isspace() for char in arg):
            yield from _credential_arguments([(where, word) for word in _words(arg)])


def _words(script: str) -> list[str]:
    try:
        return shlex.split(script)
    except ValueError:  # an unbalanced quote: still look at what is there
        return script.split()


def _credential_arguments(args: list[tuple[Loc, str]]) -> Iterator[tuple[Loc, str]]:
    for i, (where, arg) in enumerate(args):
        option, equals, attached = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if arg.startswith("-u") and len(arg) > 2 and not equals:  # curl's -uUSER:PASSWORD
            option, equals, attached = "-u", "=", arg[2:]
        argument = (where, attached) if equals else args[i + 1] if i + 1 < len(args) else None
        if argument is not None and option in _USER_OPTIONS:
            _, colon, password = argument[1].partition(":")
            if colon and _literal(password) and not _UID_GID.fullmatch(argument[1]):
                yield argument[0], f"a password in {option} USER:PASSWORD"
        elif (
            argument is not None
            and _SECRET_OPTION.fullmatch(option)
            and _literal(argument[1])
            and not argument[1].startswith("-")  # the next option: this one took no value
        ):
            yield argument[0], f"a credential after {option}"
        header = _HEADER.fullmatch(arg)
        if header and _secret_header(header[1]) and _literal((header[2].split() or [""])[-1]):
            yield where, f"a credential in the header {header[1]}"


def _secret_header(name: str) -> bool:
    return name.lower() in _AUTH_HEADERS or bool(_SECRET_KEY.search(name.replace("-", "_")))


def _literal(value: str) -> bool:
    """A value written out in the file, as opposed to none or one taken from the environment."""
    return bool(value.strip("\"'")) and not _from_environment(value)


def _duplicate_names(data: Any) -> Iterator[tuple[Loc, str]]:
    deployments = data.get("deployments") if isinstance(data, dict) else None
    if not isinstance(deployments, list):
        return
    first: dict[str, int] = {}
    for i, item in enumerate(deployments):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            continue
        if name in first:
            yield (
                ("deployments", i, "name"),
                f"duplicate deployment name {name!r} (already used by deployments[{first[name]}])",
            )
        else:
            first[name] = i


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The section model that a location points into, for suggesting keys."""
    model: type[BaseModel] = Config
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        inner = _section_type(field.annotation)
        if inner is None:
            return None
        model = inner
    return model


def _section_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, tuple, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = _section_type(arg)
            if found is not None:
                return found
    return None


def _message(error: ErrorDetails) -> str:
    kind, msg, value = error["type"], error["msg"], error.get("input")
    loc = tuple(error["loc"])
    if kind == "missing":
        return "required, but missing"
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = sorted(model.model_fields) if model else []
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"expected one of: {', '.join(allowed)}"
        return f"unknown key; {hint}"
    if msg.startswith("Value error, "):
        return msg.removeprefix("Value error, ")
    if msg.startswith("Input should be"):
        expected = msg.removeprefix("Input should be ").rstrip(".")
        return f"expected {expected}, got {_show(value)}"
    return f"{msg[0].lower()}{msg[1:]}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def parse_config(
    text: str,
    *,
    source: str = "driftd.yaml",
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Validate the text of a configuration file; ``environ`` supplies the overrides."""
    reader = _Reader(source)
    node = reader.compose(text)
    data = {} if node is None else reader.construct(node)
    if not isinstance(data, dict):
        raise ConfigError(source, [f"{source}: expected a mapping of sections at the top level"])
    refused = set()
    for loc, message in (*_secret_problems(data), *_duplicate_names(data)):
        refused.add(loc)
        reader.report(loc, message)
    _read_retired(data, reader)
    env = environ or {}
    if env.get(ENV_STORAGE_URL):
        storage = data.get("storage")
        storage = storage if isinstance(storage, dict) else {}
        data["storage"] = {**storage, "url": env[ENV_STORAGE_URL]}
    try:
        config = Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        for error in exc.errors():
            loc = tuple(part for part in error["loc"] if part != "[key]")
            if loc not in refused:  # a refused secret is reported once, as a secret
                reader.report(loc, _message(error))
        config = None
    if config is not None:
        config = _upstream_urls(config, env, reader)
        for loc, path in data_files(config):
            if not path.is_file():
                reader.report(loc, f"no such file: {path}")
        for loc, message in column_problems(config):
            reader.report(loc, message)
    if reader.problems or config is None:
        raise ConfigError(source, reader.problems)
    return config


def _read_retired(data: dict[str, Any], reader: _Reader) -> None:
    """Values renamed in 0.2 are read as what they became, each with a ``ConfigDeprecation``
    warning naming where it is and what to write instead (see docs/concepts.md)."""
    deployments = data.get("deployments")
    for index, deployment in enumerate(deployments if isinstance(deployments, list) else ()):
        policy = deployment.get("policy") if isinstance(deployment, dict) else None
        if not isinstance(policy, dict):
            continue
        value = policy.get("on_drift")
        if isinstance(value, str) and value in RETIRED_ACTIONS:
            loc: Loc = ("deployments", index, "policy", "on_drift")
            new = RETIRED_ACTIONS[value].value
            policy["on_drift"] = new
            warnings.warn(
                f"{reader.source}:{reader.line(loc)}: {format_loc(loc)}: '{value}' is deprecated "
                f"since 0.2 and read as '{new}' (the deployment's retune.method says how); "
                f"write '{new}'",
                ConfigDeprecation,
                stacklevel=1,
            )


def _upstream_urls(config: Config, env: Mapping[str, str], reader: _Reader) -> Config:
    """Each upstream without a ``base_url`` takes the one in its ``base_url_env`` variable
    (``OPENAI_BASE_URL`` by default), as the OpenAI SDKs do."""
    deployments = list(config.deployments)
    for index, deployment in enumerate(deployments):
        upstream = deployment.upstream
        url = env.get(upstream.base_url_env, "").strip()
        if upstream.base_url is not None or not url:
            continue
        if not url.startswith(("http://", "https://")):
            reader.report(
                ("deployments", index, "upstream", "base_url_env"),
                f"the variable {upstream.base_url_env} holds {url!r}, not an http:// or "
                "https:// URL",
            )
            continue
        resolved = deployment.model_copy(
            update={"upstream": upstream.model_copy(update={"base_url": url})}
        )
        # model_copy counts an updated field as set, but a URL from the environment does not
        # configure an upstream: `proxied` must still say what the file says.
        object.__setattr__(resolved, "__pydantic_fields_set__", set(deployment.model_fields_set))
        deployments[index] = resolved
    return config.model_copy(update={"deployments": tuple(deployments)})


def load_config(path: Path | str, *, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a configuration file; raises ``ConfigError`` naming every problem."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        where = "" if path.is_absolute() else f" (looked in {Path.cwd()})"
        hint = "pass the configuration with -c FILE or set DRIFTD_CONFIG"
        raise ConfigError(source, [f"{source}: no such file{where}; {hint}"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, [f"{source}: cannot read it: {exc}"]) from None
    return parse_config(text, source=source, base_dir=path.parent, environ=environ)
