"""Configure the project's DVC remotes: a local folder (no server) and the S3 store.

Who writes what where, and why:

* `.dvc/config` (committed): the remote *names* and URLs (`local` -> a folder, `s3` ->
  `s3://r2d2-dvc`) and the default remote, which stays the local folder so a fresh clone
  works with no server.
* `.dvc/config.local` (git-ignored by DVC's own `.dvc/.gitignore`, mode 0600 here): the
  S3 `endpointurl` (a port on this machine), the keys, and, with `default=True`, the switch
  of the default remote to `s3` for this checkout only.

Keys may also stay out of every file: pass `credentials=None` and export AWS_* instead
(`eval "$(r2d2 services env)"`). DVC's Python config API is used instead of five `dvc
remote` sub-processes (each ~1 s of start-up); it validates exactly as the CLI does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from r2d2.errors import UserError


def _dvc_dir(repo_dir: str | Path) -> Path:
    dvc_dir = Path(repo_dir).resolve() / ".dvc"
    if not dvc_dir.is_dir():
        raise UserError(f"{repo_dir} is not a DVC repository (no .dvc/ folder); run `dvc init` there first")
    return dvc_dir


def _config(repo_dir: str | Path) -> Any:
    from dvc.config import Config

    return Config(dvc_dir=str(_dvc_dir(repo_dir)))


def _protect_local(repo_dir: str | Path) -> None:
    local = _dvc_dir(repo_dir) / "config.local"
    if local.exists():
        os.chmod(local, 0o600)


def configure_local_remote(repo_dir: str | Path, path: str | Path, name: str = "local",
                           default: bool = True) -> Path:
    """Add (or update) a folder remote in the committed `.dvc/config`; make it the default.

    A relative `path` is relative to `repo_dir` and stored relative to `.dvc/`, so the
    committed config works in every clone; an absolute path outside the repo stays absolute.
    A folder inside the repo gets a `.gitignore` of `*` so its objects are never committed.
    Returns the absolute folder.
    """
    from dvc.config import ConfigError
    from dvc.config_schema import RelPath

    repo = Path(repo_dir).resolve()
    folder = Path(path).expanduser()
    folder = (folder if folder.is_absolute() else repo / folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if folder.is_relative_to(repo) and not (folder / ".gitignore").exists():
        (folder / ".gitignore").write_text("# DVC remote storage: objects are never committed to git\n*\n")
    url: str = RelPath(str(folder)) if folder.is_relative_to(repo) else str(folder)
    try:
        with _config(repo).edit("repo") as conf:
            conf["remote"][name] = {"url": url}
            if default:
                conf["core"]["remote"] = name
    except ConfigError as err:
        raise UserError(f"DVC config of {repo}: {err}") from None
    return folder


def configure_s3_remote(repo_dir: str | Path, endpoint: str, bucket: str = "r2d2-dvc", *, prefix: str = "",
                        credentials: dict[str, str] | None = None, name: str = "s3", default: bool = False,
                        shared_endpoint: bool = False) -> str:
    """Add an `s3://bucket[/prefix]` remote with `endpointurl`; keys only in config.local.

    `default=True` makes it the default remote in `.dvc/config.local` (this checkout only;
    the committed default stays the local folder). `shared_endpoint=True` commits the
    endpoint too, for a team store with a stable address. Returns the remote URL.
    """
    from dvc.config import ConfigError

    if not endpoint.startswith(("http://", "https://")):
        raise UserError(f"S3 endpoint must be an http(s) URL, got {endpoint!r}")
    url = f"s3://{bucket}/{prefix.strip('/')}".rstrip("/")
    cfg = _config(repo_dir)
    try:
        with cfg.edit("repo") as conf:
            section = conf["remote"].setdefault(name, {})
            # keys never belong in the committed file, even if someone put them there by hand
            for key in ("access_key_id", "secret_access_key", "session_token"):
                section.pop(key, None)
            section["url"] = url
            if shared_endpoint:
                section["endpointurl"] = endpoint
            else:
                section.pop("endpointurl", None)
        with cfg.edit("local") as conf:
            section = conf["remote"].setdefault(name, {})
            if not shared_endpoint:
                section["endpointurl"] = endpoint
            if credentials:
                section["access_key_id"] = credentials["access_key_id"]
                section["secret_access_key"] = credentials["secret_access_key"]
                if credentials.get("region"):
                    section["region"] = credentials["region"]
            if default:
                conf["core"]["remote"] = name
    except ConfigError as err:
        raise UserError(f"DVC config of {repo_dir}: {err}") from None
    finally:
        _protect_local(repo_dir)
    return url


def unset_local_default(repo_dir: str | Path) -> None:
    """Drop the checkout-only default (back to the committed one, normally the local folder)."""
    with _config(repo_dir).edit("local") as conf:
        conf["core"].pop("remote", None)
    _protect_local(repo_dir)


def default_remote(repo_dir: str | Path) -> str | None:
    """The remote `dvc push` uses, after merging config and config.local."""
    return _config(repo_dir).read()["core"].get("remote")
