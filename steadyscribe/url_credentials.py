"""Credentials written into URLs: found, redacted, and refused before a run starts.

A URL given to a run is stored as a flow-run parameter on the Prefect server, appears in
its logs and task-run names, and becomes the `source` column of every table row, and
tables are shared widely. So a URL that carries a secret is refused with an error that says
how to pass the secret instead (docs/operations.md, "Credentials"): a secret must stay in
the process that opens the file, where fsspec's backends read it from the environment or
their configuration.

What counts as a secret in a URL (deny by default: what looks like one is refused):
- userinfo (`http://user:PASSWORD@host/x.flac`, `https://TOKEN@host/x`), except a lone user name
  in an ssh URL (`sftp://user@host/x`), which names an account whose key stays on this machine;
- a fragment (`#access_token=…`): servers never see it, so it holds nothing a file needs, while
  OAuth and single-page apps put tokens there;
- a query parameter (`?key=…`, `&sig=…`) or matrix parameter (`;X-Amz-Signature=…`) whose name,
  percent-decoded and case-folded, looks like a credential (credential_name).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from urllib.parse import unquote_plus

from steadyscribe.printable import printable
from steadyscribe.storage import StorageError

REDACTED = "***"

# A parameter name is a credential's when one of its parts (access_token, apiKey, X-Amz-Security-Token)
# or the whole name with its separators removed (apikey, accesstoken) is, or ends with, one of these.
CREDENTIAL_WORDS = (
    "token", "key", "sig", "signature", "secret", "password", "passwd", "pwd", "credential", "credentials",
    "auth", "authorization", "session", "sessionid", "sid", "jwt", "bearer",
)
# Cloud signing schemes, whatever the rest of the name: AWS and GCS signed URLs (X-Amz-Signature,
# X-Amz-Credential, X-Goog-Signature, ...).
CREDENTIAL_PREFIXES = (("x", "amz"), ("x", "goog"))
# Whole names: Azure SAS (sig, and its se expiry and sv version that mark a SAS URL), CloudFront's
# signed Policy, the S3 and GCS V2 signers' access key ids.
CREDENTIAL_NAMES = frozenset({"sig", "se", "sv", "policy", "awsaccesskeyid", "googleaccessid"})

# User names that name an account rather than carry a secret.
SSH_SCHEMES = frozenset({"sftp", "ssh", "scp"})

# fsspec chains URLs with "::" (simplecache::https://…); each link is checked, and the whole (an
# IPv6 host holds "::" too).
CHAIN_SEPARATOR = "::"

_NAME_PARTS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[^\W\d_]+|\d+")

HOW_TO_PASS_CREDENTIALS = (
    "pass the credentials to fsspec instead: the environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, "
    "AZURE_STORAGE_*), fsspec configuration (for HTTP basic auth: a ~/.netrc entry for the host with "
    "FSSPEC_HTTP_CLIENT_KWARGS='{\"trust_env\": true}'), or, for a deployment, a Prefect Secret block "
    "referenced in its job variables' env; read a pre-signed object through its bucket URL (s3://, gs://, az://) "
    "with the bucket's credentials. See docs/operations.md, Credentials"
)


class CredentialsInUrl(StorageError):
    """A URL given to a run carries a secret; the message names it redacted and says how to pass it instead."""


def _is_url(text: str) -> bool:
    return "://" in text


def _decoded(text: str) -> str:
    """`text` percent-decoded until it no longer changes (servers may decode twice), NFKC-normalized."""
    for _ in range(5):
        decoded = unquote_plus(text)
        if decoded == text:
            break
        text = decoded
    return unicodedata.normalize("NFKC", text)


def credential_name(name: str) -> bool:
    """Whether a query or matrix parameter named `name` (as written in a URL) looks like it holds a credential."""
    decoded = _decoded(name)
    parts = [part.casefold() for part in _NAME_PARTS.findall(decoded)]
    joined = "".join(parts)
    if joined in CREDENTIAL_NAMES or tuple(parts[:2]) in CREDENTIAL_PREFIXES:
        return True
    return any(candidate.endswith(CREDENTIAL_WORDS) for candidate in [*parts, joined])


def _parameters(text: str) -> list[str]:
    """The name=value fields of a query string or of a path segment's matrix parameters, as written."""
    return [field for field in re.split(r"[&;]", text) if field]


