"""Pretrained folders on the Hugging Face Hub: ids, offline downloads, uploads and model cards.

A Hub id is ``org/repo`` or ``org/repo@revision``. Downloads go through ``huggingface_hub`` and its cache,
so ``HF_HUB_OFFLINE=1`` (or no network) reads what the cache holds, and ``HF_HUB_CACHE`` / ``HF_HOME``
choose the cache. Only the files of a pretrained folder are fetched.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from neurostorm.errors import InputError

HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
FOLDER_FILES = ["config.json", "model.safetensors", "README.md"]


def is_hub_id(name: str) -> bool:
    return HUB_ID.match(name) is not None


def download_folder(name: str) -> Path:
    """The local folder of Hub id ``name`` (downloaded into, or found in, the Hub cache)."""
    import huggingface_hub
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, OfflineModeIsEnabled

    match = HUB_ID.match(name)
    if match is None:
        raise InputError(name, "not a Hub id (org/repo or org/repo@revision)")
    try:
        folder = huggingface_hub.snapshot_download(match["repo"], revision=match["revision"],
                                                   allow_patterns=FOLDER_FILES)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
        raise InputError(name, "not in the local Hub cache and the Hub cannot be reached (offline or no "
                               f"network): {str(err).splitlines()[0]}") from None
    except (HFValidationError, huggingface_hub.errors.HfHubHTTPError, OSError) as err:
        raise InputError(name, f"cannot fetch from the Hub: {str(err).splitlines()[0]}") from None
    return Path(folder)


def push_folder(folder: Path, repo_id: str, private: bool = False) -> str:
    """Upload a pretrained folder to the Hub repository ``repo_id`` (created if needed); its URL."""
    import huggingface_hub

    try:
        api = huggingface_hub.HfApi()
        api.create_repo(repo_id, exist_ok=True, private=private)
        return str(api.upload_folder(folder_path=str(folder), repo_id=repo_id, allow_patterns=FOLDER_FILES))
    except Exception as err:  # offline mode, network, authentication: all end the upload the same way
        raise InputError(repo_id, f"upload to the Hub failed ({str(err).splitlines()[0]}); "
                                  f"the folder {folder} is complete locally") from None


def model_card(config: dict) -> str:
    """README.md of a pretrained folder: what it is, what input it expects, what it was trained on."""
    architecture, settings = config["architecture"], config["config"]
    preprocessing, training = config.get("preprocessing") or {}, config.get("training") or {}
    lines = ["---", "library_name: neurostorm", "tags: [fmri, neuroimaging, mamba, foundation-model]", "---", "",
             f"# {architecture} weights", "",
             "Load with `neurostorm.from_pretrained(\"<this folder or Hub id>\")`.", "",
             "## Input the weights expect", ""]
    for key, value in preprocessing.items():
        if key == "grid" and isinstance(value, dict):
            lines.append(f"- grid: {value.get('name')} ({' × '.join(map(str, value.get('shape', [])))} voxels)")
        elif key == "params" and isinstance(value, dict):
            lines += [f"- {k}: {v}" for k, v in value.items() if k in ("tr", "normalization", "fill_floor", "storage")]
        elif not isinstance(value, (dict, list)):
            lines.append(f"- {key}: {value}")
    if not preprocessing:
        lines.append("- not recorded (weights saved outside a training run)")
    lines += ["", "Preprocess new data the same way with `neurostorm preprocess INPUT --out STORE --like MODEL`.",
              "", "## Training data", ""]
    lines += [f"- {key}: {value}" for key, value in training.items()] or ["- not recorded"]
    lines += ["", "## Configuration", "", "```json", json.dumps(settings, indent=2), "```", "",
              f"Written by neurostorm {config.get('neurostorm_version', '?')}.", ""]
    return "\n".join(lines)
