"""Client contexts: which managers a client talks to and with which CA and token, kept by name in
`$XDG_CONFIG_HOME/treeherd/config.toml` (default `~/.config/treeherd/config.toml`; TREEHERD_CONFIG
names another file).

    current = "local"

    [contexts.local]
    manager = ["https://127.0.0.1:7400"]
    ca_file = "/home/me/.local/share/treeherd/ca.crt"
    token_file = "/home/me/.local/share/treeherd/secrets/admin.token"

The file holds paths, never a token. It is written atomically with mode 0600. A file that cannot be
read or parsed, or a current context that is not defined, is a `ConfigError` saying what to fix; a
missing file is an empty configuration. Reads are cached by the file's modification time, so a
long-running client (the gateway) rereads it only when it changes.
"""

from __future__ import annotations

import os
from typing import Any

CONFIG_ENV = "TREEHERD_CONFIG"
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class ConfigError(Exception):
    """The client configuration cannot be used; the message says what is wrong and how to fix it."""


class ClientContext:
    """One named context: its managers' URLs, and the files of the CA and token used with them."""

    __slots__ = ("ca_file", "managers", "name", "token_file")

    def __init__(
        self, name: str, managers: tuple[str, ...], ca_file: str | None = None, token_file: str | None = None
    ) -> None:
        self.name = name
        self.managers = managers
        self.ca_file = ca_file
        self.token_file = token_file

    def serves(self, urls: list[str] | tuple[str, ...]) -> bool:
        """Whether every one of `urls` is one of this context's managers (its credentials go only
        to its own managers)."""
        own = {_normal(url) for url in self.managers}
        return bool(urls) and all(_normal(url) in own for url in urls)


class ClientConfig:
    """The whole file: the contexts by name, and the current one's name."""

    def __init__(self, current: str | None = None, contexts: dict[str, ClientContext] | None = None) -> None:
        self.current = current
        self.contexts = dict(contexts or {})

    def current_context(self) -> ClientContext | None:
        return None if self.current is None else self.contexts.get(self.current)


def config_path() -> str:
    """The file in use (a string, not a Path: the ENC, which reads it on every Puppet run, does not
    load pathlib for it)."""
    explicit = os.environ.get(CONFIG_ENV, "").strip()
    if explicit:
        return explicit
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "treeherd", "config.toml")


def _normal(url: str) -> str:
    url = url.strip().rstrip("/")
    return url if "://" in url else f"http://{url}"


def check_name(name: str) -> str:
    if not name or not set(name) <= _NAME_CHARS or len(name) > 63:
        raise ConfigError(f"invalid context name {name!r}: letters, digits, '-', '_' and '.' (at most 63)")
    return name


_cache: dict[str, tuple[tuple[int, int], ClientConfig]] = {}


def load_config(path: str | None = None) -> ClientConfig:
    """The configuration in `path` (default: `config_path()`); empty when the file does not exist."""
    path = path or config_path()
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return ClientConfig()
    except OSError as error:
        raise ConfigError(f"cannot read the client configuration {path}: {error.strerror}") from None
    key = (info.st_mtime_ns, info.st_size)
    cached = _cache.get(path)
    if cached is not None and cached[0] == key:
        return cached[1]
    import tomllib

    try:
        with open(path, encoding="utf-8") as file:
            data = tomllib.loads(file.read())
    except OSError as error:
        raise ConfigError(f"cannot read the client configuration {path}: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(
            f"the client configuration {path} is not valid TOML ({error}): fix it, or remove it"
        ) from None
    config = _parse(data, path)
    _cache[path] = (key, config)
    return config


def _parse(data: dict[str, Any], path: str) -> ClientConfig:
    def bad(what: str) -> ConfigError:
        return ConfigError(f"the client configuration {path}: {what}")

    current = data.get("current")
    if current is not None and not isinstance(current, str):
        raise bad("'current' must be the name of a context")
    table = data.get("contexts", {})
    if not isinstance(table, dict):
        raise bad("'contexts' must be a table of contexts")
    contexts: dict[str, ClientContext] = {}
    for name, entry in table.items():
        if not isinstance(entry, dict):
            raise bad(f"the context {name!r} must be a table")
        managers = entry.get("manager")
        if isinstance(managers, str):
            managers = [item for item in managers.split(",") if item.strip()]
        if not isinstance(managers, list) or not managers or not all(isinstance(m, str) for m in managers):
            raise bad(f'the context {name!r} needs manager = ["https://HOST:PORT", ...]')
        files: dict[str, str | None] = {}
        for key in ("ca_file", "token_file"):
            value = entry.get(key)
            if value is not None and not isinstance(value, str):
                raise bad(f"{key} of the context {name!r} must be a path")
            files[key] = value
        contexts[name] = ClientContext(
            name, tuple(m.strip() for m in managers), files["ca_file"], files["token_file"]
        )
    if current is not None and current not in contexts:
        raise bad(f"the current context {current!r} is not defined: run `treeherd context use NAME`")
    return ClientConfig(current, contexts)


def save_config(config: ClientConfig, path: str | None = None) -> None:
    """Write `config` to `path` (mode 0600), atomically: a reader sees the old file or the new one."""
    import contextlib
    import tempfile

    import tomli_w

    path = path or config_path()
    data: dict[str, Any] = {}
    if config.current is not None:
        data["current"] = config.current
    data["contexts"] = {
        name: {
            "manager": list(context.managers),
            **({"ca_file": context.ca_file} if context.ca_file else {}),
            **({"token_file": context.token_file} if context.token_file else {}),
        }
        for name, context in sorted(config.contexts.items())
    }
    text = tomli_w.dumps(data)
    directory, name = os.path.split(os.path.abspath(path))
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
    except OSError as error:
        raise ConfigError(f"cannot write the client configuration {path}: {error.strerror}") from None
    try:
        os.fchmod(handle, 0o600)
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise ConfigError(f"cannot write the client configuration {path}: {error.strerror}") from None
    _cache.pop(path, None)


def current_context() -> ClientContext | None:
    """The context in use (None when the configuration names none)."""
    return load_config().current_context()
