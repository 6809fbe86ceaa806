"""Access control for hosted deployments: who may see the dashboard.

``app.py`` calls :func:`gate` before anything else on every run (``if not auth.gate(): st.stop()``), so a
visitor who has not signed in gets the sign-in form and nothing else: no page, no sidebar model picker,
no files. Three modes, the first that is configured wins:

1. **OIDC** (``st.login``) when ``.streamlit/secrets.toml`` has an ``[auth]`` section (see
   ``.streamlit/secrets.toml.example``). Optionally ``[access] allowed_emails`` / ``allowed_domains``
   restrict which signed-in accounts get in (needed with a public provider such as Google, where any
   account can sign in).
2. **Shared password** when ``HISTODASH_PASSWORD_HASH`` is set (``python -m engine hash-password``):
   scrypt, constant-time comparison, and growing waits after failures per client address. Each attempt
   is recorded *before* the password is checked, so parallel attempts are throttled too.
3. **Neither**: everyone may see the app (a local demo). When the server also listens on a non-loopback
   address, every page shows a warning banner saying so.

A sign-in is held on the server for the browser's session cookie (``dashboard.websession.sign_in``) with an
expiry, so a refresh, a second tab or a server restart keeps it; *Sign out* ends it, retires the cookie's
id and deletes the session's workspace. The page asked for before signing in (a deep link, with its query
string) opens after it: ``app.py`` keeps the navigation, hidden, while the form is shown.

"Non-loopback": ``server.address`` unset or empty (Streamlit then listens on all interfaces), ``0.0.0.0``,
``::``, or any address or host name other than ``localhost`` / ``127.x.x.x`` / ``::1``. A host name is
counted as exposed without resolving it. The repository's ``.streamlit/config.toml`` sets ``127.0.0.1``,
so only an explicit ``--server.address`` (``make run HOST=…``, the Docker image) exposes the server.
"""

from __future__ import annotations

import ipaddress
import logging
import math

import streamlit as st

from dashboard import tileserver, websession
from dashboard.state import session_id
from engine.auth import LoginThrottle, hash_problem, verify_password, wait_message
from engine.config import get_settings

log = logging.getLogger(__name__)

RELOAD_KEY = "_histodash_reload"
# One throttle for the whole server (every browser session), keyed by client address.
THROTTLE = LoginThrottle(base_s=1.0, cap_s=60.0)
HOSTING_HELP = "Set `HISTODASH_PASSWORD_HASH` or configure OIDC in `.streamlit/secrets.toml` (README: *Hosting for a lab*)."


def gate() -> bool:
    """True when this visitor may see the app; otherwise the sign-in form has been drawn."""
    auth_section = _oidc_section()
    if auth_section is not None:
        return _oidc_gate(auth_section)
    stored = get_settings().password_hash
    if stored:
        return _password_gate(stored)
    exposed = exposed_address(st.get_option("server.address"))
    if exposed:
        st.warning(
            f"HistoDash is served on {exposed} without a login: anyone who can reach this server can see "
            f"and use it, uploads included. {HOSTING_HELP}",
            icon=":material/lock_open:",
        )
    return True


# --- where the server listens ------------------------------------------------------------------


def exposed_address(address: str | None) -> str | None:
    """How to name ``address`` in the warning when it is reachable from other machines; None for loopback."""
    addr = (address or "").strip()
    if not addr:
        return "all network interfaces"
    if addr.lower() in ("localhost", "localhost.", "ip6-localhost"):
        return None
    try:
        ip = ipaddress.ip_address(addr.strip("[]"))
    except ValueError:
        return addr  # a host name: assume it resolves to a reachable address
    if ip.is_loopback:
        return None
    return f"{addr} (all network interfaces)" if ip.is_unspecified else addr


def _client_key() -> str:
    try:
        ip = st.context.ip_address  # None for loopback connections (a local reverse proxy, say)
    except Exception:  # noqa: BLE001 - no client context (bare mode): one shared key
        ip = None
    return ip if isinstance(ip, str) and ip else "local"


def _heading() -> None:
    st.subheader(":material/biotech: HistoDash — sign in")
    st.caption("This HistoDash server is private to its lab. Sign in to continue.")


# --- OIDC ----------------------------------------------------------------------------------------


