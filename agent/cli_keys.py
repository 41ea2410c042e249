"""`gamsa keys` and `gamsa org`: the agent's key, its rotation and enrollment, and the
organisation root that vouches for agent keys."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from agent.cli_common import config_option, emit_json, json_option, load, org_root_keys, warn
from signing.errors import FINDINGS, GamsaError, UsageError, os_error

if TYPE_CHECKING:
    pass

# keys / org ---------------------------------------------------------------


@click.group()
def keys() -> None:
    """The agent's signing key."""


@keys.command("init")
@config_option
@json_option
def keys_init(config_path: Path | None, as_json: bool) -> None:
    """Create the agent key if there is none (never replaces one)."""
    from agent.identity import resolve_host_id
    from agent.state import StateDir

    config = load(config_path)
    state = StateDir(config.state_dir, config.keys.agent)
    with state.locked():
        signer, created = state.signer(resolve_host_id(config.host_id), create=True)
    if as_json:
        emit_json({"key_id": signer.key_id, "created": created, "path": state.key_name})
    else:
        click.echo(f"{'created' if created else 'exists'}: {state.key_name} "
                   f"key_id {signer.key_id}")


@keys.command("show")
@config_option
@json_option
def keys_show(config_path: Path | None, as_json: bool) -> None:
    """Print the agent's public key (PEM) and key id; never the private key."""
    from agent.state import StateDir

    config = load(config_path)
    state = StateDir(config.state_dir, config.keys.agent)
    if not state.has_key():
        raise UsageError(f"no agent key at {state.key_name}", hint="run: gamsa keys init")
    public = state.public_key()
    if as_json:
        emit_json({"key_id": public.key_id, "public_key_pem": public.pem(),
                   "path": state.key_name})
    else:
        click.echo(f"key_id {public.key_id}")
        click.echo(public.pem().rstrip())


@keys.command("enroll")
@config_option
@click.option("--out", "-o", type=click.Path(path_type=Path), metavar="FILE",
              help="Also write the request to FILE ('-': stdout).")
@click.option("--submit/--no-submit", default=True, show_default=True,
              help="Put the request in the store's pending area (v1/enroll/pending/).")
@json_option
def keys_enroll(config_path: Path | None, out: Path | None, submit: bool,
                as_json: bool) -> None:
    """Ask the organisation to enroll this agent's key for this host."""
    from agent.enroll import build_request, submit_request
    from agent.fsutil import create_atomic
    from agent.identity import resolve_host_id
    from agent.state import StateDir
    from agent.store import open_store

    config = load(config_path)
    if out is None and not submit:
        raise UsageError("nothing to do: --no-submit without --out FILE")
    if as_json and out is not None and str(out) == "-":
        raise UsageError("--out - and --json both write to stdout; give --out a file")
    store = open_store(config.store.url, config.store) if submit else None
    state = StateDir(config.state_dir, config.keys.agent)
    host_id = resolve_host_id(config.host_id)
    with state.locked():
        request = build_request(state, host_id)
    data = request.to_bytes()
    written = None
    if out is not None and str(out) == "-":
        click.echo(data.decode())
    elif out is not None:
        try:
            if not create_atomic(out.absolute(), data, 0o644):
                raise UsageError(f"{out} exists", hint="refusing to overwrite; choose another "
                                                       "--out")
        except OSError as exc:
            raise os_error(exc, out, "write") from exc
        written = str(out)
    submitted = submit_request(store, request) if store is not None else None
    summary = {"host_id": host_id, "key_id": request.key.key_id, "file": written,
               "store_key": None if submitted is None else submitted.key,
               "already_pending": bool(submitted and submitted.already)}
    if as_json:
        emit_json(summary)
        return
    click.echo(f"enrollment request: host {host_id} key_id {request.key.key_id}", err=True)
    if written:
        click.echo(f"written to {written}", err=True)
    if submitted is not None and store is not None:
        state_word = "already pending at" if submitted.already else "submitted to"
        click.echo(f"{state_word} {store.url} {submitted.key}", err=True)


@keys.command("rotate")
@config_option
@click.option("--enroll/--no-enroll", default=None,
              help="Submit an enrollment request for the new key to the store (default: "
                   "when the old key is enrolled, here or in the store).")
@click.option("--enroll-out", type=click.Path(path_type=Path), metavar="FILE",
              help="Also write the new key's enrollment request to FILE.")
@click.option("--no-ship", is_flag=True, help="Keep the statement only; publish with the "
                                              "next ship.")
