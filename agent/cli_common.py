"""What every `gamsa` command shares: the --config and --json options, loading the
config, printing JSON and warnings, the keys a verification trusts, the progress bar."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from signing.errors import UsageError

if TYPE_CHECKING:
    from agent.config import Config
    from signing.keys import PublicKey

F = TypeVar("F", bound=Callable[..., Any])

# A mirror directory: its permissions are checked by the code that reads it, which
# names the path and exits 3 (an OS error), not by click (exit 2, a usage error).
MIRROR_DIR = click.Path(path_type=Path, readable=False)


def config_option(func: F) -> F:
    return click.option("--config", "config_path", type=click.Path(path_type=Path),
                        envvar="GAMSA_CONFIG", default=None,
                        help="Config file (default: $GAMSA_CONFIG, /etc/gamsa/agent.toml, "
                             "built-in defaults).")(func)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(func)


def load(config_path: Path | None, *, auditor: bool = False) -> Config:
    """The config. For the `auditor` commands (verify, pull, prove, export, report),
    which take what they need from their options, the agent's config found on its own
    (/etc/gamsa/agent.toml, 0640 root:gamsa) and not readable by this user gives the
    built-in defaults and a stderr line, not an error: an auditor's account on an agent's
    host is not the agent's user. A config named by --config or $GAMSA_CONFIG must read."""
    from agent.config import CONFIG_ENV, load_config, resolve_config_path

    path = resolve_config_path(config_path, os.environ)
    if auditor and path is not None and config_path is None and not os.environ.get(CONFIG_ENV):
        try:
            path.open("rb").close()
        except PermissionError:
            warn(f"{path}: permission denied (the agent's config, for its user): using the "
                 "built-in defaults; pass --config FILE for a store's settings")
            path = None
        except OSError:
            pass  # load_config names it
    return load_config(path, os.environ)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def warn(message: str) -> None:
    click.echo(f"gamsa: {message}", err=True)


def trusted_keys(config: Config, trust: tuple[Path, ...]) -> dict[str, PublicKey]:
    from agent.state import StateDir
    from signing.keys import load_public_key_pem

    if trust:
        keys = [load_public_key_pem(p) for p in trust]
        return {k.key_id: k for k in keys}
    state = StateDir(config.state_dir, config.keys.agent)
    if not state.has_key():
        raise UsageError("no --trust key given and this host has no agent key "
                         f"({state.key_name})", hint="pass --trust KEY.pem")
    own = state.public_key()
    warn(f"no --trust given: trusting this agent's own key {own.key_id[:16]}… "
         f"({state.key_name}); pass --trust KEY.pem to verify with a key you hold")
    from agent.rotate import retired_dir  # and the keys it rotated out (keys rotate)

    retired = [load_public_key_pem(p) for p in sorted(retired_dir(state).glob("*.json"))]
    return {k.key_id: k for k in (own, *retired)}


def progress_bar(enabled: bool, label: str = "verifying") -> Callable[[int, int], None] | None:
    if not enabled:
        return None
    state: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        bar = state.get("bar")
        if bar is None:
            bar = click.progressbar(length=total, label=label, file=sys.stderr)
            bar.__enter__()
            state["bar"] = bar
        bar.update(1)
        if done == total:
            bar.__exit__(None, None, None)

    return update


def org_root_keys(trust_org: tuple[Path, ...]) -> dict[str, PublicKey] | None:
    """The organisation root public keys given (None: no org trust)."""
    from signing.keys import load_public_key_pem

    if not trust_org:
        return None
    keys = [load_public_key_pem(p) for p in trust_org]
    return {k.key_id: k for k in keys}
