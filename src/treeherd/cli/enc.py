"""`treeherd enc HOSTNAME`: Puppet's External Node Classifier (`node_terminus = exec`).

Puppet runs it on every agent run with the certname as the last argument and reads YAML (`classes`,
`parameters`, `environment`) from its output; a non-zero exit means "node not found". So it starts
fast: it imports neither click nor msgspec nor http.client (`treeherd enc` is routed here before the
rest of the CLI loads; `treeherd-enc` and `python -m treeherd.cli.enc` are the same program).

- The answer comes from the manager (`GET /api/v1/enc/HOSTNAME`), which decides from its in-memory tree.
- Each good answer is kept in the cache directory (`--cache-dir`, env TREEHERD_ENC_CACHE, default
  `$XDG_CACHE_HOME/treeherd/enc` or `~/.cache/treeherd/enc`), written atomically. When the manager
  cannot be reached (refused, timed out, or a 5xx answer), the cached answer is printed with a warning
  on stderr; without one, the exit is 1.
- `--manager` may name several managers, separated by commas: one that cannot be reached or answers
  503 is passed over for the next; the one that answered is tried first next time (kept in the cache
  directory as `.manager`).
- The managers, the token and the CA come from `--config FILE` (a client configuration file, see
  transport/contexts.py: its current context; for puppet.conf's `external_nodes` line), else the
  environment, else the user's current client context (`treeherd context`).
- An unknown host exits 1 with the reason on stderr (its cached answer is dropped), unless the cluster's
  policy or `--unknown=default` gives it the default class.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import TextIO

from treeherd.cli.enc_yaml import enc_document
from treeherd.transport.credentials import CredentialError, bearer_token, manager_setting
from treeherd.transport.quick import QuickError, get

__all__ = ["main", "run"]

DEFAULT_TIMEOUT = 10.0
_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})$")
USAGE = """\
usage: treeherd enc [--config FILE] [--manager URL] [--unknown fail|default] [--cache-dir DIR]
                    [--timeout SECONDS] HOSTNAME

Print the Puppet ENC document (YAML) of HOSTNAME, as the service tree says.

  --config FILE        a client configuration (TOML): the managers, CA file and token file of its
                       current context (default: ~/.config/treeherd/config.toml, env TREEHERD_CONFIG)
  --manager URL[,URL]  the managers' API (env TREEHERD_MANAGER, default: the context's, else
                       http://127.0.0.1:7400)
  --unknown POLICY     for a host the tree does not know: fail (exit 1) or default (the cluster's
                       default class); default: the cluster's setting
  --cache-dir DIR      where the last good answer per host is kept (env TREEHERD_ENC_CACHE)
  --timeout SECONDS    how long to wait for the manager before using the cached answer (10)