@json_option
def keys_rotate(config_path: Path | None, enroll: bool | None, enroll_out: Path | None,
                no_ship: bool, as_json: bool) -> None:
    """Replace the agent key; the old key signs a rotation statement so the chain
    goes on unbroken under the new key."""
    from agent.enroll import build_request, installed_enrollments, submit_request
    from agent.fsutil import create_atomic
    from agent.identity import resolve_host_id
    from agent.rotate import publish_rotations, rotate_key
    from agent.state import StateDir
    from agent.store import open_store

    config = load(config_path)
    state = StateDir(config.state_dir, config.keys.agent)
    host_id = resolve_host_id(config.host_id)
    store = None if no_ship else open_store(config.store.url, config.store)
    now = dt_now()
    with state.locked():
        if enroll is None:  # was the old key enrolled? then the new one must be too
            old_key_id = state.signer(host_id)[0].key_id if state.key_path.exists() else ""
            enroll = bool(installed_enrollments(state)) or (store is not None and any(
                True for _ in store.list(f"v1/keys/{old_key_id}.enrollment.")))
        rotated = rotate_key(state, host_id, now)
        rotation = rotated.rotation
        request = build_request(state, host_id) if enroll or enroll_out else None
        published: list[str] = []
        submitted = None
        ship_error: GamsaError | None = None
        if store is not None:
            try:
                published = publish_rotations(state, store, rotation.new_key_id)
                if enroll and request is not None:
                    submitted = submit_request(store, request)
            except GamsaError as exc:
                ship_error = exc
    if enroll_out is not None and request is not None:
        try:
            if not create_atomic(enroll_out.absolute(), request.to_bytes(), 0o644):
                raise UsageError(f"{enroll_out} exists",
                                 hint="the key is rotated; write the request with: gamsa "
                                      "keys enroll --no-submit --out FILE")
        except OSError as exc:
            raise os_error(exc, enroll_out, "write") from exc
    chain = rotation.continues
    summary = {"host_id": host_id, "old_key_id": rotation.old_key_id,
               "new_key_id": rotation.new_key_id, "rotated_at": rotation.rotated_at,
               "continues": None if chain is None else chain.to_json(),
               "statement": str(rotated.statement_path), "published": published,
               "enrollment_request": None if submitted is None else submitted.key,
               "ship_error": None if ship_error is None else ship_error.diagnostics()}
    if as_json:
        emit_json(summary)
    else:
        click.echo(f"rotated {host_id}: key {rotation.old_key_id} -> {rotation.new_key_id} "
                   f"at {rotation.rotated_at}")
        click.echo("the chain continues: " + ("no bundle sealed yet" if chain is None else
                   f"the next bundle is chain {chain.chain_id} seq {chain.seq + 1}"))
        click.echo(f"rotation statement (signed by the old key) kept in "
                   f"{rotated.statement_path}")
        for name in published:
            click.echo(f"published {name}")
        click.echo(f"the old private key is destroyed; its public document is kept in "
                   f"{state.keys / 'retired'}")
    click.echo("under organisation trust the new key needs its own enrollment before "
               "verifiers accept its bundles: " + (
                   f"request submitted to {submitted.key}; sign it with `gamsa org "
                   f"sign-enrollment --pending`" if submitted is not None else
                   "run `gamsa keys enroll`"), err=True)
    if ship_error is not None:
        warn(f"rotated, but publishing failed: {ship_error.diagnostics()} (every ship "
             f"retries)")


def dt_now() -> dt.datetime:
    """Now, to the second (rotation and revocation times are kept to the second)."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


@keys.command("install-enrollment")
@config_option
@click.argument("enrollment", type=click.Path(path_type=Path))
@click.option("--trust-org", multiple=True, type=click.Path(path_type=Path), metavar="ORG.pub",
              help="Also check the organisation's signature.")
@click.option("--no-ship", is_flag=True, help="Keep it only; publish with the next ship.")
def keys_install_enrollment(config_path: Path | None, enrollment: Path,
                            trust_org: tuple[Path, ...], no_ship: bool) -> None:
    """Keep a signed enrollment of this agent's key and publish it to the store."""
    from agent.enroll import install_enrollment, publish_enrollments
    from agent.identity import resolve_host_id
    from agent.state import StateDir
    from agent.store import open_store

    config = load(config_path)
    try:
        data = enrollment.read_bytes()
    except OSError as exc:
        raise UsageError(f"enrollment {enrollment}: {exc.strerror or exc}") from exc
    org_keys = org_root_keys(trust_org)
    state = StateDir(config.state_dir, config.keys.agent)
    host_id = resolve_host_id(config.host_id)
    with state.locked():
        signer, _ = state.signer(host_id)
        path = install_enrollment(state, data, str(enrollment), signer.key_id, host_id,
                                  org_keys)
        click.echo(f"installed {path} (key {signer.key_id}, host {host_id})")
        if no_ship:
            return
        store = open_store(config.store.url, config.store)
        try:
            for name in publish_enrollments(state, store):
                click.echo(f"published {name} to {store.url}")
        except GamsaError as exc:
            warn(f"installed, but publishing failed: {exc.diagnostics()} (every ship "
                 f"retries)")


