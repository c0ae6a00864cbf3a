"""A version's model card: the source's README (its model card) and license files, carried into
``<version>/model_card/``, and the license it is under, recorded in the manifest (``license``, and
``model_card``: the files carried and where the license was read).

Where the license is read, first found wins:

1. the README's YAML front matter ``license:`` (the Hugging Face Hub's model-card metadata);
2. ``config.json``'s ``license`` (some exporters write it there);
3. a LICENSE file, recognised by its heading (Apache-2.0, MIT, BSD-2/3-Clause; else ``other``);
4. for a Lightning checkpoint, its ``hparams["license"]``;
5. ``--license`` (the only source when none of the above says anything).

``--license`` that contradicts what the source says is refused (the card is the owner's word); a source
that says nothing and no flag leave ``license: null`` with a warning.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

from core.errors import InvalidArgument

log = logging.getLogger(__name__)

FOLDER = "model_card"
# Files of a model folder that belong to its card: README first, then license texts and notices.
CARD_FILES = re.compile(r"^(README|LICEN[CS]E|COPYING|NOTICE)(\.(md|txt|rst))?$", re.IGNORECASE)
# A license text's heading -> its SPDX id (lower case, as the Hub writes them).
KNOWN_TEXTS = (
    (re.compile(r"apache license\s+version 2\.0", re.IGNORECASE), "apache-2.0"),
    (re.compile(r"^\s*mit license", re.IGNORECASE), "mit"),
    (re.compile(r"permission is hereby granted, free of charge", re.IGNORECASE), "mit"),
    (re.compile(r"neither the name of", re.IGNORECASE), "bsd-3-clause"),
    (re.compile(r"redistribution and use in source and binary forms", re.IGNORECASE), "bsd-2-clause"),
)


def front_matter(readme: Path) -> dict:
    """The YAML block between the leading ``---`` lines of a model card ({} when there is none)."""
    import yaml

    text = readme.read_text(encoding="utf-8", errors="replace")
    match = re.match(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(\r?\n|\Z)", text, re.DOTALL)
    if match is None:
        return {}
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as err:
        log.warning("%s: the front matter is not valid YAML (%s); its license is not read", readme, err)
        return {}
    return data if isinstance(data, dict) else {}


def _license_value(value) -> str | None:
    if isinstance(value, list):
        value = ", ".join(str(v) for v in value if v)
    return str(value).strip() or None if value is not None else None


def license_of_text(path: Path) -> str:
    head = path.read_text(encoding="utf-8", errors="replace")[:4000]
    for pattern, spdx in KNOWN_TEXTS:
        if pattern.search(head):
            return spdx
    return "other"


def card_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and CARD_FILES.match(p.name))


def find_license(folder: Path | None, hparams: dict | None = None) -> tuple[str | None, str | None]:
    """(license, where it was read) from a model folder and/or a checkpoint's hparams."""
    if folder is not None:
        files = card_files(folder)
        for readme in (f for f in files if f.name.upper().startswith("README")):
            meta = front_matter(readme)
            found = _license_value(meta.get("license"))
            if found == "other" and meta.get("license_name"):
                found = f"other: {meta['license_name']}"
            if found:
                return found, f"{readme.name} front matter"
        config = folder / "config.json"
        if config.is_file():
            try:
                found = _license_value(json.loads(config.read_text(encoding="utf-8")).get("license"))
            except (json.JSONDecodeError, AttributeError):
                found = None
            if found:
                return found, "config.json"
        for text in (f for f in files if not f.name.upper().startswith(("README", "NOTICE"))):
            return license_of_text(text), f"{text.name} (its heading)"
    found = _license_value((hparams or {}).get("license"))
    if found:
        return found, "the checkpoint's hparams"
    return None, None


def model_card(
    staged_dir: Path, *, folder: Path | None = None, hparams: dict | None = None, flag: str | None = None
) -> dict:
    """Copy the card's files of ``folder`` into ``<staged_dir>/model_card/`` and return the manifest's
    ``license`` and ``model_card`` keys; InvalidArgument when ``--license`` contradicts the source."""
    found, where = find_license(folder, hparams)
    flag = flag.strip() if flag else None
    if flag is not None and found is not None and flag.lower() != found.lower():
        raise InvalidArgument(
            f"--license: {flag!r}, but {where} says {found!r}; leave --license out (the source's own word "
            "is recorded) or correct the source",
            field="license",
        )
    license_id, source = (found, where) if found is not None else (flag, "--license" if flag else None)
    copied = []
    if folder is not None:
        files = card_files(folder)
        if files:
            (staged_dir / FOLDER).mkdir()
            for path in files:
                shutil.copy2(path, staged_dir / FOLDER / path.name)
                copied.append(f"{FOLDER}/{path.name}")
    if license_id is None:
        log.warning(
            "no license found (README front matter, config.json, LICENSE file%s); the manifest says "
            "license: null; give --license SPDX-ID when you know it",
            ", hparams" if hparams is not None else "",
        )
    return {"license": license_id, "model_card": {"files": copied, "license_from": source}}


def carry_model_card(manifest: dict, source_dir: Path, target_dir: Path) -> None:
    """A version derived from another (int8, TensorRT) keeps its card: the files; the manifest keys
    are inherited with the rest of the manifest."""
    if (source_dir / FOLDER).is_dir():
        shutil.copytree(source_dir / FOLDER, target_dir / FOLDER)