def _matrix_parameters(path: str) -> list[str]:
    return [field for segment in path.split("/") for field in _parameters(segment.partition(";")[2])]


def credential_parts(url: str) -> list[str]:
    """What in `url` is or may be a secret ("password", "user name", "fragment", or a parameter's name); [] for none."""
    links = [url, *url.split(CHAIN_SEPARATOR)] if CHAIN_SEPARATOR in url else [url]
    return list(dict.fromkeys(found for link in links for found in _link_credential_parts(link)))


def _split(url: str) -> tuple[str, str, str, str | None, str | None]:
    """scheme, netloc, path, query, fragment (None when absent), as written: unlike urlsplit, which
    drops tabs and newlines, so that a redacted URL differs from the original only where redacted."""
    scheme, _, rest = url.partition("://")
    rest, has_fragment, fragment = rest.partition("#")
    rest, has_query, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    return scheme, netloc, slash + path, query if has_query else None, fragment if has_fragment else None


def _link_credential_parts(url: str) -> list[str]:
    if not _is_url(url):
        return []
    scheme, netloc, path, query, fragment = _split(url)
    found = []
    userinfo, has_userinfo, _ = netloc.rpartition("@")
    if has_userinfo and ":" in userinfo:
        found.append("password")
    elif has_userinfo and scheme.lower() not in SSH_SCHEMES:
        found.append("user name")
    for kind, fields in (("matrix", _matrix_parameters(path)), ("query", _parameters(query or ""))):
        found += [
            f"{kind} parameter {printable(_decoded(name))}"
            for field in fields
            if credential_name(name := field.partition("=")[0])
        ]
    if fragment:
        found.append("fragment")
    return found


def redact_url(url: str) -> str:
    """`url` with each secret (see credential_parts) replaced by ***; anything else unchanged."""
    return _redact_link(CHAIN_SEPARATOR.join(_redact_link(link) for link in url.split(CHAIN_SEPARATOR)))


def _redact_link(url: str) -> str:
    if not _link_credential_parts(url):
        return url
    scheme, netloc, path, query, fragment = _split(url)
    userinfo, has_userinfo, host = netloc.rpartition("@")
    if has_userinfo:
        user, has_password, _ = userinfo.partition(":")
        if has_password:
            netloc = f"{user}:{REDACTED}@{host}"
        elif scheme.lower() not in SSH_SCHEMES:
            netloc = f"{REDACTED}@{host}"
    redacted = f"{scheme}://{netloc}" + "/".join(_redact_segment(segment) for segment in path.split("/"))
    if query is not None:
        redacted += "?" + _redact_parameters(query)
    if fragment is not None:
        redacted += "#" + (REDACTED if fragment else "")
    return redacted


def _redact_segment(segment: str) -> str:
    name, has_parameters, parameters = segment.partition(";")
    return f"{name};{_redact_parameters(parameters)}" if has_parameters else segment


def _redact_parameters(text: str) -> str:
    """A query string or matrix parameters with each credential's value replaced by ***, separators kept."""
    pieces = re.split(r"([&;])", text)
    return "".join(
        f"{piece.partition('=')[0]}={REDACTED}" if piece not in ("&", ";") and credential_name(piece.partition("=")[0]) else piece
        for piece in pieces
    )


def refuse_credentials_in_urls(urls: Iterable[str]) -> None:
    """Raise CredentialsInUrl (naming every such URL redacted) when any of `urls` carries a secret."""
    offending = [(url, parts) for url in urls if (parts := credential_parts(url))]
    if offending:
        named = "; ".join(f"{printable(redact_url(url))} (its {', '.join(parts)})" for url, parts in offending)
        raise CredentialsInUrl(
            f"credentials in a URL would be stored with the flow run on the Prefect server, in logs and in "
            f"every table row, so the run was refused: {named}. Remove them from the URL and {HOW_TO_PASS_CREDENTIALS}."
        )