@click.group()
def org() -> None:
    """The organisation root key: enroll host keys (keep the key offline)."""


@org.command("init")
@click.option("--out", required=True, type=click.Path(path_type=Path), metavar="DIR",
              help="Directory for org.key (0600) and org.pub.")
@click.option("--key", "key_uri", metavar="URI", default=None,
              help="Make the key where a signer URI says (pkcs11:...): only org.pub is "
                   "written to --out.")
@json_option
def org_init(out: Path, key_uri: str | None, as_json: bool) -> None:
    """Make the organisation's Ed25519 root key (never replaces one)."""
    from agent.org import init_org, init_org_on_token

    if key_uri is not None:
        from signing.pkcs11_uri import redact

        public_path, key_id, created = init_org_on_token(key_uri, out)
        if as_json:
            emit_json({"key_id": key_id, "created": created, "private_key": redact(key_uri),
                       "public_key": str(public_path)})
            return
        click.echo(f"organisation key_id {key_id}")
        click.echo(f"private key {'created' if created else 'exists'}: {redact(key_uri)}")
        click.echo(f"public key {public_path} (give it to verifiers: --trust-org)")
        return
    made = init_org(out)
    if as_json:
        emit_json({"key_id": made.key_id, "private_key": str(made.private_path),
                   "public_key": str(made.public_path)})
        return
    click.echo(f"organisation key_id {made.key_id}")
    click.echo(f"private key {made.private_path} (0600: keep it offline)")
    click.echo(f"public key {made.public_path} (give it to verifiers: --trust-org)")


@org.command("sign-enrollment")
@config_option
@click.argument("requests", nargs=-1, type=click.Path(path_type=Path))
@click.option("--org-key", required=True, metavar="URI",
              help="Organisation signing key: a key file path, file:PATH or a pkcs11: URI.")
@click.option("--store", "store_url", metavar="URL",
              help="Store to read pending requests from (with --pending) and publish to.")
@click.option("--pending", is_flag=True, help="Sign every pending request in --store.")
@click.option("--valid-days", type=click.IntRange(min=1, max=3660),
              default=365, show_default=True, help="Validity from now.")
@click.option("--renew-within", "renew_within", type=click.IntRange(min=0, max=3660),
              default=30, show_default=True, metavar="DAYS",
              help="With --pending: re-sign a key whose enrollment for its host ends "
                   "within DAYS; skip it otherwise.")
@click.option("--out", type=click.Path(path_type=Path), metavar="DIR",
              help="Write each signed enrollment here (default: . without --store).")
@click.option("--publish/--no-publish", default=True, show_default=True,
              help="With --store: put each signed enrollment in the store.")
@click.option("--yes", is_flag=True, help="Sign without asking.")
@json_option
def org_sign_enrollment(config_path: Path | None, requests: tuple[Path, ...],
                        org_key: str, store_url: str | None, pending: bool, valid_days: int,
                        renew_within: int, out: Path | None, publish: bool, yes: bool,
                        as_json: bool) -> None:
    """Review and sign enrollment requests (files, or all pending in a store)."""
    from agent.org import (
        now_utc,
        plan_from_files,
        plan_from_store,
        publish_signed,
        sign_plan,
        write_signed,
    )
    from agent.store import open_store
    from signing.signer import load_signer

    if pending == bool(requests):
        raise UsageError("give REQUEST.json files or --store URL --pending (one of the two)")
    if pending and not store_url:
        raise UsageError("--pending needs --store URL")
    signer = load_signer(org_key)
    org_public = signer.public_key()
    now = now_utc()
    store = None
    if store_url:
        store = open_store(store_url, load(config_path).store)
    if pending and store is not None:
        plan = plan_from_store(store, org_public, now, valid_days, renew_within)
    else:
        plan = plan_from_files(list(requests), now, valid_days)
    out_dir = out if out is not None else (None if store is not None else Path("."))
    _show_plan(plan, org_public.key_id)
    if plan.sign and not yes:
        if not sys.stdin.isatty():
            raise UsageError("refusing to sign without confirmation (not a terminal)",
                             hint="review the list above, then pass --yes")
        if not click.confirm(f"sign {len(plan.sign)} enrollment(s)?", err=True):
            raise GamsaError("nothing signed", exit_code=FINDINGS)
    signed = sign_plan(plan, signer, now)
    done = []
    for item in signed:
        entry: dict[str, Any] = {"host_id": item.candidate.request.host_id,
                                 "key_id": item.candidate.request.key.key_id,
                                 "source": item.candidate.source, "file": None,
                                 "object": None}
        if out_dir is not None:
            entry["file"] = str(write_signed(item, out_dir))
        if store is not None and publish:
            entry["object"] = publish_signed(item, store)
        done.append(entry)
        if not as_json:
            where = " and ".join(w for w in (entry["file"], entry["object"]) if w)
            click.echo(f"signed {entry['host_id']} key {entry['key_id']}: {where or '-'}",
                       err=True)
    if as_json:
        emit_json({"org_key_id": org_public.key_id, "signed": done,
                   "rejected": [{"source": s, "reason": r} for s, r in plan.rejected],
                   "skipped": [{"source": s, "reason": r} for s, r in plan.skipped]})
    if plan.rejected:
        sys.exit(FINDINGS)


