"""Password hashing and a login-failure throttle for hosted deployments (no Streamlit here).

A lab without an OpenID Connect provider protects the dashboard with one shared password. The
server stores only its hash, in ``HISTODASH_PASSWORD_HASH``; ``python -m engine hash-password`` makes it.

Hash format (self-describing, so the cost can be raised later without breaking stored hashes)::

    scrypt$<n>$<r>$<p>$<salt, base64>$<derived key, base64>

The ``$`` separators mean the value must be single-quoted in a shell (``'scrypt$16384$…'``) and
written ``$$`` in a docker-compose file; :func:`hash_problem` says what is wrong with a mangled one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import os
import threading
import time
from dataclasses import dataclass

SCHEME = "scrypt"
N, R, P = 2**14, 8, 1  # about 50 ms and 16 MiB per check: cheap for one login, costly for guessing
SALT_BYTES = 16
KEY_BYTES = 32
# Bounds for parameters read from a stored hash: a hostile or mistyped value must not make a check
# allocate gigabytes or run for minutes (scrypt needs about 128·n·r bytes and n·r·p work).
MAX_N, MAX_R, MAX_P = 2**20, 32, 16
MAX_MEMORY_BYTES = 256 * 1024 * 1024
MAX_WORK = 2**24
MAX_PASSWORD_CHARS = 1024


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    maxmem = 128 * r * (n + p + 2) + 1024 * 1024  # scrypt's own need plus slack
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=maxmem)


def hash_password(password: str) -> str:
    """A salted scrypt hash of ``password`` in the ``scrypt$n$r$p$salt$hash`` format."""
    if not isinstance(password, str) or not password:
        raise ValueError("the password must be a non-empty string")
    if len(password) > MAX_PASSWORD_CHARS:
        raise ValueError(f"the password is longer than {MAX_PASSWORD_CHARS} characters")
    salt = os.urandom(SALT_BYTES)
    key = _scrypt(password, salt, N, R, P, KEY_BYTES)
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return f"{SCHEME}${N}${R}${P}${b64(salt)}${b64(key)}"


@dataclass(frozen=True)
class _Parsed:
    n: int
    r: int
    p: int
    salt: bytes
    key: bytes


def _parse(stored: str) -> _Parsed:
    """Split a stored hash; ValueError (with a reason an admin can act on) when it is malformed."""
    if not isinstance(stored, str):
        raise ValueError("not a string")
    parts = stored.strip().split("$")
    if len(parts) != 6:
        raise ValueError(f"expected 6 '$'-separated fields, found {len(parts)}")
    scheme, n_s, r_s, p_s, salt_s, key_s = parts
    if scheme != SCHEME:
        raise ValueError(f"unknown scheme {scheme[:20]!r} (expected {SCHEME!r})")
    try:
        n, r, p = int(n_s), int(r_s), int(p_s)
    except ValueError:
        raise ValueError("n, r and p must be integers") from None
    if n < 2 or n & (n - 1) or n > MAX_N:
        raise ValueError(f"n must be a power of two between 2 and {MAX_N}")
    if not 1 <= r <= MAX_R or not 1 <= p <= MAX_P:
        raise ValueError(f"r must be 1..{MAX_R} and p 1..{MAX_P}")
    if 128 * n * r > MAX_MEMORY_BYTES or n * r * p > MAX_WORK:
        raise ValueError("n, r and p ask for more memory or work than a login check may use")
    try:
        salt = base64.b64decode(salt_s, validate=True)
        key = base64.b64decode(key_s, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("salt or hash is not valid base64") from None
    if len(salt) < 8 or not 16 <= len(key) <= 64:
        raise ValueError("salt or hash has the wrong length")
    return _Parsed(n, r, p, salt, key)


def hash_problem(stored: str | None) -> str | None:
    """None when ``stored`` is a well-formed hash, otherwise why not (never echoes the value)."""
    try:
        _parse(stored)  # type: ignore[arg-type]
    except ValueError as err:
        return str(err)
    return None


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored``. False — never an exception — for a wrong password,
    a malformed stored hash or a non-string password. The comparison is constant-time."""
    try:
        parsed = _parse(stored)
    except ValueError:
        return False
    if not isinstance(password, str) or len(password) > MAX_PASSWORD_CHARS:
        return False
    try:
        candidate = _scrypt(password, parsed.salt, parsed.n, parsed.r, parsed.p, len(parsed.key))
    except (ValueError, MemoryError, UnicodeError):
        return False
    return hmac.compare_digest(candidate, parsed.key)


class LoginThrottle:
    """Growing delays after failed logins, per client key (an IP address, say).

    After the k-th consecutive failure the client must wait ``base_s * 2**(k-1)`` seconds (1, 2, 4, …)
    capped at ``cap_s`` before the next attempt is checked. A success clears the key. Entries idle for
    ``forget_s`` are dropped, and at most ``max_keys`` are kept, so the table cannot grow without bound.
    Thread-safe: one instance serves every browser session of the server.
    """

    def __init__(self, base_s: float = 1.0, cap_s: float = 60.0, *, forget_s: float = 3600.0, max_keys: int = 10_000, clock=time.monotonic):
        self.base_s, self.cap_s, self.forget_s, self.max_keys = float(base_s), float(cap_s), float(forget_s), int(max_keys)
        self._clock = clock
        self._lock = threading.Lock()
        self._state: dict[str, tuple[int, float]] = {}  # key -> (consecutive failures, time of the last one)

    def _delay(self, failures: int) -> float:
        return 0.0 if failures <= 0 else min(self.cap_s, self.base_s * 2 ** min(failures - 1, 60))

    def wait_s(self, key: str) -> float:
        """Seconds ``key`` must still wait before its next attempt is checked (0: go ahead)."""
        with self._lock:
            failures, last = self._state.get(key, (0, 0.0))
            return max(0.0, last + self._delay(failures) - self._clock()) if failures else 0.0

    def failure(self, key: str) -> float:
        """Record a failed attempt; returns the delay now imposed on ``key``."""
        now = self._clock()
        with self._lock:
            self._prune(now)
            failures = self._state.get(key, (0, 0.0))[0] + 1
            self._state[key] = (failures, now)
            return self._delay(failures)

    def success(self, key: str) -> None:
        with self._lock:
            self._state.pop(key, None)

    def failures(self, key: str) -> int:
        with self._lock:
            return self._state.get(key, (0, 0.0))[0]

    def reset(self) -> None:
        with self._lock:
            self._state.clear()

    def _prune(self, now: float) -> None:
        stale = [k for k, (f, last) in self._state.items() if now - last > max(self.forget_s, self._delay(f))]
        for k in stale:
            del self._state[k]
        while len(self._state) >= self.max_keys:  # drop the oldest
            del self._state[min(self._state, key=lambda k: self._state[k][1])]


def wait_message(seconds: float) -> str:
    return f"Too many failed sign-in attempts: wait {math.ceil(seconds)} s before trying again."
