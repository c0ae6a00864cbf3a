"""A version's model card: the source's README and license files carried into ``<version>/model_card/``,
the license in the manifest, read in the documented order (converters/model_card.py), ``--license``
only where the source says nothing, and a contradicting ``--license`` refused with nothing published."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from converters.cli import main
from converters.model_card import find_license

MIT_TEXT = """MIT License

Copyright (c) 2026 The authors

Permission is hereby granted, free of charge, to any person obtaining a copy of this software...
"""
APACHE_TEXT = """
                                 Apache License
                           Version 2.0, January 2004
                        http://www.apache.org/licenses/
"""
CARD = """---
language: en
license: mit
tags:
- feature-extraction
---

# tiny-bert

A two-layer BERT with random weights, for tests.
"""


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory, minilm_path) -> Path:
    """A tiny random BERT encoder saved by save_pretrained, MiniLM's tokenizer beside it, and a model
    card (README with YAML front matter) and LICENSE as the Hub has them."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny_hf") / "tiny-bert"
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(minilm_path)).save_pretrained(folder)
    (folder / "README.md").write_text(CARD)
    (folder / "LICENSE").write_text(MIT_TEXT)
    return folder


def cli(*argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_hf_conversion_carries_the_card_and_records_the_license(tiny_hf, tmp_path, capsys):
    repo = tmp_path / "repository"
    code, out, err = cli("hf", tiny_hf, "--name", "tiny", "--repository", repo, capsys=capsys)
    assert code == 0, err
    version = repo / "tiny" / "1"
    for name in ("README.md", "LICENSE"):
        assert (version / "model_card" / name).read_bytes() == (tiny_hf / name).read_bytes()
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["license"] == "mit"
    assert manifest["model_card"] == {
        "files": ["model_card/LICENSE", "model_card/README.md"],
        "license_from": "README.md front matter",
    }
    assert not (version / "model_card" / "config.json").exists()  # only the card's own files


def test_a_license_flag_that_contradicts_the_card_is_refused(tiny_hf, tmp_path, capsys):
    repo = tmp_path / "repository"
    code, out, err = cli(
        "hf", tiny_hf, "--name", "tiny", "--license", "apache-2.0", "--repository", repo, capsys=capsys
    )
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        "error: --license: 'apache-2.0', but README.md front matter says 'mit'; leave --license out (the "
        "source's own word is recorded) or correct the source"
    ]
    assert not (repo / "tiny").exists()


def test_license_order_front_matter_config_license_file(tiny_hf, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_hf, folder)
    assert find_license(folder) == ("mit", "README.md front matter")
    # No front matter: config.json's license, then the LICENSE file's heading.
    (folder / "README.md").write_text("# a card without metadata\n")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "license": "cc-by-4.0"}))
    assert find_license(folder) == ("cc-by-4.0", "config.json")
    (folder / "config.json").write_text(json.dumps(config))
    assert find_license(folder) == ("mit", "LICENSE (its heading)")
    (folder / "LICENSE").write_text(APACHE_TEXT)
    assert find_license(folder) == ("apache-2.0", "LICENSE (its heading)")
    (folder / "LICENSE").write_text("All rights reserved by the authors.\n")
    assert find_license(folder) == ("other", "LICENSE (its heading)")
    (folder / "LICENSE").unlink()
    assert find_license(folder) == (None, None)
    assert find_license(folder, {"license": "bsd-3-clause"}) == ("bsd-3-clause", "the checkpoint's hparams")
    # The Hub's `license: other` with its name.
    (folder / "README.md").write_text("---\nlicense: other\nlicense_name: tiny-license\n---\n")
    assert find_license(folder) == ("other: tiny-license", "README.md front matter")


def test_lightning_license_from_the_flag(lightning_ckpt, tmp_path, capsys):
    repo = tmp_path / "repository"
    module = "converters.examples.image_classifier:ImageClassifier"
    code, out, err = cli(
        "lightning", lightning_ckpt, "--module", module, "--name", "ic", "--license", "apache-2.0",
        "--repository", repo, capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    manifest = json.loads((repo / "ic" / "1" / "manifest.json").read_text())
    assert manifest["license"] == "apache-2.0"
    assert manifest["model_card"] == {"files": [], "license_from": "--license"}
    assert not (repo / "ic" / "1" / "model_card").exists()
