"""Shared test set-up. Like the CLI, the test process owns its threads: let idle OpenMP threads sleep."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run ``headstart.cli.main`` in this process (cheaper than a subprocess): ``(code, stdout, stderr)``."""
    import logging

    from headstart.cli import main

    # main() sets up logging for the process it owns: put this process's logging back afterwards.
    root, lib = logging.getLogger(), logging.getLogger("headstart")
    handlers, root_level, lib_level = root.handlers[:], root.level, lib.level

    def run(*args) -> subprocess.CompletedProcess:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["headstart", *map(str, args)])
        with pytest.raises(SystemExit) as e:
            main()
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, e.value.code or 0, out, err)

    yield run
    root.handlers[:] = handlers
    root.setLevel(root_level)
    lib.setLevel(lib_level)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """``hf:<folder>`` of a tiny random BERT with the real MiniLM tokenizer (vocabulary 30522); shared by the text tests."""
    from transformers import BertConfig, BertModel

    from headstart.backbones.text import minilm_l6_folder

    folder = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(str(folder))
    shutil.copy(minilm_l6_folder() / "tokenizer.json", folder / "tokenizer.json")
    return f"hf:{folder}"
