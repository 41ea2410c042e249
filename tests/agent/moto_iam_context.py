"""moto_server with the two parts of IAM evaluation gamsa's policies rely on and
moto 5 lacks (test-only; run as `python moto_iam_context.py ARGS` instead of
`moto_server ARGS`).

moto 5.2 matches a policy's Resource patterns literally, so a policy variable
(`${aws:PrincipalTag/gamsa-host}`, `${aws:username}`) never matches anything,
and it evaluates a Condition only against `sts:ExternalId`: an `s3:prefix`
condition always fails, which moto turns into an explicit deny. This wrapper
adds, in the server process and nowhere else:

- policy variables, replaced as AWS does before a policy is evaluated:
  `${aws:username}` by the calling IAM user's name, `${aws:PrincipalTag/KEY}` by
  the value of that user's tag KEY. A variable with no value is left as it is, so
  the pattern matches nothing (AWS: a Resource with a missing variable matches no
  resource): a principal without the tag is refused everything it confines;
- the `s3:prefix` condition key, from the `prefix` query parameter of the request,
  for the operators `StringLike` and `StringEquals` (the ones our policies use).
  A missing key fails the condition; an operator not listed here fails it too,
  so a policy this wrapper does not understand is refused, never allowed.

moto's own rule stays: a statement whose condition fails is a deny, where AWS
treats it as not applying. With gamsa's policies, which never allow the same
action twice, the answer is the same.
"""

from __future__ import annotations

import re
import sys
import threading
from typing import Any
from urllib.parse import parse_qs, urlparse

from moto.iam import access_control as ac

_request = threading.local()
_VARIABLE = re.compile(r"\$\{([^}]+)\}")


def _context(request: Any) -> dict[str, str]:
    values: dict[str, str] = {}
    key = request._access_key
    if isinstance(key, ac.IAMUserAccessKey):
        name = key._owner_user_name
        values["aws:username"] = name
        for tag in request.backend.list_user_tags(name):
            values[f"aws:PrincipalTag/{tag['Key']}"] = tag["Value"]
    query = parse_qs(urlparse(request._path).query, keep_blank_values=True)
    if "prefix" in query:
        values["s3:prefix"] = query["prefix"][0]
    return values


_original_check = ac.IAMRequestBase.check_action_permitted


def _check_action_permitted(self: Any, resource: str) -> None:
    _request.values = _context(self)
    try:
        _original_check(self, resource)
    finally:
        _request.values = {}


def _substitute(value: Any) -> Any:
    values: dict[str, str] = getattr(_request, "values", {})
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: values.get(m.group(1), m.group(0)), value)
    if isinstance(value, list):
        return [_substitute(v) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v) for k, v in value.items()}
    return value


_original_policy_init = ac.IAMPolicy.__init__


def _policy_init(self: Any, policy: Any) -> None:
    _original_policy_init(self, policy)
    statements = self._policy_json["Statement"]
    for statement in statements if isinstance(statements, list) else [statements]:
        for element in ("Resource", "NotResource", "Condition"):
            if element in statement:
                statement[element] = _substitute(statement[element])


def _like(pattern: str, value: str) -> bool:
    """IAM StringLike: `*` any run of characters, `?` one character."""
    regex = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
    return re.fullmatch(regex, value, re.DOTALL) is not None


def _check_conditions(self: Any, incoming: dict[str, str] | None) -> bool:
    conditions = self._statement.get("Condition")
    if not conditions:
        return True
    values = {**getattr(_request, "values", {}), **(incoming or {})}
    for operator, tests in conditions.items():
        for key, expected in tests.items():
            patterns = expected if isinstance(expected, list) else [expected]
            actual = values.get(key)
            if actual is None:
                return False
            if operator == "StringLike":
                matched = any(_like(p, actual) for p in patterns)
            elif operator == "StringEquals":
                matched = actual in patterns
            else:
                return False
            if not matched:
                return False
    return True


def main() -> None:
    ac.IAMRequestBase.check_action_permitted = _check_action_permitted  # type: ignore[method-assign]
    ac.IAMPolicy.__init__ = _policy_init  # type: ignore[method-assign]
    ac.IAMPolicyStatement._check_conditions = _check_conditions  # type: ignore[method-assign]
    from moto.server import main as moto_main

    sys.exit(moto_main(sys.argv[1:]))


if __name__ == "__main__":
    main()
