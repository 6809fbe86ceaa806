"""Access control: engine password hashes and throttle, the hash-password command, and the dashboard's gate."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from streamlit import config as st_config
from streamlit.proto.TextInput_pb2 import TextInput as TextInputProto
from streamlit.testing.v1 import AppTest

from engine.auth import LoginThrottle, hash_password, hash_problem, verify_password
from engine.cli import main
from tests.conftest import ROOT

APP = str(ROOT / "dashboard" / "app.py")
DEMO_SLIDE = ROOT / "engine" / "demo" / "slides" / "CMU-1-Small-Region.svs"
TIMEOUT = 60
PASSWORD = "correct horse battery staple"
HASH = hash_password(PASSWORD)


# --- engine: hashing -----------------------------------------------------------------------------


def test_hash_format_and_round_trip():
    scheme, n, r, p, salt, key = HASH.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(salt) >= 16 and len(key) >= 40
    assert verify_password(PASSWORD, HASH)
    assert hash_problem(HASH) is None
    again = hash_password(PASSWORD)
    assert again != HASH and verify_password(PASSWORD, again)  # random salt


@pytest.mark.parametrize("attempt", ["", "Correct horse battery staple", PASSWORD + " ", PASSWORD[:-1], "x" * 5000])
def test_wrong_passwords_are_refused(attempt):
    assert verify_password(attempt, HASH) is False


def test_unicode_password():
    stored = hash_password("Grüße, 病理")
    assert verify_password("Grüße, 病理", stored) and not verify_password("Grusse, 病理", stored)


def _fields(**change) -> str:
    parts = dict(zip(["scheme", "n", "r", "p", "salt", "key"], HASH.split("$"), strict=True))
    parts.update(change)
    return "$".join(parts.values())


MALFORMED = {
    "empty": "",
    "plain text": "hunter2",
    "shell-mangled": "scrypt" + HASH[len("scrypt$16384"):],  # "$16384" expanded to "6384" or nothing by a shell
    "too many fields": HASH + "$x",
    "other scheme": _fields(scheme="bcrypt"),
    "n not a number": _fields(n="abc"),
    "n not a power of two": _fields(n="1000"),
    "n huge": _fields(n=str(2**30)),
    "r too big": _fields(r="1000"),
    "memory too big": _fields(n=str(2**20), r="32"),
    "salt not base64": _fields(salt="***"),
    "key not base64": _fields(key="not base64!"),
    "key too short": _fields(key="AAAA"),
}


@pytest.mark.parametrize("stored", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_stored_hash_is_false_not_an_exception(stored, monkeypatch):
    import engine.auth

    def never(*args, **kwargs):
        raise AssertionError(f"scrypt was run for a malformed hash {args[2:]}")

    monkeypatch.setattr(engine.auth, "_scrypt", never)  # bounded cost: a hostile hash is refused before any key derivation
    assert verify_password(PASSWORD, stored) is False
    problem = hash_problem(stored)
    assert problem and PASSWORD not in problem


@pytest.mark.parametrize("stored", [None, 42, b"scrypt$1$2$3$4$5"])
def test_non_string_stored_hash(stored):
    assert verify_password(PASSWORD, stored) is False
    assert hash_problem(stored)


def test_tampered_hash_is_refused():
    key = HASH.rsplit("$", 1)[1]
    flipped = ("B" if key[0] == "A" else "A") + key[1:]
    assert not verify_password(PASSWORD, _fields(key=flipped))
    assert not verify_password(PASSWORD, _fields(p="2"))  # same salt and key, other cost: another hash


def test_hash_password_refuses_empty():
    with pytest.raises(ValueError):
        hash_password("")


# --- engine: throttle ----------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_throttle_doubles_caps_and_resets():
    clock = Clock()
    t = LoginThrottle(base_s=1, cap_s=5, clock=clock)
    assert t.wait_s("a") == 0
    assert [t.failure("a") for _ in range(5)] == [1, 2, 4, 5, 5]
    assert t.wait_s("a") == 5 and t.failures("a") == 5
    clock.now += 3
    assert t.wait_s("a") == pytest.approx(2)
    assert t.wait_s("b") == 0  # keys are independent
    clock.now += 2
    assert t.wait_s("a") == 0
    t.success("a")
    assert t.failures("a") == 0 and t.failure("a") == 1


def test_throttle_begin_records_first_so_parallel_attempts_are_throttled():
    import threading

    clock = Clock()  # frozen: all twelve attempts arrive "at once"
    t = LoginThrottle(base_s=1, cap_s=60, clock=clock)
    start = threading.Barrier(12)
    waits: list[float] = []

    def attempt():
        start.wait(10)
        waits.append(t.begin("ip"))

    threads = [threading.Thread(target=attempt) for _ in range(12)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10)
    assert sorted(waits) == [0.0] + [1.0] * 11  # one attempt is checked, eleven are told to wait
    assert t.failures("ip") == 1  # refused attempts are not counted again
    t.success("ip")  # the checked one was right
    assert t.begin("ip") == 0.0
    clock.now += 0.5
    assert t.begin("ip") == pytest.approx(0.5)  # the attempt just begun counts as a failure until success()


def test_throttle_forgets_and_is_bounded():
    clock = Clock()
    t = LoginThrottle(base_s=1, cap_s=5, forget_s=10, max_keys=3, clock=clock)
    for key in "abcde":
        t.failure(key)
        clock.now += 0.1
    assert sum(t.failures(k) for k in "abcde") <= 3 and t.failures("e") == 1
    clock.now += 100
    t.failure("z")
    assert [t.failures(k) for k in "abcde"] == [0] * 5


# --- command line --------------------------------------------------------------------------------


def test_cli_hash_password_from_stdin():
    done = subprocess.run([sys.executable, "-m", "engine", "hash-password"], input=PASSWORD + "\n", capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    stored = done.stdout.strip()
    assert stored.startswith("scrypt$") and "\n" not in stored
    assert verify_password(PASSWORD, stored) and not verify_password(PASSWORD + "\n", stored)
    assert PASSWORD not in done.stdout + done.stderr


def test_cli_hash_password_empty_is_an_error(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    assert main(["hash-password"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: The password is empty") and not captured.out


# --- dashboard -----------------------------------------------------------------------------------


@pytest.fixture
def address():
    """Set Streamlit's real ``server.address`` option for the test; restored afterwards."""
    before = st_config.get_option("server.address")

    def set_address(value):
        st_config.set_option("server.address", value)

    set_address("127.0.0.1")
    yield set_address
    st_config.set_option("server.address", before)