@org.command("revoke")
@config_option
@click.option("--org-key", required=True, metavar="URI",
              help="Organisation signing key: a key file path, file:PATH or a pkcs11: URI.")
@click.option("--key-id", "revoked_key_id", required=True, metavar="KEY_ID",
              help="The agent key to revoke (64 hex digits).")
@click.option("--at", "at", metavar="TIME", default=None,
              help="Bundles finished after this UTC time (2026-01-31T00:00:00Z) are not "
                   "trusted (default: now).")
@click.option("--reason", required=True, help="Why, one line (kept in the revocation).")
@click.option("--store", "store_url", metavar="URL", help="Publish the revocation here.")
@click.option("--out", type=click.Path(path_type=Path), metavar="DIR",
              help="Write the revocation here (default: . without --store).")
@json_option
def org_revoke(config_path: Path | None, org_key: str, revoked_key_id: str, at: str | None,
               reason: str, store_url: str | None, out: Path | None, as_json: bool) -> None:
    """Sign a revocation of an agent key with the organisation key and publish it."""
    import hashlib

    from agent.fsutil import create_atomic
    from agent.store import open_store
    from signing.clock import require_time
    from signing.enrollment import format_time
    from signing.errors import FormatError
    from signing.revocation import revocation_object_name, sign_revocation
    from signing.signer import load_signer

    now = dt_now()
    try:
        revoked_at = now if at is None else require_time(at, f"--at {at[:40]!r}")
    except FormatError as exc:
        raise UsageError(exc.message) from None
    signer = load_signer(org_key)
    envelope = sign_revocation(revoked_key_id, revoked_at, reason, now, signer)
    name = revocation_object_name(revoked_key_id, envelope)
    store = open_store(store_url, load(config_path).store) if store_url else None
    out_dir = out if out is not None else (None if store is not None else Path("."))
    written = None
    if out_dir is not None:
        path = out_dir / Path(name).name
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            create_atomic(path, envelope, 0o644)
        except OSError as exc:
            raise os_error(exc, path, "write") from exc
        written = str(path)
    if store is not None:
        store.put(name, envelope, hashlib.sha256(envelope).hexdigest())
    summary = {"key_id": revoked_key_id, "revoked_at": format_time(revoked_at),
               "org_key_id": signer.key_id, "file": written,
               "object": None if store is None else name}
    if as_json:
        emit_json(summary)
        return
    click.echo(f"revoked key {revoked_key_id} from {format_time(revoked_at)} "
               f"(organisation key {signer.key_id})")
    for where in (written, None if store is None else f"{store.url} {name}"):
        if where:
            click.echo(f"written to {where}")


def _show_plan(plan: Any, org_key_id: str) -> None:
    """Exactly what will be signed (on stderr, so --json stays data), and what not."""
    from signing.enrollment import format_time, show

    if not plan.sign:
        click.echo("nothing to sign", err=True)
    else:
        click.echo(f"will sign {len(plan.sign)} enrollment(s) with organisation key "
                   f"{org_key_id}:", err=True)
    for c in plan.sign:
        r = c.request
        facts = " ".join(f"{k}={show(str(v))}" for k, v in sorted(r.facts.items()))
        click.echo(f"  host {r.host_id}  key {r.key.key_id}\n"
                   f"    valid {format_time(c.not_before)} .. {format_time(c.not_after)}\n"
                   f"    facts {facts or '(none)'}\n"
                   f"    from {show(c.source)} (requested {r.created_at})", err=True)
    for source, reason in plan.skipped:
        click.echo(f"  skipped {show(source)}: {reason}", err=True)
    for source, reason in plan.rejected:
        click.echo(f"  REJECTED {show(source)}: {show(reason)}", err=True)


