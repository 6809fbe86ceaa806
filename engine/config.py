"""Settings, read from environment variables with sensible defaults.

| variable | default | meaning |
|---|---|---|
| ``HISTODASH_HOME`` | ``<repo>/.histodash`` | base folder for everything HistoDash writes |
| ``HISTODASH_MODELS_DIR`` | ``<repo>/models`` | model registry (one folder per model) |
| ``HISTODASH_CACHE_DIR`` | ``$HISTODASH_HOME/cache`` | diskcache folder for inference results |
| ``HISTODASH_CACHE_SIZE_GB`` | ``2`` | cache size limit in GB |
| ``HISTODASH_WORK_DIR`` | ``$HISTODASH_HOME/sessions`` | per-session upload workspaces |
| ``HISTODASH_JOBS_DIR`` | ``$HISTODASH_HOME/jobs`` | background job records and logs |
| ``HISTODASH_EXAMPLES_DIR`` | ``<repo>/examples`` | demo tiles shown on the Upload page |
| ``HISTODASH_SLIDES_DIR`` | unset | read-only slide library |
| ``HISTODASH_DEFAULT_MODEL`` | ``lc25000-lung-cnn`` | model selected when the user has not picked one |
| ``HISTODASH_MAX_PIXELS`` | ``50000000`` | largest image (pixels) decoded as a tile |
| ``HISTODASH_MAX_UPLOAD_MB`` | ``200`` | largest single tile file / uncompressed zip member |
| ``HISTODASH_PASSWORD_HASH`` | unset | shared-password login (``python -m engine hash-password`` makes the hash); OIDC via ``st.login`` when ``.streamlit/secrets.toml`` has ``[auth]`` |
| ``HISTODASH_SESSION_MAX_AGE_H`` | ``24`` | a session workspace idle this long is deleted |
| ``HISTODASH_MAX_CONCURRENT_INFERENCE`` | ``2`` | heavy inference runs at once across all users (the rest queue) |
| ``HISTODASH_LOG_NAMES`` | ``0`` | ``1`` lets logs name uploaded files and slides (off: no patient identifiers in logs) |
| ``HISTODASH_DATA_ROOTS`` | the shared data folder | folders (separated by ``:``) the Training page may train from, besides the session's uploads |
| ``HISTODASH_JOB_SLOTS`` | ``1`` | background jobs that run at once (the rest queue) |
| ``HISTODASH_RUNNER`` | ``local`` | where background jobs run: ``local`` (this machine's processes) or ``ray`` (a Ray cluster) |
| ``HISTODASH_RAY_ADDRESS`` | unset | the Ray cluster's Jobs address, e.g. ``http://head:8265`` (unset: Ray's own ``RAY_ADDRESS``) |
| ``HISTODASH_SHARED_DATA`` | ``<repo>/../shared/data`` | the shared real-data folder (demo training data, tests, benchmarks) |

:func:`get_settings` is the only reader of ``HISTODASH_*`` variables in the engine and the dashboard;
everything else asks it. (One test-harness variable is read by the tests alone:
``HISTODASH_CHROMIUM``, the browser binary of the end-to-end tests, in ``tests/browser.py``.)
A bad value is the administrator's error and says which variable it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import InvalidInputError

REPO_ROOT = Path(__file__).resolve().parent.parent


def _path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else default


def _paths(name: str, default: tuple[Path, ...]) -> tuple[Path, ...]:
    value = os.environ.get(name)
    if value is None:
        return default
    return tuple(Path(p).expanduser() for p in value.split(os.pathsep) if p.strip())


def _parsed(name: str, default, convert, what: str):
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return convert(value)
    except ValueError as exc:  # a bad setting is the admin's error: say which one
        raise InvalidInputError(f"{name}={value!r} is not {what}.") from exc


def _num(name: str, default: float) -> float:
    return _parsed(name, default, float, "a number")


def _whole(name: str, default: int) -> int:
    return _parsed(name, default, int, "a whole number")


@dataclass(frozen=True)
class Settings:
    """Resolved settings. Build with :func:`get_settings` so the environment is read each time."""

    home: Path
    models_dir: Path
    cache_dir: Path
    cache_size_bytes: int
    work_dir: Path
    jobs_dir: Path
    examples_dir: Path
    slides_dir: Path | None
    default_model: str
    max_pixels: int
    max_upload_bytes: int
    password_hash: str | None = None
    session_max_age_s: float = 24 * 3600.0
    max_concurrent_inference: int = 2
    log_names: bool = False
    data_roots: tuple[Path, ...] = ()
    job_slots: int = 1
    shared_data: Path = REPO_ROOT.parent / "shared" / "data"
    runner: str = "local"
    ray_address: str | None = None
    extra: dict = field(default_factory=dict)


def get_settings() -> Settings:
    home = _path("HISTODASH_HOME", REPO_ROOT / ".histodash")
    slides = os.environ.get("HISTODASH_SLIDES_DIR")
    return Settings(
        home=home,
        models_dir=_path("HISTODASH_MODELS_DIR", REPO_ROOT / "models"),
        cache_dir=_path("HISTODASH_CACHE_DIR", home / "cache"),
        cache_size_bytes=int(_num("HISTODASH_CACHE_SIZE_GB", 2.0) * 1e9),
        work_dir=_path("HISTODASH_WORK_DIR", home / "sessions"),
        jobs_dir=_path("HISTODASH_JOBS_DIR", home / "jobs"),
        examples_dir=_path("HISTODASH_EXAMPLES_DIR", REPO_ROOT / "examples"),
        slides_dir=Path(slides).expanduser() if slides else None,
        default_model=os.environ.get("HISTODASH_DEFAULT_MODEL", "lc25000-lung-cnn"),
        max_pixels=int(_num("HISTODASH_MAX_PIXELS", 50_000_000)),
        max_upload_bytes=int(_num("HISTODASH_MAX_UPLOAD_MB", 200) * 1024 * 1024),
        password_hash=os.environ.get("HISTODASH_PASSWORD_HASH") or None,
        session_max_age_s=_num("HISTODASH_SESSION_MAX_AGE_H", 24.0) * 3600.0,
        max_concurrent_inference=max(1, int(_num("HISTODASH_MAX_CONCURRENT_INFERENCE", 2))),
        log_names=os.environ.get("HISTODASH_LOG_NAMES", "0").strip().lower() in ("1", "true", "yes", "on"),
        job_slots=max(1, _whole("HISTODASH_JOB_SLOTS", 1)),
        shared_data=_path("HISTODASH_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"),
        runner=_runner(),
        ray_address=os.environ.get("HISTODASH_RAY_ADDRESS") or None,
        data_roots=_paths("HISTODASH_DATA_ROOTS", (_path("HISTODASH_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"),)),
    )


RUNNERS = ("local", "ray")


def _runner() -> str:
    value = (os.environ.get("HISTODASH_RUNNER") or "local").strip().lower()
    if value not in RUNNERS:
        raise InvalidInputError(f"HISTODASH_RUNNER={value!r} is not a job runner.", f"Use one of: {', '.join(RUNNERS)}.")
    return value