@pytest.fixture
def clock(monkeypatch, tiny_registry, address):
    """A fresh server-wide throttle on a fake clock (the real one would make the test wait)."""
    import dashboard.auth

    fake = Clock()
    monkeypatch.setattr(dashboard.auth, "THROTTLE", LoginThrottle(base_s=1, cap_s=60, clock=fake))
    return fake


@pytest.fixture
def password(monkeypatch, clock):
    monkeypatch.setenv("HISTODASH_PASSWORD_HASH", HASH)


@pytest.fixture
def no_login(monkeypatch, clock):
    monkeypatch.delenv("HISTODASH_PASSWORD_HASH", raising=False)


def run(page: str | None = None, at: AppTest | None = None) -> AppTest:
    if at is None:  # (not `at or …`: an AppTest that has not run yet is falsy)
        at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    if page:
        at.switch_page(f"views/{page}.py")
    at.run()
    assert not at.exception, at.exception
    return at


def texts(at, kind) -> str:
    return "\n".join(str(e.value) for e in getattr(at, kind))


def assert_only_login_form(at):
    assert [w.label for w in at.text_input] == ["Password"]
    assert at.text_input[0].proto.type == TextInputProto.PASSWORD
    assert [b.label for b in at.button] == ["Sign in"]
    assert not at.title and not at.file_uploader and not at.selectbox and not at.dataframe
    assert len(at.sidebar.children) == 0, "nothing in the sidebar before sign-in"
    assert "Research use only" not in texts(at, "warning")