def _oidc_section() -> dict | None:
    """The ``[auth]`` secrets section, or None when there is none (or no secrets file at all)."""
    try:
        section = st.secrets.get("auth")
    except Exception:  # noqa: BLE001 - StreamlitSecretNotFoundError, a malformed secrets.toml…
        return None
    return dict(section) if section else None


def _providers(section: dict) -> list[str | None]:
    """None for the default provider (keys directly under [auth]), else the named [auth.<name>] ones."""
    if "client_id" in section:
        return [None]
    return [name for name, value in section.items() if isinstance(value, dict)] or [None]


def _allowed(email: str | None) -> bool:
    try:
        access = dict(st.secrets.get("access") or {})
    except Exception:  # noqa: BLE001
        access = {}
    emails = {e.strip().lower() for e in access.get("allowed_emails", [])}
    domains = {d.strip().lower().lstrip("@") for d in access.get("allowed_domains", [])}
    if not emails and not domains:
        return True
    email = (email or "").strip().lower()
    return bool(email) and (email in emails or email.rsplit("@", 1)[-1] in domains)


def _oidc_gate(section: dict) -> bool:
    user = st.user
    if not user.get("is_logged_in", False):
        _heading()
        for provider in _providers(section):
            label = "Sign in" if provider is None else f"Sign in with {provider}"
            if st.button(label, type="primary", key=f"login-{provider or 'default'}"):
                if provider:
                    st.login(provider)
                else:
                    st.login()
        return False
    email = user.get("email")
    if not _allowed(email):
        _heading()
        st.error(f"The account {email or '(no e-mail address)'} is not allowed on this server. Ask the administrator, or sign out and use another account.")
        if st.button("Sign out"):
            st.logout()
        return False
    sid = session_id()
    if websession.signed_in_record(sid) is None:  # held on the server too (HTTP routes ask is_signed_in)
        websession.sign_in(sid, how="oidc")
    with st.sidebar:
        st.caption(f":material/account_circle: {user.get('name') or email or 'signed in'}")
        if st.button("Sign out", key="logout"):
            _end_sign_in()
            st.logout()
    return True


# --- shared password -----------------------------------------------------------------------------


def _end_sign_in() -> None:
    """Sign-out: the server forgets the sign-in, retires the cookie's id and deletes the session's workspace."""
    from dashboard.sessions import end_session  # noqa: PLC0415 - sessions imports state, which imports nothing of this

    sid = session_id()
    websession.sign_out(sid)
    tileserver.revoke_session(sid)  # the slide viewer's tile tokens of this browser stop at once
    end_session()
    st.session_state[RELOAD_KEY] = True


def _reload_after_sign_out() -> None:
    """After a sign-out the page reloads once, so the browser is given a new session cookie at once."""
    if st.session_state.pop(RELOAD_KEY, False):
        st.markdown('<meta http-equiv="refresh" content="0">', unsafe_allow_html=True)


def _password_gate(stored: str) -> bool:
    sid = session_id()
    if websession.signed_in_record(sid) is not None:
        with st.sidebar:
            if st.button("Sign out", key="logout", icon=":material/logout:"):
                _end_sign_in()
                st.rerun()
        return True
    _reload_after_sign_out()
    _heading()
    problem = hash_problem(stored)
    if problem:  # fail closed, and tell the admin why without echoing the value
        log.error("HISTODASH_PASSWORD_HASH is not a valid hash (%s); nobody can sign in", problem)
        st.error(
            f"This server's login is misconfigured: `HISTODASH_PASSWORD_HASH` is not a valid hash ({problem}). "
            "Make one with `python -m engine hash-password`; in a shell, quote it in single quotes (it contains `$`)."
        )
        return False
    with st.form("histodash-login", clear_on_submit=True):
        password = st.text_input("Password", type="password", autocomplete="current-password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if not submitted:
        return False
    key = _client_key()
    wait = THROTTLE.begin(key)  # records this attempt before the password is checked (no check-then-act race)
    if wait > 0:
        st.error(wait_message(wait))
        return False
    if password and verify_password(password, stored):
        THROTTLE.success(key)
        websession.sign_in(sid, how="password")
        log.info("sign-in from %s", key)
        st.rerun()
    log.warning("failed sign-in from %s (%d in a row)", key, THROTTLE.failures(key))  # never the password
    st.error(f"Wrong password. Wait {math.ceil(THROTTLE.wait_s(key))} s before trying again.")
    return False
