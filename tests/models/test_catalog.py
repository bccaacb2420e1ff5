"""Offline loading of the default model, local folders and decoders; the spec's rules; clear errors."""

from __future__ import annotations

import dataclasses
import doctest
import os
import shutil

import pytest
import torch

from hierfedlora.models import catalog
from hierfedlora.models.catalog import (
    MODEL_SPEC_RULES,
    ModelSpec,
    default_target_modules,
    find_layers,
    head_names,
    load_base_model,
    model_sha256,
    num_layers,
)
from hierfedlora.planner.errors import InvalidInputError


def test_docstring_examples_run():
    """doctest.testmod finds no failure in models.catalog."""
    # Act
    result = doctest.testmod(catalog, optionflags=doctest.ELLIPSIS)

    # Assert
    assert result.failed == 0


def test_default_model_loads_offline_with_its_tokenizer():
    """The packaged all-MiniLM-L6-v2 loads as a 6-layer BERT with a 26-way head; the offline flag is restored."""
    # Arrange
    before = os.environ.get("HF_HUB_OFFLINE")

    # Act
    model, tokenizer = load_base_model(ModelSpec(num_labels=26), seed=0)

    # Assert
    assert (num_layers(model), model.config.hidden_size) == (6, 384)
    assert find_layers(model)[0] == "bert.encoder.layer"
    assert head_names(model) == ("classifier",)
    assert tuple(model.classifier.weight.shape) == (26, 384)
    assert tokenizer("a dog")["input_ids"][0] == tokenizer.cls_token_id
    assert os.environ.get("HF_HUB_OFFLINE") == before
    assert not any(p.requires_grad for p in model.parameters())


def test_slice_loads_from_a_local_folder(slice_spec):
    """Any local folder loads: the 2-layer slice has 2 layers and the requested number of labels."""
    # Act
    model, _ = load_base_model(slice_spec, seed=0)

    # Assert
    assert num_layers(model) == 2
    assert model.config.num_labels == 4
    assert default_target_modules(model) == ("query", "value")


def test_head_init_is_deterministic_and_leaves_the_global_rng_alone(slice_spec):
    """The same seed gives the same head, another seed another head; the caller's RNG state is unchanged."""
    # Arrange
    rng_before = torch.get_rng_state()

    # Act
    first, _ = load_base_model(slice_spec, seed=3)
    again, _ = load_base_model(slice_spec, seed=3)
    other, _ = load_base_model(slice_spec, seed=4)

    # Assert
    assert torch.equal(first.classifier.weight, again.classifier.weight)
    assert not torch.equal(first.classifier.weight, other.classifier.weight)
    assert torch.equal(first.classifier.bias, torch.zeros(4))
    assert torch.equal(torch.get_rng_state(), rng_before)


@pytest.mark.parametrize(("kind", "targets"), [("gpt2", ("c_attn",)), ("llama", ("q_proj", "v_proj"))])
def test_decoders_load_with_a_pad_token(make_decoder_dir, kind, targets):
    """GPT-2 and LLaMA folders load with a classification head; a missing pad token falls back to EOS."""
    # Arrange
    spec = ModelSpec(path=str(make_decoder_dir(kind)), num_labels=3)

    # Act
    model, tokenizer = load_base_model(spec, seed=0)

    # Assert
    assert tokenizer.pad_token == "<eos>"
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert num_layers(model) == 2
    assert head_names(model) == ("score",)
    assert default_target_modules(model) == targets


def test_missing_path_is_invalid_input_naming_path(tmp_path):
    """A folder that does not exist is refused with the field ``path``, before any hub is asked."""
    # Arrange
    spec = ModelSpec(path=str(tmp_path / "nope"), num_labels=2)

    # Act
    with pytest.raises(InvalidInputError) as caught:
        load_base_model(spec)

    # Assert
    assert [issue.path for issue in caught.value.issues] == ["path"]
    assert "existing local model folder" in str(caught.value)


