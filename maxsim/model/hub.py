"""Pushing a model folder to the Hugging Face hub (huggingface_hub's ``upload_folder``)."""

from __future__ import annotations

import re
from pathlib import Path

from maxsim.errors import MaxsimError
from maxsim.model.card import CARD_FILE
from maxsim.model.formats import detect_format

#: files of a training checkpoint that are not the model (optimizer and schedule state, the
#: position and settings a resume reads), never uploaded
NOT_UPLOADED = ("trainer_state.pt", "training_state.json", "config.yaml")


class HubError(MaxsimError):
    """A push that cannot be done: no model there, no token, the hub out of reach."""


def files_to_upload(folder: str | Path) -> list[str]:
    """The files of a model folder that :func:`push` uploads (paths relative to it, sorted):
    everything but a checkpoint's training state and hidden files. The folder must hold a model
    in one of the three formats and its model card."""
    folder = Path(folder)
    if not folder.is_dir() or detect_format(folder) is None:
        raise HubError(f"{folder} holds no model (maxsim, PyLate or colbert-ai folder). Fix: push a best/ folder, "
                       "a checkpoint, or what maxsim export wrote")
    if not (folder / CARD_FILE).is_file():
        raise HubError(f"{folder} has no {CARD_FILE} (model card). Fix: maxsim export {folder} --format "
                       f"{detect_format(folder)} --output NEW writes the folder again with one; push NEW")
    relative = (p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    return sorted(str(p) for p in relative
                  if p.name not in NOT_UPLOADED and not any(s.startswith(".") for s in p.parts))


def push(folder: str | Path, repo: str, private: bool = False, revision: str | None = None,
         token: str | None = None, api=None) -> str:
    """Upload a model folder to the hub repository ``repo`` (``user/name``, made if it does not
    exist, ``private`` if asked) at ``revision`` (a branch, made from main if new; default main);
    returns the commit's URL. The token: ``token``, else ``HF_TOKEN`` or the huggingface_hub login.
    ``api``: an ``HfApi`` (tests pass their own)."""
    import huggingface_hub

    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise HubError(f"--repo {repo!r} is not a hub repository name. Fix: give USER/NAME (or ORG/NAME)")
    files = files_to_upload(folder)
    token = token or huggingface_hub.get_token()
    if not token:
        raise HubError("no hub token. Fix: set HF_TOKEN, or log in with `hf auth login` (huggingface_hub)")
    api = api or huggingface_hub.HfApi(token=token)
    try:
        api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo, branch=revision, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model", revision=revision,
                                 allow_patterns=files, commit_message=f"maxsim push: {Path(folder).name}")
    except Exception as err:  # (huggingface_hub's own, httpx's and OS errors alike: say which and how to fix)
        raise HubError(f"could not push to {repo}: {type(err).__name__}: {err}. Fix: check the network, the token's "
                       "write access, HF_ENDPOINT, and that HF_HUB_OFFLINE is not set") from err
    return str(getattr(info, "commit_url", info))
