"""Pushing MPN adapters to the Hugging Face Hub with their own model card.

``PeftModel.push_to_hub`` comes from transformers' ``PushToHubMixin``, which saves the adapter and then overwrites
``README.md`` with a generic transformers card fetched from (or templated for) the repo. For MPN adapters that
would throw away the MPN card, so ``import peft_mpn`` routes ``push_to_hub`` of MPN adapters here: save into a
temporary directory (adapter weights, config and the MPN card) and upload exactly those files in one commit.
Other adapters keep peft's behaviour.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi


def _api() -> HfApi:
    return HfApi(library_name="peft-mpn")


def is_mpn_model(model: Any) -> bool:
    """Whether a ``PeftModel`` holds MPN adapters."""
    config = getattr(model, "peft_config", None)
    return bool(config) and all(str(getattr(c, "peft_type", "")) == "MPN" for c in config.values())


def push_adapter_to_hub(
    model: Any,
    repo_id: str,
    *,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: bool | str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    **save_kwargs: Any,
) -> Any:
    """Upload an MPN ``PeftModel``'s adapter files and model card to ``repo_id``.

    Args:
        model: The ``PeftModel`` with MPN adapters.
        repo_id: ``"user/name"`` of the Hub repository (created if missing).
        commit_message: Defaults to ``"Upload MPN adapter (N patches)"``.
        commit_description: Optional longer description.
        private: Whether a newly created repository is private.
        token: Hub token; defaults to the stored login.
        revision: Branch to push to.
        create_pr: Open a pull request instead of committing directly.
        **save_kwargs: Passed on to ``save_pretrained`` (e.g. ``selected_adapters``).

    Returns:
        The ``CommitInfo`` of the upload.
    """
    api = _api()
    repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
    if commit_message is None:
        patches = sum(c.num_patches() for c in model.peft_config.values())
        commit_message = f"Upload MPN adapter ({patches} patches)"
    with tempfile.TemporaryDirectory() as tmp_dir:
        model.save_pretrained(tmp_dir, **save_kwargs)
        operations = [
            CommitOperationAdd(path_in_repo=path.relative_to(tmp_dir).as_posix(), path_or_fileobj=str(path))
            for path in sorted(Path(tmp_dir).rglob("*"))
            if path.is_file()
        ]
        if revision is not None and not revision.startswith("refs/pr"):
            api.create_branch(repo_id=repo_id, branch=revision, token=token, exist_ok=True)
        return api.create_commit(
            repo_id=repo_id,
            operations=operations,
            commit_message=commit_message,
            commit_description=commit_description,
            token=token,
            create_pr=create_pr,
            revision=revision,
        )


def install_push_to_hub() -> None:
    """Route ``PeftModel.push_to_hub`` of MPN adapters to :func:`push_adapter_to_hub`. Idempotent."""
    from peft import PeftModel

    original = PeftModel.push_to_hub
    if getattr(original, "_peft_mpn", False):
        return

    @functools.wraps(original)
    def push_to_hub(self: Any, repo_id: str, *args: Any, **kwargs: Any) -> Any:
        if args or not is_mpn_model(self):
            return original(self, repo_id, *args, **kwargs)
        for unsupported in ("use_temp_dir", "max_shard_size", "tags", "safe_serialization"):
            kwargs.pop(unsupported, None)
        return push_adapter_to_hub(self, repo_id, **kwargs)

    push_to_hub._peft_mpn = True  # type: ignore[attr-defined]
    PeftModel.push_to_hub = push_to_hub


__all__ = ["install_push_to_hub", "is_mpn_model", "push_adapter_to_hub"]