def test_folder_without_weights_is_not_a_model_folder(tmp_path, minilm_slice_dir):
    """A folder with a config but no weight files is refused with the field ``path``."""
    # Arrange
    shutil.copy(minilm_slice_dir / "config.json", tmp_path / "config.json")

    # Act
    with pytest.raises(InvalidInputError) as caught:
        model_sha256(tmp_path)

    # Assert
    assert caught.value.issues[0].path == "path"
    assert "config.json and *.safetensors" in caught.value.issues[0].expected


def test_unknown_target_module_is_invalid_input_naming_target_modules(minilm_slice_dir):
    """A target module found in no layer is refused with ``target_modules``, listing modules that exist."""
    # Arrange
    spec = ModelSpec(path=str(minilm_slice_dir), num_labels=2, target_modules=("query", "q_proj"))

    # Act
    with pytest.raises(InvalidInputError) as caught:
        load_base_model(spec)

    # Assert
    issue = caught.value.issues[0]
    assert (issue.path, issue.got) == ("target_modules", "q_proj")
    assert "value" in issue.expected


@pytest.mark.parametrize("field", sorted(MODEL_SPEC_RULES))
def test_spec_refuses_each_rules_bad_values(field):
    """Every bad value a field's rule lists is refused, naming that field only."""
    for bad in MODEL_SPEC_RULES[field].bad_values:
        # Arrange
        kwargs = {"num_labels": 2, field: bad}

        # Act
        with pytest.raises(InvalidInputError) as caught:
            ModelSpec(**kwargs)

        # Assert
        assert [issue.path for issue in caught.value.issues] == [field]


def test_spec_reports_every_broken_field_at_once():
    """Three broken fields give three issues in one error."""
    # Act
    with pytest.raises(InvalidInputError) as caught:
        ModelSpec(num_labels=1, lora_rank=0, lora_dropout=1.5)

    # Assert
    assert [issue.path for issue in caught.value.issues] == ["num_labels", "lora_rank", "lora_dropout"]


def test_spec_takes_a_list_of_targets_as_a_tuple():
    """A list of target modules is kept as a tuple, so the frozen spec stays hashable."""
    # Act
    spec = ModelSpec(num_labels=2, target_modules=["query"])

    # Assert
    assert spec.target_modules == ("query",)
    assert hash(dataclasses.replace(spec, lora_rank=4)) != 0


def test_model_hash_follows_the_weights(tmp_path, minilm_slice_dir):
    """A copy of a folder hashes the same; other weights hash differently."""
    # Arrange
    shutil.copytree(minilm_slice_dir, tmp_path / "copy")

    # Act
    original, copy, default = (model_sha256(minilm_slice_dir), model_sha256(tmp_path / "copy"), model_sha256("default"))

    # Assert
    assert original == copy
    assert original != default
    assert len(default) == 64


def test_folder_without_a_tokenizer_is_refused(tmp_path, minilm_slice_dir):
    """Weights and config but no tokenizer files: refused, rather than loading an all-[UNK] tokenizer."""
    # Arrange
    for name in ("config.json", "model.safetensors"):
        shutil.copy(minilm_slice_dir / name, tmp_path / name)

    # Act
    with pytest.raises(InvalidInputError) as caught:
        load_base_model(ModelSpec(path=str(tmp_path), num_labels=2))

    # Assert
    assert caught.value.issues[0].path == "path"
    assert "tokenizer" in caught.value.issues[0].expected


def test_unreadable_weights_are_invalid_input(tmp_path, minilm_slice_dir):
    """A weight file transformers cannot read is an InvalidInputError on ``path``, not a library error."""
    # Arrange
    shutil.copytree(minilm_slice_dir, tmp_path / "broken")
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"not a tensor file")

    # Act
    with pytest.raises(InvalidInputError) as caught:
        load_base_model(ModelSpec(path=str(tmp_path / "broken"), num_labels=2))

    # Assert
    assert caught.value.issues[0].path == "path"
    assert "broken" in str(caught.value.issues[0].got)
