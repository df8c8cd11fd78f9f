"""Credentials written into URLs: found, redacted, and refused before a run starts.

A URL given to a run is stored as a flow-run parameter on the Prefect server, appears in
its logs and task-run names, and becomes the `source` column of every table row, and
tables are shared widely. So a URL that carries a secret is refused with an error that says
how to pass the secret instead (docs/operations.md, "Credentials"): a secret must stay in
the process that opens the file, where fsspec's backends read it from the environment or
their configuration.

What counts as a secret in a URL:
- userinfo with a password (`http://user:PASSWORD@host/x.flac`, `sftp://user:PASSWORD@host/x`),
  and any userinfo of an http(s) URL, where a lone user name is often a token
  (`https://TOKEN@host/x`);
- a query parameter named in SIGNING_QUERY_PARAMETERS (case-insensitive): the signatures and
  tokens of pre-signed S3, GCS, Azure SAS and CloudFront URLs, and the usual names of API
  tokens and keys.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from steadyscribe.storage import StorageError

REDACTED = "***"

SIGNING_QUERY_PARAMETERS = frozenset(
    {
        # AWS S3 pre-signed URLs (signature versions 4 and 2) and temporary credentials
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "signature",
        "awsaccesskeyid",
        # Google Cloud Storage signed URLs (V4 and V2)
        "x-goog-signature",
        "x-goog-credential",
        "x-goog-security-token",
        "googleaccessid",
        # Azure shared access signatures
        "sig",
        # CloudFront signed URLs
        "key-pair-id",
        "policy",
        # generic tokens and keys
        "token",
        "access_token",
        "id_token",
        "refresh_token",
        "auth",
        "api_key",
        "apikey",
        "x-api-key",
        "password",
        "passwd",
        "secret",
        "client_secret",
    }
)

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


def credential_parts(url: str) -> list[str]:
    """What in `url` is a secret ("password", "user name", or the query parameter's name); [] for none."""
    if not _is_url(url):
        return []
    parts = urlsplit(url)
    found = []
    if parts.password is not None:
        found.append("password")
    elif parts.username is not None and parts.scheme.lower() in ("http", "https"):
        found.append("user name")
    for field in parts.query.split("&"):
        name = unquote_plus(field.partition("=")[0])
        if name.lower() in SIGNING_QUERY_PARAMETERS:
            found.append(f"query parameter {name}")
    return found


def redact_url(url: str) -> str:
    """`url` with each secret (see credential_parts) replaced by ***; anything else unchanged."""
    if not credential_parts(url):
        return url
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        if has_password:
            userinfo = f"{user}:{REDACTED}"
        elif parts.scheme.lower() in ("http", "https"):
            userinfo = REDACTED
        netloc = f"{userinfo}@{host}"
    query = "&".join(_redact_query_field(field) for field in parts.query.split("&"))
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _redact_query_field(field: str) -> str:
    name = field.partition("=")[0]
    return f"{name}={REDACTED}" if unquote_plus(name).lower() in SIGNING_QUERY_PARAMETERS else field


def refuse_credentials_in_urls(urls: Iterable[str]) -> None:
    """Raise CredentialsInUrl (naming every such URL redacted) when any of `urls` carries a secret."""
    offending = [(url, parts) for url in urls if (parts := credential_parts(url))]
    if offending:
        named = "; ".join(f"{redact_url(url)} (its {', '.join(parts)})" for url, parts in offending)
        raise CredentialsInUrl(
            f"credentials in a URL would be stored with the flow run on the Prefect server, in logs and in "
            f"every table row, so the run was refused: {named}. Remove them from the URL and {HOW_TO_PASS_CREDENTIALS}."
        )