"""
_OPTIONS = {"--config", "--manager", "--unknown", "--cache-dir", "--timeout"}


class UsageError(Exception):
    pass


def default_cache_dir() -> str:
    configured = os.environ.get("TREEHERD_ENC_CACHE")
    if configured:
        return configured
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "treeherd", "enc")


def _parse(argv: list[str], manager: str | None) -> dict[str, str]:
    options = {
        "--cache-dir": default_cache_dir(),
        "--timeout": str(DEFAULT_TIMEOUT),
    }
    hosts: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        name, equals, value = arg.partition("=")
        if name in _OPTIONS:
            if not equals:
                if index + 1 >= len(argv):
                    raise UsageError(f"{name} needs a value")
                index += 1
                value = argv[index]
            options[name] = value
        elif arg.startswith("-"):
            raise UsageError(f"unknown option {arg}")
        else:
            hosts.append(arg)
        index += 1
    if manager and "--manager" not in options:
        options["--manager"] = manager
    if not hosts:
        raise UsageError("give the HOSTNAME (Puppet passes the certname as the last argument)")
    if len(hosts) > 1:
        raise UsageError(f"one HOSTNAME only, got {' '.join(hosts)}")
    if options.get("--unknown", "fail") not in ("fail", "default"):
        raise UsageError(f"--unknown takes fail or default, not {options['--unknown']!r}")
    try:
        if float(options["--timeout"]) <= 0:
            raise ValueError
    except ValueError:
        raise UsageError(
            f"--timeout takes a positive number of seconds, not {options['--timeout']!r}"
        ) from None
    host = hosts[0].strip().rstrip(".").lower()
    if not _HOSTNAME.match(host) or ".." in host:
        raise UsageError(f"invalid hostname {hosts[0]!r}: letters, digits, '-' and dots")
    options["host"] = host
    return options


def _cache_path(options: dict[str, str]) -> str:
    return os.path.join(options["--cache-dir"], options["host"] + ".yaml")


def _managers(options: dict[str, str]) -> list[str]:
    """The managers to try, in order: the one that answered last time first."""
    urls = [url.strip() for url in options["--manager"].split(",") if url.strip()]
    try:
        with open(os.path.join(options["--cache-dir"], ".manager"), encoding="utf-8") as file:
            last = file.read().strip()
    except OSError:
        return urls
    return [last, *(url for url in urls if url != last)] if last in urls else urls


def _remember_manager(options: dict[str, str], url: str) -> None:
    path = os.path.join(options["--cache-dir"], ".manager")
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(options["--cache-dir"], exist_ok=True)
        with open(temporary, "w", encoding="utf-8") as file:
            file.write(url + "\n")
        os.replace(temporary, path)
    except OSError:  # only an order to try next time: not worth a warning
        pass


def _store(path: str, text: str, err: TextIO) -> None:
    """Write the answer atomically (a reader sees the old file or the new one, never half of one)."""
    directory = os.path.dirname(path)
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(directory, exist_ok=True)
        with open(temporary, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except OSError as error:
        err.write(f"warning: cannot cache the answer in {directory} ({error.strerror or error})\n")
        try:
            os.unlink(temporary)
        except OSError:
            pass


def _cached(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError:
        return None
    return text if text.startswith("---") else None


def _detail(body: bytes, status: int) -> str:
    try:
        decoded = json.loads(body)
    except ValueError:
        decoded = None
    if isinstance(decoded, dict) and isinstance(decoded.get("detail"), str):
        return str(decoded["detail"])
    return f"the manager answered {status}"


def _fallback(options: dict[str, str], reason: str, out: TextIO, err: TextIO) -> int:
    path = _cache_path(options)
    cached = _cached(path)
    if cached is None:
        err.write(
            f"error: {reason}, and no answer for {options['host']} is cached in {options['--cache-dir']}\n"
        )
        return 1
    err.write(f"warning: {reason}: serving the cached answer {path}\n")
    out.write(cached)
    return 0


def run(
    argv: list[str], *, manager: str | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    """The command; returns its exit code."""
    if any(arg in ("-h", "--help") for arg in argv):
        out.write(USAGE)
        return 0
    try:
        options = _parse(argv, manager)
    except UsageError as error:
        err.write(f"error: {error}\n{USAGE}")
        return 2
    path = f"/api/v1/enc/{options['host']}"
    if "--unknown" in options:
        path += f"?unknown={options['--unknown']}"
    if "--config" in options:
        if not os.path.isfile(options["--config"]):
            err.write(f"error: --config names {options['--config']}, which is not a file\n")
            return 2
        os.environ["TREEHERD_CONFIG"] = options["--config"]  # read by transport.contexts
    try:
        options["--manager"] = manager_setting(options.get("--manager"))
        urls = _managers(options)
        token = bearer_token(urls)
    except CredentialError as error:
        err.write(f"error: {error}\n")
        return 1
    failures: list[str] = []
    for index, url in enumerate(urls):
        try:
            if url.startswith("https://"):
                status, body = _https_get(url, path, float(options["--timeout"]), token, urls)
            else:
                status, body = get(url, path, timeout=float(options["--timeout"]), token=token)
        except QuickError as error:
            failures.append(str(error))
            continue
        if status == 503 and index < len(urls) - 1:
            failures.append(f"{url} answered 503: {_detail(body, status)}")
            continue
        if index:
            _remember_manager(options, url)
        break
    else:
        return _fallback(options, "the manager cannot be reached: " + "; ".join(failures), out, err)
    if status >= 500:
        return _fallback(options, f"the manager at {url} failed: {_detail(body, status)}", out, err)
    if status >= 400:
        err.write(f"error: {_detail(body, status)}\n")
        if status == 404:
            try:
                os.unlink(_cache_path(options))
            except OSError:
                pass
        return 1
    try:
        text = enc_document(json.loads(body))
    except (ValueError, KeyError, TypeError) as error:
        return _fallback(
            options, f"the manager at {url} sent an answer this ENC cannot read ({error})", out, err
        )
    out.write(text)
    out.flush()
    _store(_cache_path(options), text, err)
    return 0


def _https_get(url: str, path: str, timeout: float, token: str | None, urls: list[str]) -> tuple[int, bytes]:
    """The slower path for a TLS manager: the full client (imported only here), trusting the cluster CA
    of TREEHERD_CA_FILE or of the context."""
    import http.client
    import urllib.parse

    from treeherd.transport.credentials import authorization, tls_context

    parts = urllib.parse.urlsplit(url)
    try:
        context = tls_context(urls)
    except CredentialError as error:
        raise QuickError(str(error)) from None
    connection = http.client.HTTPSConnection(
        parts.hostname or "", parts.port or 443, timeout=timeout, context=context
    )
    try:
        connection.request(
            "GET",
            parts.path.rstrip("/") + path,
            headers={"Accept": "application/json", **authorization(token)},
        )
        response = connection.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as error:
        raise QuickError(f"cannot reach {url} ({error})") from None
    finally:
        connection.close()


def main(argv: list[str] | None = None, *, manager: str | None = None) -> None:
    try:
        code = run(sys.argv[1:] if argv is None else argv, manager=manager)
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        code = 0
    sys.exit(code)


if __name__ == "__main__":
    main()