def sign_in(at, password: str) -> AppTest:
    at.text_input[0].input(password)
    next(b for b in at.button if b.label == "Sign in").click()
    return run(at=at)


def assert_home(at):
    assert at.title and "HistoDash" in at.title[0].value
    assert "Research use only" in texts(at, "warning")
    assert at.sidebar.selectbox[0].value == "tiny-test"
    assert not at.text_input


def test_password_first_run_shows_only_the_login_form(password):
    assert_only_login_form(run())


@pytest.mark.parametrize("page", ["upload", "predict", "survival"])
def test_password_direct_page_shows_only_the_login_form(password, page):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    run(at=at)
    assert_only_login_form(run(page, at=at))


def test_password_wrong_then_throttled_then_right_then_sign_out(password, clock):
    at = run()
    sign_in(at, "not the password")
    assert "Wrong password" in texts(at, "error") and "wait 1 s" in texts(at, "error").lower()
    assert_only_login_form(at)
    # Right password within the wait: refused without being checked.
    sign_in(at, PASSWORD)
    assert "wait 1 s" in texts(at, "error").lower() and "Too many" in texts(at, "error")
    assert_only_login_form(at)
    clock.now += 1.5
    sign_in(at, PASSWORD)
    assert_home(at)
    assert not at.error
    # Signed in, other pages work too.
    run("upload", at=at)
    assert at.file_uploader
    sign_out = [b for b in at.sidebar.button if b.label == "Sign out"]
    assert sign_out
    sign_out[0].click()
    run(at=at)
    assert_only_login_form(at)


def test_password_failures_grow_the_wait(password, clock):
    at = run()
    waits = []
    for _ in range(3):
        sign_in(at, "nope")
        waits.append(texts(at, "error"))
        clock.now += 100
    assert "Wait 1 s" in waits[0] and "Wait 2 s" in waits[1] and "Wait 4 s" in waits[2]


def test_malformed_hash_fails_closed(monkeypatch, clock):
    monkeypatch.setenv("HISTODASH_PASSWORD_HASH", MALFORMED["shell-mangled"])
    at = run()
    assert "misconfigured" in texts(at, "error") and "HISTODASH_PASSWORD_HASH" in texts(at, "error")
    assert not at.title and not at.selectbox and not at.text_input and len(at.sidebar.children) == 0


def test_without_login_home_shows_directly(no_login):
    at = run()
    assert_home(at)
    assert "without a login" not in texts(at, "warning")
    assert not [b for b in at.button if b.label in ("Sign in", "Sign out")]


@pytest.mark.parametrize("listen", ["0.0.0.0", "", "192.168.1.20", "lab-server.example.org"])
def test_non_loopback_without_login_warns_on_every_page(no_login, address, listen):
    address(listen)
    at = run()
    assert_home(at)
    assert "without a login" in texts(at, "warning")
    run("upload", at=at)
    assert "without a login" in texts(at, "warning") and at.file_uploader


@pytest.mark.parametrize("listen", ["127.0.0.1", "localhost", "::1", "127.0.1.1"])
def test_loopback_does_not_warn(no_login, address, listen):
    address(listen)
    assert "without a login" not in texts(run(), "warning")


def test_non_loopback_with_password_does_not_warn(password, address, clock):
    address("0.0.0.0")
    at = run()
    assert "without a login" not in texts(at, "warning")
    sign_in(at, PASSWORD)
    assert_home(at)
    assert "without a login" not in texts(at, "warning")


OIDC = {
    "redirect_uri": "http://localhost:8501/oauth2callback",
    "cookie_secret": "not-a-real-secret",
    "client_id": "histodash",
    "client_secret": "not-a-real-secret",
    "server_metadata_url": "https://id.example.org/.well-known/openid-configuration",
}


def oidc_app(user: dict, access: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.secrets["auth"] = OIDC
    if access:
        at.secrets["access"] = access
    at.user = user
    return run(at=at)


def test_oidc_signed_out_sees_only_sign_in_button(no_login, address):
    address("0.0.0.0")
    at = oidc_app({})
    assert [b.label for b in at.button] == ["Sign in"]
    assert not at.title and not at.selectbox and not at.text_input and len(at.sidebar.children) == 0
    assert "without a login" not in texts(at, "warning")


def test_oidc_signed_in_sees_the_app_and_sign_out(no_login):
    at = oidc_app({"is_logged_in": True, "email": "pat@lab.example.org", "name": "Pat"})
    assert_home(at)
    assert "Sign out" in [b.label for b in at.sidebar.button]


def test_oidc_allow_list_refuses_other_accounts(no_login):
    access = {"allowed_domains": ["lab.example.org"]}
    at = oidc_app({"is_logged_in": True, "email": "someone@gmail.com"}, access)
    assert "not allowed" in texts(at, "error")
    assert not at.title and not at.selectbox and len(at.sidebar.children) == 0
    assert_home(oidc_app({"is_logged_in": True, "email": "Pat@Lab.Example.org"}, access))


def test_secrets_example_is_valid_and_the_real_file_is_ignored(no_login):
    import tomllib

    example = tomllib.loads((ROOT / ".streamlit" / "secrets.toml.example").read_text())
    assert {"redirect_uri", "cookie_secret", "client_id", "client_secret", "server_metadata_url"} <= set(example["auth"])
    assert example["auth"]["redirect_uri"].endswith("/oauth2callback")
    ignored = subprocess.run(["git", "check-ignore", "-q", ".streamlit/secrets.toml"], cwd=ROOT)
    assert ignored.returncode == 0, ".streamlit/secrets.toml must be git-ignored"
    # The example, used as it stands, gives the sign-in button and nothing else; its allow-list works.
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for section, values in example.items():
        at.secrets[section] = values
    at.user = {}
    run(at=at)
    assert [b.label for b in at.button] == ["Sign in"] and not at.title
    at.user = {"is_logged_in": True, "email": "x@elsewhere.org"}
    run(at=at)
    assert "not allowed" in texts(at, "error") and not at.title


def test_authlib_is_installed_for_st_login():
    from streamlit.auth_util import is_authlib_installed

    assert is_authlib_installed(), "st.login needs Authlib>=1.3.2 (pinned in requirements.txt)"


def test_password_sign_in_is_held_for_the_browser_and_sign_out_clears_its_work(password, clock):
    """A new Streamlit session with the same cookie id (a refresh, a new tab, a restarted server) is still signed in;
    sign-out ends that for every tab, deletes the workspace and gives this websocket a new, empty identity."""
    from dashboard import tileserver, websession
    from engine.config import get_settings

    at = run()
    sign_in(at, PASSWORD)
    assert_home(at)
    sid = at.session_state["session_id"]
    assert websession.is_signed_in(sid)
    workspace = get_settings().work_dir / sid
    (workspace / "tiles").mkdir(parents=True, exist_ok=True)
    refreshed = AppTest.from_file(APP, default_timeout=TIMEOUT)
    refreshed.session_state["session_id"] = sid  # what the browser's cookie names
    assert_home(run(at=refreshed))
    token = tileserver.mint(DEMO_SLIDE, sid, "upload")  # what the Slide page mints for this browser
    assert tileserver.authorise(token, sid) is not None
    next(b for b in at.sidebar.button if b.label == "Sign out").click()
    run(at=at)
    assert_only_login_form(at)
    assert not websession.is_signed_in(sid) and websession.is_retired(sid)
    assert token not in tileserver._GRANTS and tileserver.authorise(token, sid) is None  # revoked by the sign-out
    assert not workspace.exists()
    assert at.session_state["session_id"] != sid
    assert_only_login_form(run(at=refreshed))  # the other tab is signed out too
